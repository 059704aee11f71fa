"""FHIRPath ASTs compiled once into Python closures, with fhirpathpy's own semantics.

fhirpathpy interprets its AST on every evaluation: each node goes through a dispatch
table, every operator and function call re-resolves its function and re-types its
parameters. Profiling put that glue at most of the cost of a hook call (bench/README.md).
Here each node is turned once into a closure `fn(ctx, data) -> result` that does what
fhirpathpy's evaluator for that node does (same context mutations, same parameter
typing, same functions called), with the dispatch, lookups and typing decided at compile
time. Node types not handled here fall back to fhirpathpy's `do_eval` for that subtree,
so every expression still evaluates; tests/test_fhirpath_speedups.py runs every scenario
with and without compilation and requires identical results.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fhirpathpy.engine import do_eval, param_check_table, type_specifier, util
from fhirpathpy.engine.evaluators import evaluators, member_invocation
from fhirpathpy.engine.invocations import logic

from cds_service.fhirpath._speedups import require_supported_fhirpathpy

_VERSION_CHECKED = False  # the first compile checks fhirpathpy's version (then never again)

Compiled = Callable[[dict, Any], Any]
_CONSTANT = ("StringLiteral", "NumberLiteral", "BooleanLiteral", "Identifier")
_PASS_THROUGH = ("TermExpression", "InvocationTerm", "ParenthesizedTerm")
_OPERATORS = ("InequalityExpression", "AdditiveExpression", "MultiplicativeExpression", "EqualityExpression",
              "OrExpression", "ImpliesExpression", "AndExpression", "XorExpression")
_IMPLIES = logic.implies_op
_SHORT_CIRCUIT = {"and": False, "or": True, "implies": False}  # the left value that decides the result


def compile_ast(ast: dict, registry: dict[str, dict]) -> Compiled:
    """The closure for a parsed expression (the root that fhirpathpy.parse returns)."""
    global _VERSION_CHECKED
    if not _VERSION_CHECKED:
        require_supported_fhirpathpy()  # the closures re-implement its evaluators
        _VERSION_CHECKED = True
    return _Compiler(registry).node(ast["children"][0])


class _Compiler:
    def __init__(self, registry: dict[str, dict]):
        self.registry = registry

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
            return self._constant(node)
        if kind == "MemberInvocation":
            return lambda ctx, data: member_invocation(ctx, data, node)
        if kind == "ThisInvocation":
            return lambda ctx, data: util.arraify(ctx["$this"])
        if kind == "FunctionInvocation":
            return self._function(node)
        if kind in _OPERATORS:
            return self._infix(node, node["terminalNodeText"][0])
        if kind == "UnionExpression":
            return self._infix(node, "|")
        return lambda ctx, data: do_eval(ctx, data, node)

    @staticmethod
    def _chain(steps: list[Compiled]) -> Compiled:
        def chain(ctx: dict, data: Any) -> list:
            for step in steps:
                data = step(ctx, data)
            return list(data)

        return chain

    @staticmethod
    def _constant(node: dict) -> Compiled:
        identifier = node["children"][0]["children"][0]
        name = evaluators["Identifier"]({}, [], identifier)[0].replace("`", "")

        def constant(ctx: dict, data: Any) -> list:
            variables = ctx["vars"]
            if name not in variables:
                raise ValueError(f"Attempting to access an undefined environment variable: {name}")
            value = variables[name]
            if value is None:
                return []
            return value if isinstance(value, list) else [value]

        return constant

    def _params(self, nodes: list[dict] | None) -> list[tuple[dict, Compiled]]:
        return [(p, self.node(p)) for p in nodes or []]

    def _function(self, node: dict) -> Compiled:
        functn = node["children"][0]
        name = evaluators["Identifier"]({}, [], functn["children"][0])[0]
        param_list = next((c for c in functn["children"][1:] if c.get("type") == "ParamList"), None)
        raw = param_list.get("children") if param_list else None
        invocation = self.registry.get(name)
        if invocation is None:
            return lambda ctx, data: do_eval(ctx, data, node)  # raises "Not implemented" as fhirpathpy does
        params = self._params(raw)
        fn = invocation["fn"]
        nullable_input = "nullable_input" in invocation
        nullable = "nullable" in invocation
        if "variadic" in invocation:
            kind = invocation["variadic"]

            def variadic(ctx: dict, data: Any) -> list:
                if nullable_input and util.is_nullable(data):
                    return []
                this = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
                values = [_make_param(ctx, this, kind, p, f) for p, f in params]
                return util.arraify(fn(ctx, util.arraify(data), *values))

            return variadic
        if "arity" not in invocation:
            if params:
                return lambda ctx, data: do_eval(ctx, data, node)  # raises "expects no params"

            def no_params(ctx: dict, data: Any) -> list:
                if nullable_input and util.is_nullable(data):
                    return []
                return util.arraify(fn(ctx, util.arraify(data)))

            return no_params
        if fn.__name__ == "trace_fn" or len(params) not in invocation["arity"]:
            return lambda ctx, data: do_eval(ctx, data, node)
        types = invocation["arity"][len(params)]

        def call(ctx: dict, data: Any) -> list:
            if nullable_input and util.is_nullable(data):
                return []
            this = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
            values = [ctx, data] + [_make_param(ctx, this, t, p, f) for t, (p, f) in zip(types, params, strict=False)]
            if nullable and any(util.is_nullable(v) for v in values):
                return []
            return util.arraify(fn(*values))

        return call

    def _infix(self, node: dict, op: str) -> Compiled:
        invocation = self.registry.get(op)
        if invocation is None or "fn" not in invocation or len(node["children"]) != 2:
            return lambda ctx, data: do_eval(ctx, data, node)  # raises as fhirpathpy does
        fn, types = invocation["fn"], invocation["arity"][2]
        nullable = "nullable" in invocation
        params = self._params(node["children"])
        if op in _SHORT_CIRCUIT:
            return self._logic(fn, types, params, _SHORT_CIRCUIT[op])

        def infix(ctx: dict, data: Any) -> list:
            values = [ctx] + [_make_param(ctx, data, t, p, f) for t, (p, f) in zip(types, params, strict=False)]
            if nullable and any(util.is_nullable(v) for v in values):
                return []
            return util.arraify(fn(*values))

        return infix

    @staticmethod
    def _logic(fn: Callable, types: list, params: list[tuple[dict, Compiled]], decided: bool) -> Compiled:
        """`and`, `or`, `implies`: the right operand is skipped once the left decides the result.

        FHIRPath lets an implementation short-circuit these (spec 6.5): `false and X` is false,
        `true or X` is true and `false implies X` is true whatever X is, empty included. Any
        other left value (true, false or empty) needs the right operand, as fhirpathpy does.
        """
        (left_type, (left_node, left)), (right_type, (right_node, right)) = zip(types, params, strict=True)
        short = [decided if fn is not _IMPLIES else True]

        def logic(ctx: dict, data: Any) -> list:
            a = _make_param(ctx, data, left_type, left_node, left)
            if a is decided and not ctx.get("eager"):
                return list(short)
            return util.arraify(fn(ctx, a, _make_param(ctx, data, right_type, right_node, right)))

        return logic


def _make_param(ctx: dict, parent: Any, kind: Any, node: dict, compiled: Compiled) -> Any:
    """fhirpathpy's make_param, evaluating the parameter with its compiled closure."""
    if kind == "Expr":
        def expression(data: Any) -> Any:
            ctx["$this"] = util.arraify(data)
            return compiled(ctx, ctx["$this"])

        return expression
    if kind == "AnyAtRoot":
        ctx["$this"] = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
        return compiled(ctx, ctx["$this"])
    if kind == "Identifier":
        if node["type"] == "TermExpression":
            return node["text"]
        raise Exception("Expected identifier node, got " + json.dumps(node))
    if kind == "TypeSpecifier":
        return type_specifier(ctx, parent, node)
    ctx["$this"] = parent
    result = compiled(ctx, parent)
    if kind == "Any":
        return result
    if isinstance(kind, list):
        if len(result) == 0:
            return []
        kind = kind[0]
    if len(result) > 1:
        raise Exception("Unexpected collection" + json.dumps(result) + "; expected singleton of type " + kind)
    if len(result) == 0:
        return []
    if kind not in param_check_table:
        raise Exception("Implement me for " + kind)
    return param_check_table[kind](result[0])
