"""Reading the cards of a response the way the scenario harness does: a bundled card counts
as the member codes it lists (extension "myeloma-cds.recommendations")."""

from __future__ import annotations

from typing import Any

from cds_service.scenarios import card_codes


def member_codes(cards: list[dict[str, Any]]) -> set[str]:
    """Every recommendation code the cards report, members of bundles included."""
    return {code for card in cards for code in card_codes(card)}


def card_with(cards: list[dict[str, Any]], code: str) -> dict[str, Any]:
    """The card that reports the code (itself or as a bundle member)."""
    return next(card for card in cards if code in card_codes(card))
