"""The compiled, immutable form of the knowledge artifacts (built once at load)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cds_service.fhirpath import Expression
from cds_service.knowledge._terminology import ExpandedValueSet

HOOKS = ("order-select", "order-sign", "patient-view")
INDICATOR = {"routine": "info", "urgent": "warning", "asap": "warning", "stat": "critical"}
INDICATOR_RANK = {"info": 0, "warning": 1, "critical": 2}  # a bundle shows its highest fired member's
# The response extension key that lists the recommendation codes a card reports (a bundle: its
# fired members; any other card: its one code), per RECOMMENDATIONS-v2 B-0.
RECOMMENDATIONS_KEY = "myeloma-cds.recommendations"


@dataclass(frozen=True)
class Artifact:
    """One knowledge file as read: its FHIR resource and where it came from."""

    resource: dict
    file: str

    @property
    def label(self) -> str:
        return f"{self.resource.get('resourceType')}/{self.resource.get('id', '?')}"


@dataclass(frozen=True)
class CodeFilter:
    path: str
    search_param: str
    value_set: ExpandedValueSet | None = None
    codes: frozenset[tuple[str | None, str]] = frozenset()  # explicit codes; system None = any

    @property
    def is_empty(self) -> bool:
        return self.value_set is not None and len(self.value_set) == 0 and not self.codes


@dataclass(frozen=True)
class DateFilter:
    paths: tuple[str, ...]  # alternatives, first present wins ("onset | recordedDate")
    search_param: str | None  # None when the alternatives span several search parameters
    days: int | None = None  # look-back window: within `days` days of today, day N included
    start: str | None = None  # absolute period (valuePeriod / valueDateTime)
    end: str | None = None


@dataclass(frozen=True)
class DataRequirement:
    key: str  # dataRequirement.id: the prefetch key and the %name in FHIRPath
    type: str
    code_filters: tuple[CodeFilter, ...]
    date_filters: tuple[DateFilter, ...]
    sort_paths: tuple[str, ...]  # date elements, newest first
    limit: int | None
    template: str | None  # prefetch template; None when nothing can match (empty value set)
    skip_reason: str | None = None
    element: str = ""
    derived_from: str | None = None  # same query as that key, narrowed here by dates/limit
    # The template's token-list parameters (code, status...) when build_template made it:
    # its search may then be merged with others of the same shape. None: searched alone
    # (a cqf-fhirQueryPattern template, whose parameters the retrieve may not re-apply).
    merge_params: frozenset[str] | None = None

    @cached_property
    def selective_filter(self) -> CodeFilter | None:
        """The code filter a retrieve answers through its code index (a value set: the drug,
        the test), the others (status, typically) being tested on the records it leaves."""
        if not self.code_filters:
            return None
        return next((cf for cf in self.code_filters if cf.value_set is not None), self.code_filters[0])

    @cached_property
    def other_filters(self) -> tuple[CodeFilter, ...]:
        return tuple(cf for cf in self.code_filters if cf is not self.selective_filter)

    @cached_property
    def windows_on_sort(self) -> bool:
        """Sorted by date, and every date filter is on the sort's own elements."""
        return bool(self.sort_paths) and all(df.paths == self.sort_paths for df in self.date_filters)

    @property
    def query_signature(self) -> tuple:
        filters = sorted(
            (cf.path, cf.value_set.url if cf.value_set is not None else "", tuple(sorted(cf.codes, key=str)))
            for cf in self.code_filters
        )
        return (self.type, tuple(filters))


@dataclass(frozen=True)
class Variable:
    name: str
    expression: Expression
    element: str


@dataclass(frozen=True)
class Condition:
    expression: Expression
    description: str | None
    element: str


@dataclass(frozen=True)
class Citation:
    label: str
    url: str | None  # a DOI link where the source has one


@dataclass(frozen=True)
class ActivityDefinition:
    url: str
    version: str | None
    kind: str
    resource: dict  # the artifact itself; applied per request by activity.apply
    dynamic: tuple[tuple[str, Expression], ...]
    file: str


@dataclass(frozen=True)
class SuggestionAction:
    """A nested action: one suggestion, whose resource comes from an ActivityDefinition."""

    title: str
    description: str | None
    conditions: tuple[Condition, ...]
    definition: ActivityDefinition
    recommended: bool
    element: str


@dataclass(frozen=True)
class Suppression:
    """Repeat suppression of a chart card (extension repeat-suppression, RECOMMENDATIONS-v2
    2.4): windows after an override (per reason where given) and after an accept, the
    data fingerprint that resets them, and the moment no override may reach beyond."""

    after_override_days: float
    after_accept_days: float
    reason_days: tuple[tuple[str | None, str, float], ...] = ()  # (system, code, days)
    fingerprint: Expression | None = None
    not_beyond: Expression | None = None
    element: str = ""

    def override_days(self, system: str | None, code: str | None) -> float:
        for s, c, days in self.reason_days:
            if c == code and (s is None or system is None or s == system):
                return days
        return self.after_override_days

    @property
    def longest_days(self) -> float:
        return max([self.after_override_days, self.after_accept_days, *(d for _, _, d in self.reason_days)])


