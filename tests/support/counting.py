"""Count the calls of a method from now on (regression guards count work, never time it)."""

from __future__ import annotations

from typing import Any


def count_calls(monkeypatch: Any, owner: type, name: str) -> dict[str, int]:
    """`owner.name` wrapped for the rest of the test; the returned dict's "runs" counts its calls."""
    counted = {"runs": 0}
    original = getattr(owner, name)

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        counted["runs"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return counted
