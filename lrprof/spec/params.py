"""Operator parameters, declared once: name, type, default, valid range or choices, help.

From these declarations come the command-line options of `lrprof layer`, their parsing
and validation (one line naming the parameter and what it allows), the defaults a row's
identity records, and the `lrprof ops` listing. A bound may depend on other parameters
and on the input's shape (`stride <= k`, `heads` divides `channels`): the check receives
a context with the shape and the parameters resolved before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lrprof.spec.errors import SpecError

Context = Mapping[str, Any]  # channels, height, width, batch and the parameters resolved so far
Bound = int | Callable[[Context], int]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One operator parameter.

    `default` None with `derive` set means "derived from the others" (the geometry prior's
    width defaults to G): the row records the derived value, so an explicit value equal to
    it is the same configuration. `check` adds a constraint no bound expresses; it returns
    what is allowed (the error text) or None. `headline` parameters appear in row names
    even at their default (k, m, stride).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: Bound | None = None
    maximum: Bound | None = None
    odd: bool = False
    derive: Callable[[Context], Any] | None = None
    derived_text: str = ""
    check: Callable[[Any, Context], str | None] | None = None
    headline: bool = False
    short: str = ""
    bound_text: str = ""  # a bound that depends on the context, in words ("<= channels")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        return self.short or self.name

    def default_text(self) -> str:
        if self.default is None and self.derive is not None:
            return self.derived_text or "derived"
        return str(self.default)

    def range_text(self, context: Context | None = None) -> str:
        """What is allowed, in words: 'one of a, b', 'an odd integer in 1..13', '>= 1'."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.type is bool:
            return "true or false"
        low = _bound(self.minimum, context)
        high = _bound(self.maximum, context)
        noun = {int: "integer", float: "number"}.get(self.type, self.type.__name__)
        noun = f"an odd {noun}" if self.odd else f"an {noun}" if noun == "integer" else f"a {noun}"
        if context is None and self.bound_text:
            return f"must be {noun} {self.bound_text}"
        if low is not None and high is not None:
            return f"must be {noun} in {low}..{high}"
        if low is not None:
            return f"must be {noun} >= {low}"
        if high is not None:
            return f"must be {noun} <= {high}"
        return f"must be {noun}"

    def parse(self, text: Any) -> Any:
        """A value from the command line (text) or the API (already typed)."""
        if not isinstance(text, str):
            return text
        if self.type is bool:
            lowered = text.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise SpecError(self.name, "true or false", text)
        if self.type is int:
            try:
                return int(text.strip())
            except ValueError:
                raise SpecError(self.name, self.range_text(), text) from None
        if self.type is float:
            try:
                return float(text.strip())
            except ValueError:
                raise SpecError(self.name, self.range_text(), text) from None
        return text.strip()

    def validate(self, value: Any, context: Context) -> Any:
        """The value, checked; raises SpecError naming the parameter and what it allows."""
        if self.choices is not None:
            if value not in self.choices:
                raise SpecError(self.name, self.range_text(context), value)
        elif self.type is bool:
            if not isinstance(value, bool):
                raise SpecError(self.name, "true or false", value)
        elif self.type in (int, float):
            numeric = (int,) if self.type is int else (int, float)
            if isinstance(value, bool) or not isinstance(value, numeric):
                raise SpecError(self.name, self.range_text(context), value)
            low, high = _bound(self.minimum, context), _bound(self.maximum, context)
            if ((low is not None and value < low) or (high is not None and value > high)
                    or (self.odd and value % 2 == 0)):
                raise SpecError(self.name, self.range_text(context), value)
        elif not isinstance(value, self.type):
            raise SpecError(self.name, f"must be a {self.type.__name__}", value)
        if self.check is not None:
            problem = self.check(value, context)
            if problem:
                raise SpecError(self.name, problem, value)
        return value


def _bound(bound: Bound | None, context: Context | None) -> int | None:
    if bound is None or not callable(bound):
        return bound
    if context is None:
        return None
    try:
        return bound(context)
    except KeyError:  # depends on a parameter this context lacks
        return None


@dataclass(frozen=True)
class Schema:
    """An operator's parameters, in the order they are resolved and shown."""

    params: tuple[Param, ...]

    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def get(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def resolve(self, op: str, given: Mapping[str, Any], shape: Mapping[str, Any],
                validate: bool = True) -> dict[str, Any]:
        """Every parameter's value: given, default or derived, each validated in order
        (`validate=False` describes an existing module as it is, bounds unchecked)."""
        unknown = sorted(set(given) - set(self.names()))
        if unknown:
            allowed = ", ".join(p.flag for p in self.params) or "none"
            raise SpecError(unknown[0], f"not a parameter of op {op} (its parameters: {allowed})",
                            given[unknown[0]])
        context: dict[str, Any] = dict(shape)
        resolved: dict[str, Any] = {}
        for param in self.params:
            value = given.get(param.name)
            value = param.parse(value) if value is not None else None
            if value is None:
                value = param.derive(context) if param.derive is not None and param.default is None \
                    else param.default
            if validate:
                value = param.validate(value, context)
            context[param.name] = resolved[param.name] = value
        return resolved

    def label(self, values: Mapping[str, Any]) -> str:
        """'k=7 m=8 s=1' plus any non-headline parameter that differs from its plain default."""
        parts = []
        for p in self.params:
            value = values.get(p.name)
            if p.headline or (p.derive is None and value != p.default):
                parts.append(f"{p.label}={value}")
        return " ".join(parts)


def split_list(text: str | Sequence[Any], param: str) -> list[Any]:
    """'3,5,7' -> ['3', '5', '7']; a list stays a list; a single typed value (a boolean
    flag such as --subsample) becomes a list of one."""
    if isinstance(text, str):
        items = [t.strip() for t in text.split(",")]
        if any(not t for t in items):
            raise SpecError(param, "a value or comma-separated values, none empty", text)
        return items
    if isinstance(text, (list, tuple)):
        return list(text)
    return [text]


# Parameters several convolution-like operators share, defined once so their ranges agree.
def kernel_param(default: int = 3, help: str = "kernel size k x k ('same' padding k // 2)") -> Param:
    """k x k with 'same' padding: odd, at most twice the image plus one (beyond it every
    window covers the whole image)."""
    return Param("k", int, default, help, minimum=1,
                 maximum=lambda ctx: 2 * max(ctx["height"], ctx["width"]) + 1, odd=True, headline=True,
                 bound_text="in 1..2*max(H, W)+1")


def stride_param() -> Param:
    return Param("stride", int, 1, "stride s (output ceil(H/s) x ceil(W/s))", minimum=1,
                 maximum=lambda ctx: max(ctx["height"], ctx["width"]), headline=True, short="s",
                 bound_text="in 1..max(H, W)")


def out_channels_param() -> Param:
    return Param("out_channels", int, None, "output channels", minimum=1,
                 derive=lambda ctx: ctx["channels"], derived_text="channels")
