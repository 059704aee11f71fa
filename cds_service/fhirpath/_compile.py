"""FHIRPath ASTs compiled once into Python closures, with fhirpathpy's own semantics.

fhirpathpy interprets its AST on every evaluation: each node goes through a dispatch
table, every operator and function call re-resolves its function and re-types its
parameters, and every member access re-derives the child's type path from the model by
string formatting. Profiling put that glue at most of the cost of a hook call
(bench/README.md). Here each node is turned once into a closure `fn(ctx, data) -> result`
that does what fhirpathpy's evaluator for that node does (same context mutations, same
parameter typing, same functions called), with the dispatch, lookups, parameter kinds and
type paths decided at compile time (type paths once per parent type). Node types not
handled here fall back to fhirpathpy's `do_eval` for that subtree, so every expression
still evaluates; tests/test_fhirpath_speedups.py runs every scenario with and without
compilation and requires identical results.

Some shapes are fused into one closure, because they are most of what our rules evaluate:
a node that can only be a boolean or empty (and/or/implies/xor, exists(), empty(), not(),
memberOf() and convertsToUnit() of a literal) is a three-valued closure (fhirpath/_truth.py)
wherever a logic operator, where() or iif() consumes it; a chain `a + b + c` (the card
texts) is folded in one closure; `{}`, quantity literals and `contains`/`in` no longer go
through do_eval. Each keeps the nested closures' order of evaluation, `$this` writes and
errors (the truth-table tests in tests/test_fhirpath_speedups.py compare them with
fhirpathpy operand by operand).

One deliberate difference: a member access does not fill ResourceNode.propName (the
"Patient.name[0]" path string). fhirpathpy only ever reads it to build the propName of
the node's own children (navigation.py), never to compute a value, and building it was a
third of the cost of a member access.
"""

from __future__ import annotations

import json
from collections import abc
from collections.abc import Callable
from typing import Any

from fhirpathpy.engine import check_boolean_param, check_string_param, do_eval, param_check_table, type_specifier, util
from fhirpathpy.engine.evaluators import evaluators, member_invocation
from fhirpathpy.engine.invocations import existence, logic, math, misc
from fhirpathpy.engine.nodes import FP_Quantity, ResourceNode

from cds_service.fhirpath import _fused, _truth
from cds_service.fhirpath._speedups import require_supported_fhirpathpy, where_fn

_VERSION_CHECKED = False  # the first compile checks fhirpathpy's version (then never again)

Compiled = Callable[[dict, Any], Any]
Param = Callable[[dict, Any], Any]  # (ctx, parent data) -> the parameter as fhirpathpy's make_param makes it
_CONSTANT = ("StringLiteral", "NumberLiteral", "BooleanLiteral", "Identifier")
_PASS_THROUGH = ("TermExpression", "InvocationTerm", "ParenthesizedTerm")
_OPERATORS = ("InequalityExpression", "AdditiveExpression", "MultiplicativeExpression", "EqualityExpression",
              "OrExpression", "ImpliesExpression", "AndExpression", "XorExpression")
_MEMBERSHIP = {"contains": "containsOp", "in": "inOp"}
_LOGIC = ("OrExpression", "AndExpression", "ImpliesExpression")  # `xor` is an OrExpression too
_LOGIC_FUNCTIONS = {"and": logic.and_op, "or": logic.or_op, "implies": logic.implies_op, "xor": logic.xor_op}
_BOOLEAN_CALLS = {"exists": existence.exists_macro, "empty": existence.empty_fn, "not": existence.not_fn}
_Mapping = abc.Mapping


def compile_ast(ast: dict, registry: dict[str, dict]) -> Compiled:
    """The closure for a parsed expression (the root that fhirpathpy.parse returns)."""
    global _VERSION_CHECKED
    if not _VERSION_CHECKED:
        require_supported_fhirpathpy()  # the closures re-implement its evaluators
        _VERSION_CHECKED = True
    return _Compiler(registry).node(ast["children"][0])


# The closures end with `value if isinstance(value, list) else ([] if value is None else
# [value])`: fhirpathpy's util.arraify (without instead_none), written out because a
# function call per node was a measurable share of a hook call.


