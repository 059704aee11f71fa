"""The commonest expression shapes as one closure each, instead of a closure per node.

What the compiler (fhirpath/_compile.py) builds for the shapes our rules are mostly made
of: a chain `a + b + c` (the card texts), where() of a boolean criterion, `|`, `+` and `=`
on the values they usually see, and the node a member access makes per child. Each answers
what fhirpathpy's evaluators answer, in the same order of evaluation, with the same
`$this` writes and errors; anything else goes to fhirpathpy's own function. The tests in
tests/test_fhirpath_speedups.py compare them with fhirpathpy's interpreter.
"""

from __future__ import annotations

from collections import abc
from collections.abc import Callable
from typing import Any

from fhirpathpy.engine import util
from fhirpathpy.engine.invocations import combining, equality, math
from fhirpathpy.engine.nodes import ResourceNode

from cds_service.fhirpath import _truth

Compiled = Callable[[dict, Any], Any]
_Mapping = abc.Mapping


def plus_operands(node: dict) -> list[dict]:
    """The operands of a left-associated chain `a + b + c` (fhirpathpy's AST nests it as
    ((a + b) + c)); a parenthesised or `-` operand stays one operand."""
    operands: list[dict] = []
    while node["type"] == "AdditiveExpression" and node["terminalNodeText"][0] == "+" and len(node["children"]) == 2:
        operands.append(node["children"][1])
        node = node["children"][0]
    operands.append(node)
    return operands[::-1]


def plus_chain(operands: list[Compiled]) -> Compiled:
    """`a + b + c + ...` (the card texts) as one closure: what the nested `+` closures of
    _any_infix do, in the same order (each operand evaluated with `$this` set to the input,
    each step's `+` right after its operand), without a closure and a list per step."""
    first, rest = operands[0], operands[1:]

    def plus_chain(ctx: dict, data: Any) -> list:
        ctx["$this"] = data
        total = first(ctx, data)
        for operand in rest:
            ctx["$this"] = data
            value = operand(ctx, data)
            if (total is None or (isinstance(total, list) and not total)) or (
                    value is None or (isinstance(value, list) and not value)):
                total = []  # `+` with an empty side is empty (nullable); the rest is still evaluated
                continue
            value = plus(ctx, total, value)
            total = value if isinstance(value, list) else ([] if value is None else [value])
        return total

    return plus_chain


def where(criterion: _truth.Truth) -> Compiled:
    """`where(criterion)` of a boolean criterion (fhirpath/_speedups.where_fn, which gets the
    criterion as an expression param): each item as `$this`, kept when it answers true."""

    def where(ctx: dict, data: Any) -> list:
        if not isinstance(data, list):
            return []
        kept: list = []
        for index, item in enumerate(data):
            ctx["$index"] = index
            this = ctx["$this"] = item if isinstance(item, list) else util.arraify(item)
            if criterion(ctx, this) is True:
                if isinstance(item, list):
                    kept.extend(item)  # fhirpathpy's flatten of the kept items
                else:
                    kept.append(item)
        return kept

    return where


def union(ctx: dict, left: list, right: list) -> Any:
    """`|` without fhirpathpy's distinct() where nothing can repeat or only strings do: that
    builds a table of 24 Decimals per call and JSON-encodes each resource. Plain strings (the
    text templates' lists) keep its uniq()'s first-seen order."""
    items = left + right
    if not items:
        return []  # distinct_fn of nothing (after building its table of 24 Decimals)
    if all(type(v) is str for v in items):
        return list(dict.fromkeys(items))
    if len(items) == 1:
        # what distinct_fn answers for one item, without its json.dumps of the whole resource:
        # a node's data as a new node, a plain resource or value as itself
        if type(items[0]) is ResourceNode:
            return [ResourceNode.create_node(items[0].data)]
        if type(items[0]) in (dict, bool, int):
            return items
    return combining.union_op(ctx, left, right)


def plus(ctx: dict, left: list, right: list) -> Any:
    """`+` of two plain strings (the card texts) directly; anything else as fhirpathpy does."""
    if len(left) == 1 and len(right) == 1 and type(left[0]) is str and type(right[0]) is str:
        return left[0] + right[0]
    return math.plus(ctx, left, right)


def equal(ctx: dict, left: list, right: list) -> Any:
    """`=` of a singleton against a string literal (status = 'active') without the type
    look-ups; fhirpathpy's equality reads a node as a Quantity only at a Quantity path."""
    if len(left) == 1 and len(right) == 1 and type(right[0]) is str:
        a = left[0]
        if type(a) is str:
            return [a == right[0]]
        if type(a) is ResourceNode and type(a.data) is str and a.path not in ("Quantity", "System.Quantity"):
            return [a.data == right[0]]
    return equality.equal(ctx, left, right)


FAST_OPERATORS: dict[Callable, Callable] = {combining.union_op: union, math.plus: plus, equality.equal: equal}


_new_object = object.__new__


def node(data: Any, path: str | None, index: int | None) -> ResourceNode:
    """ResourceNode(data, path, index=index), without its Mapping ABC check for a plain
    dict or string (a member access makes one node per child: the commonest allocation)."""
    made = _new_object(ResourceNode)
    kind = type(data)
    if kind is dict:
        if "resourceType" in data:
            path = data["resourceType"]
    elif kind is not str and isinstance(data, _Mapping) and "resourceType" in data:
        path = data["resourceType"]
    made.path, made.data, made._data, made.propName, made.index = path, data, None, None, index
    return made
