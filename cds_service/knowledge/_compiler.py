"""Compile validated FHIR artifacts into the engine's model, checking what FHIR cannot.

FHIR validation says a PlanDefinition is well formed; this module checks that it can
run: every FHIRPath expression parses and names only known %variables and functions,
every memberOf() names a loaded ValueSet, every definitionCanonical resolves, every
action has a trigger, a code, a title under 140 characters, and (when it warns) override
reasons. Problems are collected, not raised, so an author sees all of them at once.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from cds_service import fhirpath
from cds_service.errors import Problem
from cds_service.knowledge import _arming as arming
from cds_service.knowledge._model import (
    HOOKS,
    INDICATOR,
    INDICATOR_RANK,
    ActivityDefinition,
    Artifact,
    CardAction,
    Citation,
    CodeFilter,
    Condition,
    DataRequirement,
    DateFilter,
    Plan,
    SuggestionAction,
    Suppression,
    Variable,
)
from cds_service.knowledge._paths import path_problem
from cds_service.knowledge._search_params import (
    DEFAULT_DATE_PATHS,
    code_param,
    date_param,
)
from cds_service.knowledge._templates import (
    TemplateError,
    build_template,
    check_template,
    token_params,
)
from cds_service.knowledge._terminology import Terminology

VARIABLE_EXT = "http://hl7.org/fhir/StructureDefinition/variable"
QUERY_PATTERN_EXT = "http://hl7.org/fhir/StructureDefinition/cqf-fhirQueryPattern"
FHIRPATH = "text/fhirpath"
BASE_NAMES = frozenset({"hook", "hookContext", "patient", "draftOrders", "selections", "now", "today", "ucum", "resource"})
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DAYS_PER = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7, "mo": 30, "month": 30,
             "months": 30, "a": 365, "year": 365, "years": 365}
SUMMARY_MAX = 140
SELECTION = ("any", "at-most-one")
BUNDLE_GROUPING = "logical-group"  # a top-level action with this groupingBehavior is a bundled card
CARD_DYNAMIC = ("title", "description", "priority")
MEMBER_DYNAMIC = ("title", "description", "priority", "prefix")  # prefix: the member's heading ("Review")
BUNDLE_DYNAMIC = ("title", "description")
BUNDLE_NAMES = frozenset({"bundleMembers"})  # the fired member codes, for a bundle's dynamic values
SUPPORTED_KINDS = ("ServiceRequest", "MedicationRequest", "CommunicationRequest", "Task",
                   "ImmunizationRecommendation", "NutritionOrder", "DeviceRequest")


class Compiler:
    def __init__(self, artifacts: dict[str, Artifact], terminology: Terminology, base: str,
                 date_tokens: bool = False):
        self.date_tokens = date_tokens  # CRD-style {{today() - N days}} in templates (prefetch_date_tokens)
        self.artifacts = artifacts
        self.terminology = terminology
        self.base = base.rstrip("/")
        self.problems: list[Problem] = []
        self._activities: dict[str, ActivityDefinition | None] = {}
        self._artifact: Artifact | None = None
        self._pending_arming: dict[str, tuple[str, fhirpath.Expression | None, list[str]] | None] = {}  # by action element

    # -- helpers ------------------------------------------------------------------------
    def _problem(self, element: str, message: str, artifact: Artifact | None = None) -> None:
        artifact = artifact or self._artifact
        assert artifact is not None
        self.problems.append(Problem(artifact.file, artifact.label, element, message))

    def _lookup(self, url: str, kind: str) -> Artifact | None:
        artifact = self.artifacts.get(url.split("|")[0])
        if artifact is None or artifact.resource["resourceType"] != kind:
            return None
        return artifact

    def expression(self, raw: Any, element: str, names: frozenset[str] | None) -> fhirpath.Expression | None:
        """Parse and check one FHIR Expression (or a bare string)."""
        if isinstance(raw, dict):
            if raw.get("language", FHIRPATH) != FHIRPATH:
                self._problem(f"{element}.language", f"language '{raw.get('language')}' is not supported; use {FHIRPATH}")
                return None
            source = raw.get("expression")
            element = f"{element}.expression"
        else:
            source = raw
        try:
            expr = fhirpath.parse(source)  # type: ignore[arg-type]  # parse() refuses a non-string itself
        except fhirpath.FhirPathSyntaxError as exc:
            self._problem(element, f"FHIRPath does not parse: '{source}': {exc}")
            return None
        ok = True
        for name in sorted(expr.variables - names) if names is not None else ():
            self._problem(element, f"unknown variable %{name} in '{source}'")
            ok = False
        for name in sorted(expr.functions - fhirpath.KNOWN_FUNCTIONS):
            self._problem(element, f"unknown function {name}() in '{source}'")
            ok = False
        for function, url in expr.value_set_calls:
            if url not in self.terminology:
                self._problem(element, f"{function}('{url}'): no ValueSet with that url is loaded")
                ok = False
        for unit in expr.units:
            try:
                fhirpath.check_unit(unit)
            except fhirpath.UnitError as exc:
                self._problem(element, f"toUnit: {exc}")
                ok = False
        return expr if ok else None

    def variables(self, owner: dict, element: str, names: set[str]) -> list[Variable]:
        """Named expressions in order; each may use the ones before it."""
        result = []
        for i, ext in enumerate(owner.get("extension", []) or []):
            if ext.get("url") != VARIABLE_EXT:
                continue
            where = f"{element}.extension[{i}].valueExpression"
            value = ext.get("valueExpression") or {}
            name = value.get("name")
            if not name or not _IDENTIFIER.match(name):
                self._problem(f"{where}.name", f"variable name '{name}' must be an identifier")
                continue
            if name in names:
                self._problem(f"{where}.name", f"variable %{name} is defined twice")
                continue
            expr = self.expression(value, where, frozenset(names))
            names.add(name)
            if expr is not None:
                result.append(Variable(name, expr, where))
        return result

    # -- PlanDefinition -------------------------------------------------------------------
    def plan(self, artifact: Artifact) -> Plan | None:
        self._artifact = artifact
        pd = artifact.resource
        before = len(self.problems)
        library_url, requirements = self._library(pd)
        names = set(BASE_NAMES) | {r.key for r in requirements}
        variables = self.variables(pd, "PlanDefinition", names)
        actions = pd.get("action") or []
        if not actions:
            self._problem("PlanDefinition.action", "has no actions, so no service and no card")
        cards = [
            card for i, action in enumerate(actions)
            if (card := self._card(action, f"PlanDefinition.action[{i}]", frozenset(names))) is not None
        ]
        self._check_duplicate_codes(cards)
        self._artifact = artifact
        cards = [self._settle_arming(card, tuple(variables)) for card in cards]
        if len(self.problems) > before:
            return None
        return Plan(
            url=pd["url"], version=pd.get("version"), id=pd["id"],
            title=pd.get("title") or pd.get("name") or pd["id"],
            description=pd.get("description") or pd.get("title") or pd["id"],
            file=artifact.file, variables=tuple(variables), requirements=tuple(requirements),
            actions=tuple(cards), library_url=library_url, usage=pd.get("usage"),
        )

    def _check_duplicate_codes(self, cards: list[CardAction]) -> None:
        seen: dict[tuple[str, str], str] = {}
        for card in cards:
            for hook in card.hooks:
                key = (hook, card.code.get("code", ""))
                if key in seen:
                    self._problem(card.element, f"code {key[1]} is already used by {seen[key]} for hook {hook}: one card per code")
                seen[key] = card.element
        # A member's code names one action of the plan, whatever the hook: its feedback,
        # its scenarios and "one card per code per call" all rely on it.
        owners: dict[str, list[str]] = {}
        for card in cards:
            for entry in (card, *card.members):
                owners.setdefault(entry.code.get("code", ""), []).append(entry.element)
        for card in cards:
            for member in card.members:
                code = member.code.get("code", "")
                others = [e for e in owners[code] if e != member.element]
                if others:
                    self._problem(f"{member.element}.code", f"member code {code} is also used by {others[0]}: "
                                  "a member code appears in one action of the plan (one card per code per call)")

    def _card(self, action: dict, element: str, names: frozenset[str],
              bundle: tuple[frozenset[str], bool] | None = None) -> CardAction | None:
        """A card action, or a bundle's member when `bundle` is (its hooks, whether it has override reasons)."""
        if action.get("groupingBehavior") == BUNDLE_GROUPING:
            if bundle is not None:
                self._problem(f"{element}.groupingBehavior", "a member cannot itself be a bundle (members are cards)")
                return None
            return self._bundle(action, element, names)
        before = len(self.problems)
        hooks = self._hooks(action, element) if bundle is None else self._member_hooks(action, element, bundle[0])
        code = self._code(action, element)
        title = self._title(action, element, summary=bundle is None)
        priority = action.get("priority", "routine")
        if priority not in INDICATOR:
            self._problem(f"{element}.priority", f"'{priority}' is not one of {', '.join(INDICATOR)}")
        local = set(names)
        variables = self.variables(action, element, local)
        conditions = self._conditions(action, element, frozenset(local))
        dynamic = self._dynamic(action, element, frozenset(local), CARD_DYNAMIC if bundle is None else MEMBER_DYNAMIC)
        suggestions = [
            s for i, child in enumerate(action.get("action") or [])
            if (s := self._suggestion(child, f"{element}.action[{i}]", frozenset(local))) is not None
        ]
        selection = action.get("selectionBehavior")
        if bundle is None and action.get("action") and selection not in SELECTION:
            self._problem(f"{element}.selectionBehavior",
                          f"must be one of {', '.join(SELECTION)} when the action has suggestions (was {selection or 'not given'})")
        reasons = self._override_reasons(action, element)
        if INDICATOR.get(priority) in ("warning", "critical") and not reasons and not (bundle and bundle[1]):
            self._problem(f"{element}.extension", f"an action with priority {priority} needs override reasons "
                          f"(extension {self.base}/StructureDefinition/override-reasons"
                          + (", on the member or on its bundle)" if bundle else ")"))
        citations = self._citations(action, element)
        armed_by = self._armed_by(action, element)
        self._pending_arming[element] = self._not_armed_for(action, element)
        suppression = self._suppression(action, element, frozenset(local) | (BUNDLE_NAMES if bundle else frozenset()))
        if len(self.problems) > before:
            return None
        return CardAction(
            suppression=suppression,
            code=code, title=str(title), description=action.get("description"),
            indicator=INDICATOR[priority], hooks=frozenset(hooks), variables=tuple(variables),
            conditions=tuple(conditions), dynamic=tuple(dynamic), suggestions=tuple(suggestions),
            selection_behavior=selection if suggestions else None, override_reasons=tuple(reasons),
            citations=tuple(citations), element=element,
            prefix=(action.get("prefix") or None) if bundle is not None else None,
            unarmed=arming.empty_value_sets(armed_by, self.terminology),
        )

    def _bundle(self, action: dict, element: str, names: frozenset[str]) -> CardAction | None:
        """A bundled card: its own code, triggers, conditions, variables and text; its
        nested actions are members (each a card action with its own code)."""
        before = len(self.problems)
        hooks = self._hooks(action, element)
        code = self._code(action, element)
        title = self._title(action, element)
        if "priority" in action:
            self._problem(f"{element}.priority", "a bundle takes the highest indicator of its fired members: "
                          "give priority on the members")
        local = set(names)
        variables = self.variables(action, element, local)
        conditions = self._conditions(action, element, frozenset(local))
        # Evaluated after the members, so the summary can count them (%bundleMembers).
        dynamic = self._dynamic(action, element, frozenset(local) | BUNDLE_NAMES, BUNDLE_DYNAMIC)
        reasons = self._override_reasons(action, element)
        children = action.get("action") or []
        if not children:
            self._problem(f"{element}.action", "a bundle needs at least one member (a nested action with its own code)")
        members = []
        for i, child in enumerate(children):
            where = f"{element}.action[{i}]"
            if child.get("definitionCanonical"):
                self._problem(f"{where}.definitionCanonical", "a bundle cannot itself have suggestions: "
                              "they come from its members (move this action into a member)")
                continue
            member = self._card(child, where, frozenset(local), (frozenset(hooks), bool(reasons)))
            if member is not None:
                members.append(member)
        selection = action.get("selectionBehavior")
        suggesting = any(m.suggestions for m in members)
        if suggesting and selection not in SELECTION:
            self._problem(f"{element}.selectionBehavior", f"must be one of {', '.join(SELECTION)} when its members "
                          f"have suggestions (was {selection or 'not given'})")
        citations = self._citations(action, element)
        self._pending_arming[element] = self._not_armed_for(action, element)
        suppression = self._suppression(action, element, frozenset(local) | BUNDLE_NAMES)
        if suppression is not None:  # the bundle's windows apply to each member lacking its own
            members = [m if m.suppression else replace(m, suppression=suppression) for m in members]
        if len(self.problems) > before:
            return None
        return CardAction(
            suppression=suppression,
            code=code, title=str(title), description=action.get("description"),
            indicator=max((m.indicator for m in members), key=INDICATOR_RANK.__getitem__),
            hooks=frozenset(hooks), variables=tuple(variables), conditions=tuple(conditions),
            dynamic=tuple(dynamic), suggestions=(), selection_behavior=selection if suggesting else None,
            override_reasons=tuple(reasons), citations=tuple(citations), element=element, members=tuple(members),
        )

    def _title(self, action: dict, element: str, summary: bool = True) -> str | None:
        """The card summary's text, or (summary False) the line heading a member in its bundle's detail."""
        title = action.get("title")
        if not title:
            self._problem(f"{element}.title", "is required: it becomes the card summary" if summary
                          else "is required: it heads the member's line in its bundle's detail")
        elif summary and len(title) >= SUMMARY_MAX:
            self._problem(f"{element}.title", f"is {len(title)} characters; a card summary must be under {SUMMARY_MAX}")
        return title

    def _member_hooks(self, action: dict, element: str, bundle_hooks: frozenset[str]) -> list[str]:
        """A member runs on its bundle's hooks, or on those of them its own triggers name."""
        if not action.get("trigger"):
            return sorted(bundle_hooks)
        hooks = self._hooks(action, element)
        outside = sorted(set(hooks) - bundle_hooks)
        if outside:
            self._problem(f"{element}.trigger", f"hook(s) {', '.join(outside)} are not among its bundle's triggers")
        return [h for h in hooks if h in bundle_hooks]

    def _hooks(self, action: dict, element: str) -> list[str]:
        triggers = action.get("trigger") or []
        if not triggers:
            self._problem(f"{element}.trigger", "has no trigger: name the hook(s) it runs on "
                          f"(trigger type named-event, name one of {', '.join(HOOKS)})")
        hooks = []
        for i, trigger in enumerate(triggers):
            if trigger.get("type") != "named-event" or trigger.get("name") not in HOOKS:
                self._problem(f"{element}.trigger[{i}]", f"must be type named-event with name one of {', '.join(HOOKS)}")
            else:
                hooks.append(trigger["name"])
        return hooks

    def _code(self, action: dict, element: str) -> dict:
        for concept in action.get("code") or []:
            for coding in concept.get("coding") or []:
                if coding.get("system") and coding.get("code"):
                    display = coding.get("display") or self.terminology.code_display(coding["system"], coding["code"])
                    return {k: v for k, v in (("system", coding["system"]), ("code", coding["code"]),
                                              ("display", display)) if v}
        self._problem(f"{element}.code", "is required: a Coding with system and code (the recommendation code)")
        return {}

    def _conditions(self, action: dict, element: str, names: frozenset[str]) -> list[Condition]:
        result = []
        for i, condition in enumerate(action.get("condition") or []):
            where = f"{element}.condition[{i}]"
            if condition.get("kind") != "applicability":
                self._problem(f"{where}.kind", f"'{condition.get('kind')}' is not supported; use applicability")
                continue
            expr = self.expression(condition.get("expression") or {}, f"{where}.expression", names)
            if expr is not None:
                result.append(Condition(expr, (condition.get("expression") or {}).get("description"), where))
        return result

    def _dynamic(self, owner: dict, element: str, names: frozenset[str] | None, paths: tuple[str, ...] = CARD_DYNAMIC):
        result = []
        for i, dv in enumerate(owner.get("dynamicValue") or []):
            where = f"{element}.dynamicValue[{i}]"
            path = dv.get("path")
            if paths and path not in paths:
                self._problem(f"{where}.path", f"'{path}' is not supported here; use one of {', '.join(paths)}")
                continue
            if not path:
                self._problem(f"{where}.path", "is required")
                continue
            expr = self.expression(dv.get("expression") or {}, f"{where}.expression", names)
            if expr is not None:
                result.append((path, expr))
        return result

    def _suggestion(self, action: dict, element: str, names: frozenset[str]) -> SuggestionAction | None:
        canonical = action.get("definitionCanonical")
        if not canonical:
            self._problem(f"{element}.definitionCanonical", "a nested action is a suggestion and needs an ActivityDefinition")
            return None
        definition = self._activity(canonical, f"{element}.definitionCanonical")
        if not action.get("title"):
            self._problem(f"{element}.title", "is required: it becomes the suggestion label")
        conditions = self._conditions(action, element, names)
        if definition is None or not action.get("title"):
            return None
        for path, expr in definition.dynamic:
            for name in sorted(expr.variables - names):
                self._problem(f"{element}.definitionCanonical",
                              f"{definition.url} dynamicValue '{path}' uses %{name}, unknown in this PlanDefinition")
                return None
        return SuggestionAction(
            title=action["title"], description=action.get("description"), conditions=tuple(conditions),
            definition=definition, recommended=action.get("priority") in ("urgent", "asap", "stat"),
            element=element,
        )

    def activity(self, url: str) -> ActivityDefinition | None:
        """Compile (once) the ActivityDefinition at `url`, reporting its problems."""
        return self._activity(url, "ActivityDefinition")

    def _activity(self, canonical: str, element: str) -> ActivityDefinition | None:
        if canonical not in self._activities:
            artifact = self._lookup(canonical, "ActivityDefinition")
            if artifact is None:
                self._problem(element, f"ActivityDefinition '{canonical}' does not exist")
                return None
            self._activities[canonical] = self._compile_activity(artifact)
        return self._activities[canonical]

    def _compile_activity(self, artifact: Artifact) -> ActivityDefinition | None:
        outer, self._artifact = self._artifact, artifact
        ad = artifact.resource
        before = len(self.problems)
        if ad.get("kind") not in SUPPORTED_KINDS:
            self._problem("ActivityDefinition.kind", f"'{ad.get('kind')}' is not supported; use one of {', '.join(SUPPORTED_KINDS)}")
        # %names are checked against each PlanDefinition that uses this definition.
        dynamic = self._dynamic(ad, "ActivityDefinition", None, paths=())
        if ad.get("kind") in SUPPORTED_KINDS:
            for i, dv in enumerate(ad.get("dynamicValue") or []):
                problem = dv.get("path") and path_problem(ad["kind"], dv["path"])
                if problem:
                    self._problem(f"ActivityDefinition.dynamicValue[{i}].path", problem)
        self._artifact = outer
        if len(self.problems) > before:
            return None
        return ActivityDefinition(ad["url"], ad.get("version"), ad["kind"], ad, tuple(dynamic), artifact.file)

    def _armed_by(self, action: dict, element: str) -> list[str]:
        """The ValueSets the rule's trigger needs (extension armed-by), each one loaded."""
        url, urls = f"{self.base}/StructureDefinition/{arming.ARMED_BY}", []
        for i, ext in enumerate(action.get("extension") or []):
            if ext.get("url") == url:
                canonical = ext.get("valueCanonical") or ""
                if self.terminology.get(canonical) is None:
                    self._problem(f"{element}.extension[{i}].valueCanonical", f"armed-by ValueSet '{canonical}' is not loaded")
                urls.append(canonical)
        return urls

    def _not_armed_for(self, action: dict, element: str) -> tuple[str, fhirpath.Expression | None, list[str]] | None:
        """Extension not-armed-for: per ValueSet (valueCanonical: not armed for it while it has
        no code) and/or one FHIRPath over constant variables (valueExpression)."""
        url = f"{self.base}/StructureDefinition/{arming.NOT_ARMED_FOR}"
        where, expr, value_sets = element, None, []
        for i, ext in enumerate(action.get("extension") or []):
            if ext.get("url") != url:
                continue
            if "valueCanonical" in ext:
                if self.terminology.get(ext["valueCanonical"]) is None:
                    self._problem(f"{element}.extension[{i}].valueCanonical",
                                  f"not-armed-for ValueSet '{ext['valueCanonical']}' is not loaded")
                value_sets.append(ext["valueCanonical"])
            else:
                where = f"{element}.extension[{i}].valueExpression.expression"
                expr = self.expression(ext.get("valueExpression"), where, None)
        return (where, expr, value_sets) if expr is not None or value_sets else None

    def _settle_arming(self, card: CardAction, variables: tuple[Variable, ...]) -> CardAction:
        """Settle not-armed-for once, at load: empty value sets, constant expressions."""
        def settle(action: CardAction) -> CardAction:
            pending = self._pending_arming.pop(action.element, None)
            if pending is None:
                return action
            where, expr, value_sets = pending
            names = [u.rsplit("/", 1)[-1] for u in value_sets if arming.empty_value_sets([u], self.terminology)]
            if expr is not None:
                names += arming.constant_names(expr, variables, self.terminology, lambda m: self._problem(where, m))
            return replace(action, not_armed_for=tuple(names))
        members = tuple(settle(m) for m in card.members)
        return replace(settle(card), members=members) if card.members else settle(card)

    def _suppression(self, action: dict, element: str, names: frozenset[str]) -> Suppression | None:
        """The repeat-suppression extension (docs/feedback.md#repeat-suppression), checked here."""
        url = f"{self.base}/StructureDefinition/repeat-suppression"
        found = [(i, e) for i, e in enumerate(action.get("extension") or []) if e.get("url") == url]
        if not found:
            return None
        i, ext = found[0]
        where = f"{element}.extension[{i}]"
        if len(found) > 1:
            self._problem(f"{element}.extension[{found[1][0]}]", "repeat-suppression is given twice")
        before = len(self.problems)
        days: dict[str, float] = {}
        reasons: list[tuple[str | None, str, float]] = []
        expressions: dict[str, fhirpath.Expression | None] = {}
        for j, part in enumerate(ext.get("extension") or []):
            at = f"{where}.extension[{j}]"
            name = part.get("url")
            if name in ("afterOverrideDays", "afterAcceptDays"):
                value = part.get("valueInteger")
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    self._problem(f"{at}.valueInteger", f"{name} must be a whole number of days, 0 or more")
                else:
                    days[name] = value
            elif name == "afterOverrideReason":
                inner = {p.get("url"): p for p in part.get("extension") or []}
                coding = (inner.get("reason") or {}).get("valueCoding") or {}
                value = (inner.get("days") or {}).get("valueInteger")
                if not coding.get("code"):
                    self._problem(f"{at}.extension", "afterOverrideReason needs a reason (valueCoding with a code)")
                elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    self._problem(f"{at}.extension", "afterOverrideReason needs days (valueInteger, 0 or more)")
                else:
                    reasons.append((coding.get("system"), coding["code"], value))
            elif name in ("fingerprint", "notBeyond"):
                raw = part.get("valueExpression")
                if not isinstance(raw, dict) or not raw.get("expression"):
                    self._problem(f"{at}.valueExpression", f"{name} must be a FHIRPath valueExpression")
                else:
                    expressions[name] = self.expression(raw, f"{at}.valueExpression", names)
            else:
                self._problem(f"{at}.url", f"unknown repeat-suppression part '{name}' (afterOverrideDays, "
                              "afterOverrideReason, afterAcceptDays, fingerprint, notBeyond)")
        for required in ("afterOverrideDays", "afterAcceptDays"):
            if required not in days and len(self.problems) == before:
                self._problem(f"{where}.extension", f"repeat-suppression needs {required}")
        # At order hooks the extension does nothing (R-6: chart feedback never suppresses an
        # order card), so an entry shared by both services carries it identically.
        if len(self.problems) > before:
            return None
        return Suppression(after_override_days=days["afterOverrideDays"], after_accept_days=days["afterAcceptDays"],
                           reason_days=tuple(reasons), fingerprint=expressions.get("fingerprint"),
                           not_beyond=expressions.get("notBeyond"), element=where)

    def _override_reasons(self, action: dict, element: str) -> list[dict]:
        url = f"{self.base}/StructureDefinition/override-reasons"
        for i, ext in enumerate(action.get("extension") or []):
            if ext.get("url") != url:
                continue
            canonical = ext.get("valueCanonical")
            vs = self.terminology.get(canonical or "")
            if vs is None:
                self._problem(f"{element}.extension[{i}].valueCanonical", f"override reasons ValueSet '{canonical}' is not loaded")
                return []
            reasons = []
            for concept in vs.concepts:
                display = concept.display or self.terminology.code_display(concept.system, concept.code)
                if not display:
                    self._problem(f"{element}.extension[{i}]", f"override reason {concept.code} has no display")
                reasons.append({"system": concept.system, "code": concept.code, "display": display})
            return reasons
        return []

    def _citations(self, action: dict, element: str) -> list[Citation]:
        result = []
        for i, doc in enumerate(action.get("documentation") or []):
            label = doc.get("label") or doc.get("display")
            if not label:
                self._problem(f"{element}.documentation[{i}].display", "is required: it labels the citation on the card")
                continue
            result.append(Citation(label=label, url=doc.get("url")))
        return result

    # -- Library and data requirements ------------------------------------------------------
    def _library(self, pd: dict) -> tuple[str | None, list[DataRequirement]]:
        libraries = pd.get("library") or []
        if not libraries:
            return None, []
        if len(libraries) > 1:
            self._problem("PlanDefinition.library", "name one Library (its dataRequirements are the retrieves)")
        library = self._lookup(libraries[0], "Library")
        if library is None:
            self._problem("PlanDefinition.library[0]", f"Library '{libraries[0]}' does not exist")
            return None, []
        outer, self._artifact = self._artifact, library
        requirements: list[DataRequirement] = []
        keys: set[str] = set()
        for i, dr in enumerate(library.resource.get("dataRequirement") or []):
            requirement = self._requirement(dr, f"Library.dataRequirement[{i}]")
            if requirement is None:
                continue
            reserved = requirement.key in BASE_NAMES and not (requirement.key == "patient" and requirement.type == "Patient")
            if requirement.key in keys or reserved:
                self._problem(f"Library.dataRequirement[{i}].id", f"key '{requirement.key}' is used twice or is reserved")
                continue
            keys.add(requirement.key)
            requirements.append(requirement)
        self._artifact = outer
        return library.resource["url"], _share_queries(requirements)

    def _requirement(self, dr: dict, element: str) -> DataRequirement | None:
        key, kind = dr.get("id"), dr.get("type")
        if not key or not _IDENTIFIER.match(key):
            self._problem(f"{element}.id", f"'{key}' must be an identifier: it is the prefetch key and the %name")
            return None
        before = len(self.problems)
        try:
            get_fhir_model_class(str(kind))
        except Exception:
            self._problem(f"{element}.type", f"'{kind}' is not a FHIR resource type")
            return None
        kind = str(kind)
        code_filters = [c for i, cf in enumerate(dr.get("codeFilter") or [])
                        if (c := self._code_filter(kind, cf, f"{element}.codeFilter[{i}]")) is not None]
        date_filters = [d for i, df in enumerate(dr.get("dateFilter") or [])
                        if (d := self._date_filter(kind, df, f"{element}.dateFilter[{i}]")) is not None]
        sort_paths = tuple(s["path"] for s in dr.get("sort") or [] if s.get("path"))
        if not sort_paths:
            sort_paths = date_filters[0].paths if date_filters else DEFAULT_DATE_PATHS.get(kind, ())
        template = self._template(dr, kind, code_filters, date_filters, element)
        pattern = any(ext.get("url") == QUERY_PATTERN_EXT for ext in dr.get("extension") or [])
        empty = [cf.value_set.url for cf in code_filters if cf.is_empty and cf.value_set is not None]
        if len(self.problems) > before:
            return None
        return DataRequirement(
            key=key, type=kind, code_filters=tuple(code_filters), date_filters=tuple(date_filters),
            sort_paths=sort_paths, limit=dr.get("limit"), template=None if empty else template,
            skip_reason=f"value set {empty[0]} has no codes yet (add the site's codes)" if empty else None,
            element=element,
            merge_params=None if pattern or kind == "Patient" else token_params(kind, tuple(code_filters)),
        )

    def _template(self, dr, kind, code_filters, date_filters, element) -> str | None:
        for ext in dr.get("extension") or []:
            if ext.get("url") == QUERY_PATTERN_EXT:
                try:
                    check_template(ext.get("valueString", ""), self.date_tokens)
                except TemplateError as exc:
                    self._problem(f"{element}.extension", str(exc))
                return ext.get("valueString")
        return build_template(kind, tuple(code_filters), tuple(date_filters), self.date_tokens)

    def _code_filter(self, kind: str, cf: dict, element: str) -> CodeFilter | None:
        path = cf.get("path")
        if not path:
            self._problem(f"{element}.path", "is required")
            return None
        param = cf.get("searchParam") or code_param(kind, path)
        if not param:
            self._problem(f"{element}.searchParam", f"no default search parameter for {kind}.{path}; name one")
            return None
        value_set = None
        if cf.get("valueSet"):
            value_set = self.terminology.get(cf["valueSet"])
            if value_set is None:
                self._problem(f"{element}.valueSet", f"ValueSet '{cf['valueSet']}' is not loaded")
                return None
        codes = frozenset((c.get("system"), c["code"]) for c in cf.get("code") or [] if c.get("code"))
        if value_set is None and not codes:
            self._problem(element, "needs a valueSet or codes")
            return None
        return CodeFilter(path=path, search_param=param, value_set=value_set, codes=codes)

    def _date_filter(self, kind: str, df: dict, element: str) -> DateFilter | None:
        paths = tuple(p.strip() for p in (df.get("path") or "").split("|") if p.strip())
        if not paths:
            self._problem(f"{element}.path", "is required")
            return None
        params = {df.get("searchParam") or date_param(kind, p) for p in paths}
        param = params.pop() if len(params) == 1 else None
        if len(paths) == 1 and not param:
            self._problem(f"{element}.searchParam", f"no default search parameter for {kind}.{paths[0]}; name one")
            return None
        if "valueDuration" in df:
            duration = df["valueDuration"]
            unit = duration.get("code") or duration.get("unit")
            if unit not in _DAYS_PER or duration.get("value") is None:
                self._problem(f"{element}.valueDuration", f"unit '{unit}' is not supported; use d, wk, mo (30 d) or a (365 d)")
                return None
            return DateFilter(paths, param, days=int(duration["value"] * _DAYS_PER[unit]))
        if "valuePeriod" in df:
            period = df["valuePeriod"]
            return DateFilter(paths, param, start=period.get("start"), end=period.get("end"))
        if "valueDateTime" in df:
            return DateFilter(paths, param, start=df["valueDateTime"])
        self._problem(element, "needs valueDuration (a look-back window), valuePeriod or valueDateTime")
        return None