def _is_string_literal(node: dict) -> bool:
    """A TermExpression > LiteralTerm > StringLiteral chain (a quoted string, nothing else)."""
    while node["type"] in ("TermExpression", "LiteralTerm") and len(node.get("children") or ()) == 1:
        node = node["children"][0]
    return node["type"] == "StringLiteral"


def _arguments(functn: dict) -> list[dict]:
    """The argument nodes of a Functn node (its ParamList's children)."""
    param_list = next((c for c in functn["children"][1:] if c.get("type") == "ParamList"), None)
    return (param_list.get("children") if param_list else None) or []


def _nullable(value: Any) -> bool:
    """fhirpathpy's util.is_nullable."""
    return value is None or (isinstance(value, list) and not value)


class _Compiler:
    def __init__(self, registry: dict[str, dict]):
        self.registry = registry
        # closures of this compile that a chain can fuse with its neighbour: `%name` look-ups
        # and argument-less exists(), by id with the closure itself (held, so that no id is
        # reused by another closure while the compile runs)
        self.variables: dict[int, tuple[Compiled, str]] = {}
        self.exists: dict[int, Compiled] = {}

    def node(self, node: dict) -> Compiled:
        kind = node["type"]
        if kind in _CONSTANT:
            value = evaluators[kind]({}, [], node)
            return lambda ctx, data: list(value)
        if kind in _PASS_THROUGH:
            return self.node(node["children"][0])
        if kind == "LiteralTerm":
            if node["children"][0]:
                return self.node(node["children"][0])
            return lambda ctx, data: [node["text"]]
        if kind == "InvocationExpression":
            return self._chain([self.node(child) for child in node["children"]])
        if kind == "ExternalConstantTerm":
            name = _constant_name(node)
            compiled = _constant(name)
            self.variables[id(compiled)] = (compiled, name)
            return compiled
        if kind == "MemberInvocation":
            return _member(node)
        if kind == "ThisInvocation":
            return lambda ctx, data: util.arraify(ctx["$this"])
        if kind == "FunctionInvocation":
            return self._function(node)
        if kind in _LOGIC:
            boolean = self.truth(node)
            if boolean is not None:
                return _truth.as_list(boolean)
        if kind == "AdditiveExpression" and node["terminalNodeText"][0] == "+" and self._plain_plus():
            return _fused.plus_chain([self.node(operand) for operand in _fused.plus_operands(node)])
        if kind in _OPERATORS:
            return self._infix(node, node["terminalNodeText"][0])
        if kind == "UnionExpression":
            return self._infix(node, "|")
        if kind == "MembershipExpression" and node["terminalNodeText"][0] in _MEMBERSHIP:
            return self._infix(node, _MEMBERSHIP[node["terminalNodeText"][0]])  # fhirpathpy's alias_op_expression
        if kind == "NullLiteral":
            return lambda ctx, data: []  # `{}`
        if kind == "QuantityLiteral":
            quantity = evaluators[kind]  # a fresh FP_Quantity per evaluation, as fhirpathpy makes it
            return lambda ctx, data: quantity(ctx, data, node)
        return lambda ctx, data: do_eval(ctx, data, node)

    def param(self, kind: Any, node: dict) -> Param:
        """fhirpathpy's make_param(ctx, parent, kind, node), with the kind settled here."""
        compiled = self.node(node)
        if kind == "Expr":
            def expr_param(ctx: dict, parent: Any) -> Callable[[Any], Any]:
                def expression(data: Any) -> Any:
                    this = ctx["$this"] = data if isinstance(data, list) else util.arraify(data)
                    return compiled(ctx, this)

                return expression

            return expr_param
        if kind == "AnyAtRoot":
            def at_root(ctx: dict, parent: Any) -> Any:
                this = ctx["$this"] = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
                return compiled(ctx, this)

            return at_root
        if kind == "Identifier":
            if node["type"] == "TermExpression":
                text = node["text"]
                return lambda ctx, parent: text
            message = "Expected identifier node, got " + json.dumps(node)

            def not_identifier(ctx: dict, parent: Any) -> Any:
                raise Exception(message)

            return not_identifier
        if kind == "TypeSpecifier":
            return lambda ctx, parent: type_specifier(ctx, parent, node)
        if kind == "Any":
            def any_param(ctx: dict, parent: Any) -> Any:
                ctx["$this"] = parent
                return compiled(ctx, parent)

            return any_param
        optional = isinstance(kind, list)
        name = kind[0] if optional else kind
        check = param_check_table.get(name)
        if check is check_string_param and node["type"] == "TermExpression" and _is_string_literal(node):
            # a literal string argument (memberOf('...'), toUnit('mg')): typed once, here
            text = self._literal_text(node)

            def literal(ctx: dict, parent: Any) -> Any:
                ctx["$this"] = parent
                return text

            return literal

        def typed(ctx: dict, parent: Any) -> Any:
            ctx["$this"] = parent
            result = compiled(ctx, parent)
            if not result:
                return []
            if len(result) == 1 and check is check_boolean_param and (result[0] is True or result[0] is False):
                return result[0]  # what the check answers for a plain boolean, without the call
            if len(result) > 1:
                raise Exception("Unexpected collection" + json.dumps(result) + "; expected singleton of type " + name)
            if check is None:
                raise Exception("Implement me for " + name)
            return check(result[0])

        return typed

    def truth(self, node: dict) -> _truth.Truth | None:
        """The node as a three-valued closure (fhirpath/_truth.py) when it can only answer a
        boolean or nothing: and/or/implies/xor, `X.exists()`, `X.empty()`, `.not()` of such a
        node; None for any other node (or a function our registry replaces)."""
        kind = node["type"]
        if kind in _PASS_THROUGH:
            children: list[dict] = node.get("children") or []
            return self.truth(children[0]) if len(children) == 1 else None
        if kind in _LOGIC:
            op = node["terminalNodeText"][0]
            invocation = self.registry.get(op) or {}
            if invocation.get("fn") is not _LOGIC_FUNCTIONS.get(op) or len(node["children"]) != 2:
                return None
            first, second = node["children"]
            return _truth.logic(op, self.operand(first), self.operand(second))
        if kind == "InvocationExpression" and len(node["children"]) == 2:
            return self._boolean_call(*node["children"])
        return None

    def operand(self, node: dict) -> _truth.Truth:
        """An and/or operand: its three-valued closure, or its list typed as a Boolean."""
        found = self.truth(node)
        return found if found is not None else _truth.typed(self.node(node))

    def _boolean_call(self, target: dict, call: dict) -> _truth.Truth | None:
        """`X.exists()`, `X.empty()` (fused with X when X is `%name`), `X.not()`, and
        `X.memberOf('url')`-like calls of a PLAIN_BOOLEAN user function."""
        if call["type"] != "FunctionInvocation":
            return None
        if len(call["children"][0]["children"]) != 1:
            return self._plain_boolean(target, call["children"][0])
        name = evaluators["Identifier"]({}, [], call["children"][0]["children"][0])[0]
        fn = (self.registry.get(name) or {}).get("fn")
        if fn is None or fn is not _BOOLEAN_CALLS.get(name):
            return None
        if name == "not":
            inner = self.truth(target)
            return _truth.negation(inner) if inner is not None else None
        variable = _variable_name(target)
        if variable is not None:
            return (_truth.variable_exists if name == "exists" else _truth.variable_empty)(variable, _lookup)
        return (_truth.exists if name == "exists" else _truth.empty)(self.node(target))

    def _plain_boolean(self, target: dict, functn: dict) -> _truth.Truth | None:
        """A user function marked PLAIN_BOOLEAN, called with one string literal."""
        name = evaluators["Identifier"]({}, [], functn["children"][0])[0]
        invocation = self.registry.get(name) or {}
        fn = invocation.get(_truth.PLAIN_BOOLEAN)
        raw = _arguments(functn)
        if fn is None or len(raw) != 1 or invocation.get("arity", {}).get(1) != ["String"] \
                or not _is_string_literal(raw[0]):
            return None
        return _truth.plain_boolean(self.node(target), fn, self._literal_text(raw[0]))

    def _literal_text(self, node: dict) -> str:
        """A string literal argument's value, typed as fhirpathpy's String parameter types it."""
        return check_string_param(self.node(node)({}, [])[0])

    def _plain_plus(self) -> bool:
        """Whether `+` is fhirpathpy's (an `Any`, `Any` operator, empty when either side is)."""
        invocation = self.registry.get("+") or {}
        return invocation.get("fn") is math.plus and "nullable" in invocation and invocation["arity"][2] == ["Any", "Any"]

    def _params(self, kinds: list, nodes: list[dict]) -> list[Param]:
        return [self.param(k, n) for k, n in zip(kinds, nodes, strict=False)]

    def _function(self, node: dict) -> Compiled:
        functn = node["children"][0]
        name = evaluators["Identifier"]({}, [], functn["children"][0])[0]
        raw = _arguments(functn)
        invocation = self.registry.get(name)
        if invocation is None:
            return lambda ctx, data: do_eval(ctx, data, node)  # raises "Not implemented" as fhirpathpy does
        fn = invocation["fn"]
        nullable_input = "nullable_input" in invocation
        if "variadic" in invocation:
            return _variadic(fn, nullable_input, self._params([invocation["variadic"]] * len(raw), raw))
        if "arity" not in invocation:
            if raw:
                return lambda ctx, data: do_eval(ctx, data, node)  # raises "expects no params"
            return _no_params(fn, nullable_input)
        if fn.__name__ == "trace_fn" or len(raw) not in invocation["arity"]:
            return lambda ctx, data: do_eval(ctx, data, node)
        if fn is misc.iif_macro:
            return _iif([self.node(p) for p in raw], self.truth(raw[0]))
        if fn is where_fn and len(raw) == 1:
            criterion = self.truth(raw[0])
            if criterion is not None:
                return _fused.where(criterion)
        params = self._params(invocation["arity"][len(raw)], raw)
        compiled = _call(fn, nullable_input, "nullable" in invocation, params)
        if fn is existence.exists_macro and not params:
            self.exists[id(compiled)] = compiled
        return compiled

    def _chain(self, steps: list[Compiled]) -> Compiled:
        lookup, name = self.variables.get(id(steps[0]), (None, ""))
        if lookup is steps[0] and len(steps) == 2:
            if self.exists.get(id(steps[1])) is steps[1]:
                return _truth.as_list(_truth.variable_exists(name, _lookup))  # %name.exists(): the commonest condition
            return _variable_then(name, steps[1])
        return _chain(steps)

    def _infix(self, node: dict, op: str) -> Compiled:
        invocation = self.registry.get(op)
        if invocation is None or "fn" not in invocation or len(node["children"]) != 2:
            return lambda ctx, data: do_eval(ctx, data, node)  # raises as fhirpathpy does
        fn = _fused.FAST_OPERATORS.get(invocation["fn"], invocation["fn"])
        if invocation["arity"][2] == ["Any", "Any"]:
            first, second = node["children"]
            return _any_infix(fn, self.node(first), self.node(second), "nullable" in invocation)
        left, right = self._params(invocation["arity"][2], node["children"])
        if "nullable" in invocation:
            def nullable_infix(ctx: dict, data: Any) -> list:
                a = left(ctx, data)
                b = right(ctx, data)
                if (a is None or (isinstance(a, list) and not a)) or (b is None or (isinstance(b, list) and not b)):
                    return []
                value = fn(ctx, a, b)
                return value if isinstance(value, list) else ([] if value is None else [value])

            return nullable_infix

        def infix(ctx: dict, data: Any) -> list:
            value = fn(ctx, left(ctx, data), right(ctx, data))
            return value if isinstance(value, list) else ([] if value is None else [value])

        return infix


