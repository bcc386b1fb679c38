"""Words in messages: one rule for a count and its noun, used by errors, warnings and tables alike."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """'1 thread', '2 threads'; `many` for irregular plurals."""
    return f"{count:,} {noun if count == 1 else (many or noun + 's')}"
