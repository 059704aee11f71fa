"""What the engine reads (RequestData) and what it records per expression (Outcome)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class RequestData(Protocol):
    """Everything an evaluation may read, already assembled and filtered (the data layer
    builds it; the engine only reads these attributes)."""

    hook: str
    context: dict
    patient: dict | None
    draft_orders: list[dict]
    selections: list[dict]  # the trigger orders: order-select's selected, order-sign's all
    now: dt.datetime

    @property
    def retrieved(self) -> Mapping[str, list[dict]]: ...  # may filter each key on first read

    @property
    def today(self) -> dt.date: ...


@dataclass(slots=True)
class Outcome:
    """One expression's result, for the trace."""

    element: str
    expression: str
    value: Any = None
    error: str | None = None
    description: str | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"element": self.element, "expression": self.expression}
        if self.description:
            out["description"] = self.description
        if self.error:
            out["error"] = self.error
        else:
            out["value"] = self.value
        if self.note:
            out["note"] = self.note
        return out