def _any_infix(fn: Callable, left: Compiled, right: Compiled, nullable: bool) -> Compiled:
    """An operator on two `Any` operands (=, <, +, |, ...), the operands' make_param (`$this`
    set to the input, then the operand) written out: the commonest operator form."""

    def any_infix(ctx: dict, data: Any) -> list:
        ctx["$this"] = data
        a = left(ctx, data)
        ctx["$this"] = data
        b = right(ctx, data)
        if nullable and ((a is None or (isinstance(a, list) and not a)) or (b is None or (isinstance(b, list) and not b))):
            return []
        value = fn(ctx, a, b)
        return value if isinstance(value, list) else ([] if value is None else [value])

    return any_infix


def _chain(steps: list[Compiled]) -> Compiled:
    if len(steps) == 2:
        first, second = steps

        def pair(ctx: dict, data: Any) -> list:
            return list(second(ctx, first(ctx, data)))

        return pair

    def chain(ctx: dict, data: Any) -> list:
        for step in steps:
            data = step(ctx, data)
        return list(data)

    return chain


def _variable_name(node: dict) -> str | None:
    """The name of a bare `%name` term, else None."""
    while node["type"] == "TermExpression" and len(node.get("children") or ()) == 1:
        node = node["children"][0]
    return _constant_name(node) if node["type"] == "ExternalConstantTerm" else None