def _share_queries(requirements: list[DataRequirement]) -> list[DataRequirement]:
    """A requirement that only narrows another's query (by date or limit) reuses its data.

    One prefetch key and one fetch then serve both: "prior exposure" and "exposure in
    the last 6 months" cost the EHR a single query, as do IgG in 30 and in 60 days.
    Where two requirements hold the same data, the one written first keeps the key.
    """

    order = {r.key: i for i, r in enumerate(requirements)}
    candidates = [r for r in requirements if r.template and not r.limit and _window(r) is not False]
    candidates.sort(key=lambda r: (_window(r) is not None, -(_window(r) or 0), order[r.key]))  # widest first
    source_of: dict[str, str] = {}
    for r in requirements:
        if r.template:
            source = next((c for c in candidates if c.key != r.key and _covers(c, r, order)
                           and (order[c.key] < order[r.key] or not _covers(r, c, order))), None)
            if source is not None:
                source_of[r.key] = source.key
    by_template: dict[str, str] = {}
    for r in requirements:  # identical queries (e.g. unfiltered by NDC code) share one key
        if r.template and r.key not in source_of:
            first = by_template.setdefault(r.template, r.key)
            if first != r.key:
                source_of[r.key] = first
    for key in list(source_of):  # follow chains to the widest query, so one fetch feeds all
        root = source_of[key]
        while root in source_of:
            root = source_of[root]
        source_of[key] = root
    return [replace(r, derived_from=source_of[r.key], template=None) if r.key in source_of else r
            for r in requirements]


