"""Declarative checks of function arguments, in the style of scikit-learn's ``validate_params``.

A function states what each argument may be; the decorator checks the arguments a caller gives
and raises :class:`~fer_core.errors.InvalidArgument` naming the function, the argument, what was
expected and what was given::

    @validate_params({"batch_size": [Interval(Integral, 1, None)],
                      "method": [StrOptions(method_names)],    # the registry is asked at call time
                      "limit": [Interval(Integral, 1, None), None]})
    def run(batch_size: int = 32, method: str = "gradcam", limit: int | None = None) -> None: ...

    run(batch_size=0)  # InvalidArgument: run() argument 'batch_size': expected an integer >= 1, got 0

An argument is valid when it satisfies any one of its constraints. A constraint is an
:class:`Interval`, :class:`Options` / :class:`StrOptions`, ``None`` (the value None), or a type
(an instance of it). ``bool`` is never an integer or a number here (``True`` is not a batch size);
numpy integers and floats are. Defaults are not checked (they are the function's own), nor are
arguments without a constraint. On a class the decorator checks the arguments of its ``__init__``
(a dataclass's fields, also through ``dataclasses.replace``); an ``__init__`` is named by its class.
"""

from __future__ import annotations

import functools
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from numbers import Integral, Real
from typing import Any, Literal, TypeVar

import numpy as np

from fer_core.errors import InvalidArgument

__all__ = ["Constraint", "Interval", "Options", "StrOptions", "check_params", "validate_params"]

Decorated = TypeVar("Decorated", bound=Callable[..., Any])


class Constraint(ABC):
    """One acceptable kind of value; ``str()`` says which, in words (``"an integer >= 1"``)."""

    @abstractmethod
    def is_satisfied_by(self, value: Any) -> bool:
        """Whether ``value`` is acceptable."""

    @abstractmethod
    def __str__(self) -> str: ...


def _is_bool(value: Any) -> bool:
    """True and False, numpy's included (Python's bool is an ``Integral``, numpy's is not)."""
    return isinstance(value, (bool, np.bool_))


class Interval(Constraint):
    """A number of ``kind`` (``Integral`` or ``Real``) between ``left`` and ``right`` (None: no
    bound on that side); ``closed`` says which bounds belong to it. NaN never does."""

    def __init__(self, kind: type[Integral] | type[Real], left: float | None, right: float | None, *,
                 closed: Literal["left", "right", "both", "neither"] = "both") -> None:
        if kind not in (Integral, Real):
            raise TypeError(f"Interval kind must be numbers.Integral or numbers.Real, got {kind!r}")
        if closed not in ("left", "right", "both", "neither"):
            raise TypeError(f"Interval closed must be 'left', 'right', 'both' or 'neither', got {closed!r}")
        if left is not None and right is not None and left > right:
            raise TypeError(f"Interval bounds out of order: {left} > {right}")
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def is_satisfied_by(self, value: Any) -> bool:
        if _is_bool(value) or not isinstance(value, self.kind) or (self.kind is Real and math.isnan(value)):
            return False
        left_in = self.left is None or (value >= self.left if self.closed in ("left", "both") else value > self.left)
        right_in = self.right is None or (value <= self.right if self.closed in ("right", "both")
                                          else value < self.right)
        return left_in and right_in

    def __str__(self) -> str:
        noun = "an integer" if self.kind is Integral else "a number"
        left_closed, right_closed = self.closed in ("left", "both"), self.closed in ("right", "both")
        if self.left is None and self.right is None:
            return noun
        if self.right is None:
            return f"{noun} {'>=' if left_closed else '>'} {self.left}"
        if self.left is None:
            return f"{noun} {'<=' if right_closed else '<'} {self.right}"
        return f"{noun} in {'[' if left_closed else '('}{self.left}, {self.right}{']' if right_closed else ')'}"