def _constant_name(node: dict) -> str:
    identifier = node["children"][0]["children"][0]
    return evaluators["Identifier"]({}, [], identifier)[0].replace("`", "")


def _lookup(ctx: dict, name: str) -> list:
    """%name as fhirpathpy's external constant reads it (the list itself, not a copy)."""
    try:
        value = ctx["vars"][name]
    except KeyError:
        raise ValueError(f"Attempting to access an undefined environment variable: {name}") from None
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


# _lookup written out in the three closures below: they are the most frequent nodes

def _constant(name: str) -> Compiled:
    def constant(ctx: dict, data: Any) -> list:
        try:
            value = ctx["vars"][name]
        except KeyError:
            return _lookup(ctx, name)  # raises its error
        return value if isinstance(value, list) else ([] if value is None else [value])

    return constant


def _variable_then(name: str, step: Compiled) -> Compiled:
    def variable_then(ctx: dict, data: Any) -> list:
        try:
            value = ctx["vars"][name]
        except KeyError:
            return _lookup(ctx, name)
        return list(step(ctx, value if isinstance(value, list) else ([] if value is None else [value])))

    return variable_then


def _variadic(fn: Callable, nullable_input: bool, params: list[Param]) -> Compiled:
    def variadic(ctx: dict, data: Any) -> list:
        if nullable_input and (data is None or (isinstance(data, list) and not data)):
            return []
        this = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
        value = fn(ctx, util.arraify(data), *[p(ctx, this) for p in params])
        return value if isinstance(value, list) else ([] if value is None else [value])

    return variadic