@dataclass(frozen=True)
class CardAction:
    """A top-level action: one card, identified by its recommendation code.

    A bundle (groupingBehavior logical-group) is a CardAction whose `members` are
    CardActions themselves, each evaluated as a standalone card would be; the bundle's
    card is issued when its own conditions hold and at least one member fired.
    """

    code: dict  # Coding in the recommendation CodeSystem
    title: str
    description: str | None
    indicator: str
    hooks: frozenset[str]
    variables: tuple[Variable, ...]
    conditions: tuple[Condition, ...]
    dynamic: tuple[tuple[str, Expression], ...]
    suggestions: tuple[SuggestionAction, ...]
    selection_behavior: str | None
    override_reasons: tuple[dict, ...]
    citations: tuple[Citation, ...]
    element: str
    members: tuple[CardAction, ...] = ()
    prefix: str | None = None  # a member's heading in its bundle's detail ("Review"); None: none
    unarmed: tuple[str, ...] = ()  # D-11: why the rule is not armed (it never fires); () armed
    not_armed_for: tuple[str, ...] = ()  # D-11: names it is not armed for (it fires for the others)
    suppression: Suppression | None = None  # chart repeat suppression (a bundle's: per member, R-5)

    @property
    def is_bundle(self) -> bool:
        return bool(self.members)

    @cached_property
    def variables_by_name(self) -> dict[str, Variable]:
        """The action's variables by name, built once (every call's environment reads it)."""
        return _by_name(self.variables)

    @property
    def codes(self) -> tuple[str, ...]:
        """The recommendation codes this action can report: a bundle's members, else its own."""
        if self.members:
            return tuple(m.code.get("code", "") for m in self.members)
        return (self.code.get("code", ""),)


@dataclass(frozen=True)
class Plan:
    url: str
    version: str | None
    id: str
    title: str
    description: str
    file: str
    variables: tuple[Variable, ...]
    requirements: tuple[DataRequirement, ...]
    actions: tuple[CardAction, ...]
    library_url: str | None = None
    usage: str | None = None

    @cached_property
    def variables_by_name(self) -> dict[str, Variable]:
        """The plan's variables by name, built once (every call's environment reads it)."""
        return _by_name(self.variables)

    @cached_property
    def arming_notes(self) -> dict[str, tuple[str, ...]]:
        """Per hook, what every trace says of the rules it triggers that are not (fully)
        armed (D-11), worked out once."""
        out: dict[str, tuple[str, ...]] = {}
        for hook in HOOKS:
            notes: list[str] = []
            for action in self.actions:
                if hook not in action.hooks:
                    continue
                for entry in (action, *action.members):
                    code = entry.code.get("code", "")
                    notes += [f"{code} not armed: {r}" for r in entry.unarmed]
                    if entry.not_armed_for:
                        notes.append(f"{code} not armed for {', '.join(entry.not_armed_for)}")
            out[hook] = tuple(notes)
        return out

    @property
    def hooks(self) -> tuple[str, ...]:
        present = {hook for action in self.actions for hook in action.hooks}
        return tuple(h for h in HOOKS if h in present)


def _by_name(variables: tuple[Variable, ...]) -> dict[str, Variable]:
    return {v.name: v for v in variables}


# Records whose medication[x] may be a reference: searched without a code at the server.
MEDICATION_RECORD_TYPES = ("MedicationRequest", "MedicationAdministration", "MedicationStatement", "MedicationDispense")
MEDICATION_USAGE = (
    "Searches of {types} are not filtered by code at the FHIR server (its code search does not follow "
    "medicationReference): the service resolves each medicationReference (contained, a Medication in the "
    "Bundle, as the templates' _include=<type>:medication asks, else a read of Medication/{{id}} from "
    "fhirServer with the bearer token) and filters by Medication.code and ingredient codes itself."
)


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    plan: Plan
    prefetch: dict[str, str] = field(default_factory=dict)

    def discovery(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "hook": self.hook,
            "id": self.id,
            "title": self.plan.title,
            "description": self.plan.description,
        }
        if self.prefetch:
            entry["prefetch"] = dict(self.prefetch)
        usage = [self.plan.usage] if self.plan.usage else []
        searched = sorted({t.split("?")[0] for t in self.prefetch.values() if t.split("?")[0] in MEDICATION_RECORD_TYPES})
        if searched:
            usage.append(MEDICATION_USAGE.format(types=", ".join(searched)))
        if usage:
            entry["usageRequirements"] = " ".join(usage)
        return entry