class Options(Constraint):
    """One of ``options``, each a ``kind``: a collection, or a callable returning one that is
    asked at every check, so a registry filled at import time stays the only list."""

    def __init__(self, kind: type, options: Collection[Any] | Callable[[], Collection[Any]]) -> None:
        self.kind, self._options = kind, options

    @property
    def options(self) -> list[Any]:
        """The accepted values now: a sequence's in its order, a registry's (mapping, set) sorted."""
        options = self._options() if callable(self._options) else self._options
        return list(options) if isinstance(options, Sequence) else sorted(options)

    def is_satisfied_by(self, value: Any) -> bool:
        if not isinstance(value, self.kind) or (_is_bool(value) and self.kind is not bool):
            return False
        return value in (self._options() if callable(self._options) else self._options)

    def __str__(self) -> str:
        return f"one of {self.options}"


class StrOptions(Options):
    """One of the strings ``options`` (a collection, or a callable returning one)."""

    def __init__(self, options: Collection[str] | Callable[[], Collection[str]]) -> None:
        super().__init__(str, options)


class _NoneConstraint(Constraint):
    def is_satisfied_by(self, value: Any) -> bool:
        return value is None

    def __str__(self) -> str:
        return "None"


class _InstanceOf(Constraint):
    def __init__(self, kind: type) -> None:
        self.kind = kind

    def is_satisfied_by(self, value: Any) -> bool:
        if self.kind is bool:
            return _is_bool(value)
        return isinstance(value, self.kind) and not (_is_bool(value) and self.kind in (int, float, Integral, Real))

    def __str__(self) -> str:
        return {bool: "true or false", int: "an integer", float: "a float", str: "a string"}.get(
            self.kind, f"a {self.kind.__name__}")


def _constraint(declared: Constraint | type | None) -> Constraint:
    if isinstance(declared, Constraint):
        return declared
    if declared is None:
        return _NoneConstraint()
    if isinstance(declared, type):
        return _InstanceOf(declared)
    raise TypeError(f"unknown constraint {declared!r}: expected a Constraint, a type or None")


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}... ({type(value).__name__})"


def _check(name: str, value: Any, accepted: Sequence[Constraint], caller: str) -> None:
    if not any(constraint.is_satisfied_by(value) for constraint in accepted):
        expected = " or ".join(str(constraint) for constraint in accepted)
        raise InvalidArgument(f"{caller}() argument {name!r}: expected {expected}, got {_shown(value)}")


def check_params(constraints: Mapping[str, Sequence[Constraint | type | None]], values: Mapping[str, Any],
                 caller: str) -> None:
    """Check each of ``values`` that has ``constraints``; the first that satisfies none is an
    :class:`InvalidArgument` naming ``caller``, the argument, what was expected and what was given."""
    for name, value in values.items():
        if name in constraints:
            _check(name, value, [_constraint(item) for item in constraints[name]], caller)


def validate_params(constraints: Mapping[str, Sequence[Constraint | type | None]]) -> Callable[[Decorated], Decorated]:
    """Decorator: check the arguments a caller gives the function (or the class's ``__init__``)
    against ``constraints`` (argument name -> acceptable constraints) before it runs. Naming a
    parameter the function does not have is a ``TypeError`` when the module is imported."""
    checked = {name: [_constraint(item) for item in declared] for name, declared in constraints.items()}

    def decorate(target: Decorated) -> Decorated:
        function = target.__init__ if isinstance(target, type) else target
        # a class by its name, a function defined in another without the outer's name
        caller = target.__qualname__.removesuffix(".__init__").rpartition("<locals>.")[2]
        parameters = inspect.signature(function).parameters
        unknown = sorted(set(checked) - set(parameters))
        if unknown:
            raise TypeError(f"validate_params: {caller} has no parameter(s) {unknown}")
        positional = [name for name, p in parameters.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        # (name, its position when it can be given by position, constraints): found without
        # Signature.bind, which would cost more than the checks on a hot path
        located = [(name, positional.index(name) if name in positional else None, accepted)
                   for name, accepted in checked.items()]

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for name, position, accepted in located:
                if position is not None and position < len(args):
                    _check(name, args[position], accepted, caller)
                elif name in kwargs:
                    _check(name, kwargs[name], accepted, caller)
            return function(*args, **kwargs)  # a wrong call gets Python's own TypeError here

        if isinstance(target, type):
            target.__init__ = wrapper  # type: ignore[misc]
            return target
        return wrapper  # type: ignore[return-value]

    return decorate