def _no_params(fn: Callable, nullable_input: bool) -> Compiled:
    def no_params(ctx: dict, data: Any) -> list:
        if nullable_input and (data is None or (isinstance(data, list) and not data)):
            return []
        value = fn(ctx, data if isinstance(data, list) else util.arraify(data))
        return value if isinstance(value, list) else ([] if value is None else [value])

    return no_params


def _iif(branches: list[Compiled], boolean: _truth.Truth | None) -> Compiled:
    """iif(criterion, true-result [, otherwise-result]): fhirpathpy's iif_macro, whose three
    arguments are expressions evaluated on the input (as $this), only the one it needs. A
    boolean criterion (`boolean`, fhirpath/_truth.py) is true exactly when is_true() of its
    list would be."""
    criterion, chosen = branches[0], branches[1]
    otherwise = branches[2] if len(branches) > 2 else None

    def iif(ctx: dict, data: Any) -> list:
        this = ctx["$this"] = data if isinstance(data, list) else util.arraify(data)
        if boolean(ctx, this) is True if boolean is not None else util.is_true(criterion(ctx, this)):
            this = ctx["$this"] = data if isinstance(data, list) else util.arraify(data)
            value = chosen(ctx, this)
            return value if isinstance(value, list) else ([] if value is None else [value])
        if otherwise is None:
            return []
        this = ctx["$this"] = data if isinstance(data, list) else util.arraify(data)
        value = otherwise(ctx, this)
        return value if isinstance(value, list) else ([] if value is None else [value])

    return iif