def _window(r: DataRequirement) -> int | None | bool:
    """None: no date filter; N: a single N-day look-back; False: anything else."""
    if not r.date_filters:
        return None
    only = r.date_filters[0]
    if len(r.date_filters) == 1 and only.days is not None and not only.start and not only.end:
        return only.days
    return False


def _covers(source: DataRequirement, r: DataRequirement, order: dict[str, int]) -> bool:
    """Whether the source's data holds all of r's: same type, every source filter matched
    by one of r's at least as narrow (r may add filters), a window at least as wide."""
    if source.type != r.type or not all(any(_narrower(mine, theirs) for mine in r.code_filters)
                                        for theirs in source.code_filters):
        return False
    first = order[source.key] < order[r.key]
    wide, narrow = _window(source), _window(r)
    if wide is None:
        return narrow is not None or source.query_signature != r.query_signature or first
    if narrow is None or narrow is False or source.date_filters[0].paths != r.date_filters[0].paths:
        return False
    return wide > narrow or (wide == narrow and first)


def _narrower(mine: CodeFilter, theirs: CodeFilter) -> bool:
    if mine.path != theirs.path:
        return False
    if theirs.value_set is not None:
        if mine.value_set is None:
            return all(system and theirs.value_set.contains(system, code) for system, code in mine.codes)
        return all(theirs.value_set.contains(c.system, c.code) for c in mine.value_set.concepts)
    return mine.value_set is None and bool(mine.codes) and mine.codes <= theirs.codes
