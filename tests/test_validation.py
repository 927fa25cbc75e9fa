"""The declarative argument checks of :mod:`fer_core.validation` (pure Python, no data)."""

import dataclasses
from numbers import Integral, Real

import numpy as np
import pytest

from fer_core.errors import ConfigError, InvalidArgument
from fer_core.validation import Interval, Options, StrOptions, check_params, validate_params

REGISTRY: dict[str, object] = {"gradcam": object()}


@validate_params({"batch_size": [Interval(Integral, 1, None)], "method": [StrOptions(lambda: REGISTRY)],
                  "limit": [Interval(Integral, 1, None), None], "alpha": [Interval(Real, 0, 1)],
                  "align": [bool]})
def run(batch_size: int = 32, method: str = "gradcam", limit: int | None = None, alpha: float = 0.5,
        align: bool = True) -> tuple:
    return batch_size, method, limit, alpha, align


def test_valid_arguments_pass_through_unchanged():
    assert run() == (32, "gradcam", None, 0.5, True)
    assert run(np.int64(4), "gradcam", limit=np.uint8(2), alpha=np.float32(1.0), align=np.bool_(False)) \
        == (4, "gradcam", 2, 1.0, False)
    assert run(alpha=0) == (32, "gradcam", None, 0, True)  # an int is a number


@pytest.mark.parametrize("arguments, message", [
    ({"batch_size": 0}, "run() argument 'batch_size': expected an integer >= 1, got 0"),
    ({"batch_size": True}, "argument 'batch_size': expected an integer >= 1, got True"),
    ({"batch_size": np.bool_(True)}, "argument 'batch_size': expected an integer >= 1, got np.True_"),
    ({"batch_size": 2.0}, "argument 'batch_size': expected an integer >= 1, got 2.0"),
    ({"limit": "5"}, "argument 'limit': expected an integer >= 1 or None, got '5'"),
    ({"alpha": 1.5}, "argument 'alpha': expected a number in [0, 1], got 1.5"),
    ({"alpha": float("nan")}, "argument 'alpha': expected a number in [0, 1], got nan"),
    ({"alpha": False}, "argument 'alpha': expected a number in [0, 1], got False"),
    ({"align": 1}, "argument 'align': expected true or false, got 1"),
    ({"method": "lime"}, "argument 'method': expected one of ['gradcam'], got 'lime'"),
])
def test_a_bad_argument_names_function_argument_expectation_and_value(arguments, message):
    with pytest.raises(InvalidArgument) as raised:
        run(**arguments)
    assert message in str(raised.value)
    assert not isinstance(raised.value, ConfigError) and isinstance(raised.value, ValueError)


def test_options_from_a_callable_follow_the_registry():
    with pytest.raises(InvalidArgument, match=r"one of \['gradcam'\], got 'occlusion'"):
        run(method="occlusion")
    REGISTRY["occlusion"] = object()
    try:
        assert run(method="occlusion")[1] == "occlusion"
    finally:
        del REGISTRY["occlusion"]


def test_intervals_say_which_bounds_belong():
    assert str(Interval(Real, 0, 1, closed="neither")) == "a number in (0, 1)"
    assert str(Interval(Real, 0, None, closed="neither")) == "a number > 0"
    assert str(Interval(Integral, None, 10, closed="left")) == "an integer < 10"
    half_open = Interval(Real, 0, 1, closed="left")
    assert half_open.is_satisfied_by(0) and not half_open.is_satisfied_by(1) and half_open.is_satisfied_by(0.999)
    assert Interval(Real, 0, None).is_satisfied_by(float("inf")) and not Interval(Real, 0, 1).is_satisfied_by(-1e-9)
    assert str(Options(int, {3, 1, 2})) == "one of [1, 2, 3]" and not Options(int, {1}).is_satisfied_by(True)
    # a registry (mapping, set) is listed sorted, a tuple in its own order
    assert str(StrOptions({"mediapipe": 1, "haar": 2})) == "one of ['haar', 'mediapipe']"
    assert str(StrOptions(("signed", "abs"))) == "one of ['signed', 'abs']"


def test_a_class_is_checked_on_construction_and_on_replace():
    @validate_params({"layout": [Interval(Integral, 2, 10)]})
    @dataclasses.dataclass(frozen=True)
    class Grid:
        layout: int = 6

    assert Grid(3).layout == 3
    with pytest.raises(InvalidArgument, match=r"Grid\(\) argument 'layout': expected an integer in \[2, 10\], got 1"):
        Grid(layout=1)
    with pytest.raises(InvalidArgument, match="got 11"):
        dataclasses.replace(Grid(), layout=11)


def test_methods_wrong_calls_and_declaration_mistakes():
    class Cache:
        @validate_params({"path": [str]})
        def __init__(self, path: str = "cache.sqlite") -> None:
            self.path = path

        @validate_params({"days": [Interval(Real, 0, None), None]})
        def prune(self, days: float | None = None) -> float | None:
            return days

    assert Cache().prune(2.5) == 2.5
    with pytest.raises(InvalidArgument, match=r"Cache.prune\(\) argument 'days'"):
        Cache().prune(-1)
    with pytest.raises(InvalidArgument, match=r"^Cache\(\) argument 'path': expected a string, got None$"):
        Cache(None)
    with pytest.raises(TypeError, match="unexpected keyword argument 'dayz'"):  # Python's own message
        Cache().prune(dayz=1)
    with pytest.raises(TypeError, match=r"has no parameter\(s\) \['size'\]"):
        validate_params({"size": [int]})(lambda n: n)
    with pytest.raises(TypeError, match="unknown constraint"):
        validate_params({"n": ["positive"]})
    with pytest.raises(InvalidArgument, match=r"load\(\) argument 'name': expected a string, got 3"):
        check_params({"name": [str]}, {"name": 3, "other": object()}, "load")