def _call(fn: Callable, nullable_input: bool, nullable: bool, params: list[Param]) -> Compiled:
    if not params:
        def call0(ctx: dict, data: Any) -> list:
            if nullable_input and (data is None or (isinstance(data, list) and not data)):
                return []
            if nullable and (data is None or (isinstance(data, list) and not data)):
                return []
            value = fn(ctx, data)
            return value if isinstance(value, list) else ([] if value is None else [value])

        return call0
    if len(params) == 1 and not nullable:
        (only,) = params

        def call1(ctx: dict, data: Any) -> list:
            if nullable_input and (data is None or (isinstance(data, list) and not data)):
                return []
            value = fn(ctx, data, only(ctx, ctx["$this"] if "$this" in ctx else ctx["dataRoot"]))
            return value if isinstance(value, list) else ([] if value is None else [value])

        return call1

    def call(ctx: dict, data: Any) -> list:
        if nullable_input and (data is None or (isinstance(data, list) and not data)):
            return []
        this = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
        values = [p(ctx, this) for p in params]
        if nullable and (_nullable(data) or any(_nullable(v) for v in values)):
            return []
        value = fn(ctx, data, *values)
        return value if isinstance(value, list) else ([] if value is None else [value])

    return call


def _typed_path(model: Any, path: str) -> str:
    return model["path2Type"].get(path, path) if isinstance(model, dict) and "path2Type" in model else path


_ChildPaths = tuple[str, str, tuple[tuple[str, str, str], ...]]


def _child_paths(model: Any, parent: str | None, key: str) -> _ChildPaths:
    """(type path of a plain child, of a child read from a mapping, and per choice type of
    `key[x]`: its field, its `_field` and its type path), as fhirpathpy derives them."""
    child = f"{parent}.{key}" if parent else f"_.{key}"
    choices: tuple[tuple[str, str, str], ...] = ()
    if isinstance(model, dict):
        child = model["pathsDefinedElsewhere"].get(child, child)
        actual = model["choiceTypePaths"].get(child)
        if actual:
            choices = tuple((f"{key}{t}", f"_{key}{t}", _typed_path(model, child + t)) for t in actual)
    base = _typed_path(model, child)
    return base, _typed_path(model, "Extension") if key == "extension" else base, choices


def _member(node: dict) -> Compiled:
    """fhirpathpy's member_invocation for one key, the child type paths worked out once per
    parent type path (and model) instead of by string formatting for every item."""
    key = evaluators["Identifier"]({}, [], node["children"][0])[0].replace("`", "")
    if util.is_capitalized(key):
        # `Patient.x`: a type filter first (rare in our expressions): fhirpathpy's own
        return lambda ctx, data: member_invocation(ctx, data, node)
    hidden = f"_{key}"
    paths: dict[tuple[int, str | None], _ChildPaths] = {}

    def member(ctx: dict, data: Any) -> list:
        if not isinstance(data, list):
            return []
        model = ctx["model"]
        model_id = id(model)
        out: list = []
        for res in data:
            if type(res) is not ResourceNode and not isinstance(res, ResourceNode):
                res = _fused.node(res, None, None)
            found = paths.get((model_id, res.path))
            if found is None:
                found = paths[(model_id, res.path)] = _child_paths(model, res.path, key)
            path, mapping_path, choices = found
            value = res.data
            to_add = to_add_ = None
            if type(value) is dict:  # the usual case, without the Mapping ABC's instance check
                mapping = True
            else:
                if isinstance(value, FP_Quantity):
                    to_add = value.value
                mapping = isinstance(value, _Mapping)
            if choices and mapping:
                for field, hidden_field, choice_path in choices:
                    to_add = value.get(field)
                    to_add_ = value.get(hidden_field)
                    if to_add is not None or to_add_ is not None:
                        path = choice_path
                        break
            elif mapping:
                to_add = value.get(key)
                to_add_ = value.get(hidden)
                path = mapping_path
            elif key == "length":
                to_add = len(value)
            for added in (to_add, to_add_):
                if added is None or (isinstance(added, list) and not added):
                    continue
                if isinstance(added, list):
                    out.extend(x if isinstance(x, ResourceNode) else _fused.node(x, path, i) for i, x in enumerate(added))
                else:
                    out.append(added if isinstance(added, ResourceNode) else _fused.node(added, path, None))
        return out

    return member
