"""Errors a user can fix by changing their input.

They carry the parameter's name and its allowed values so the CLI can print them
as one line and exit with status 2, without a traceback.
"""

from __future__ import annotations


class SpecError(ValueError):
    """An invalid parameter value: names the parameter, what is allowed and what was given."""

    def __init__(self, param: str, allowed: str, got: object = None) -> None:
        self.param = param
        self.allowed = allowed
        self.got = got
        shown = "" if got is None else f" (got {got!r})"
        super().__init__(f"{param}: {allowed}{shown}")


class InputError(ValueError):
    """A bad file or other input that is not a single parameter (for example a report to compare)."""


def describe(exc: BaseException) -> str:
    """One line for a report row: the exception's type and the first line of its message."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]


def require_int(param: str, value: object, minimum: int) -> None:
    """An integer count or size, at least `minimum` (bool is not an integer here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(param, f"must be an integer >= {minimum}", value)
