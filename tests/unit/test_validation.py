"""Shared argument checks (omnifm.validation): accepted values, return values and messages."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from omnifm.validation import check_int, check_range, is_int, is_real


@pytest.mark.parametrize(
    ("value", "minimum", "expected"),
    [
        (1, 1, 1),
        (7, 1, 7),
        (0, 0, 0),
        (2, 2, 2),
        (-5, None, -5),
        (np.int64(3), 1, 3),
        (np.int32(0), 0, 0),
        (np.uint8(9), 1, 9),
    ],
)
def test_check_int_accepts(value, minimum, expected):
    out = check_int("x", value, minimum)
    assert out == expected
    assert type(out) is int  # numpy integers come back as Python ints


@pytest.mark.parametrize(
    ("name", "value", "minimum", "message"),
    [
        ("dim", 0, 1, "dim must be an int >= 1, got 0"),
        ("dim", -3, 1, "dim must be an int >= 1, got -3"),
        ("k", 2.0, 1, "k must be an int >= 1, got 2.0"),
        ("k", 1.5, 1, "k must be an int >= 1, got 1.5"),
        ("k", "3", 1, "k must be an int >= 1, got '3'"),
        ("k", None, 1, "k must be an int >= 1, got None"),
        ("flag", True, 1, "flag must be an int >= 1, got True"),
        ("flag", False, 0, "flag must be an int >= 0, got False"),
        ("flag", np.bool_(True), 1, "flag must be an int >= 1, got np.True_"),
        ("seed", -1, 0, "seed must be an int >= 0, got -1"),
        ("seed", np.int64(-1), 0, "seed must be an int >= 0, got np.int64(-1)"),
        ("min_count", 1, 2, "min_count must be an int >= 2, got 1"),
        ("seed", 1.5, None, "seed must be an int, got 1.5"),
        ("seed", True, None, "seed must be an int, got True"),
        ("n", torch.tensor(3), 1, "n must be an int >= 1, got tensor(3)"),
    ],
)
def test_check_int_rejects(name, value, minimum, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_int(name, value, minimum)


def test_check_int_default_minimum_is_one():
    assert check_int("x", 1) == 1
    with pytest.raises(ValueError, match=r"^x must be an int >= 1, got 0$"):
        check_int("x", 0)


@pytest.mark.parametrize(
    ("value", "bounds", "require_real"),
    [
        (0.5, {"low": 0, "high": 1, "low_open": True}, True),
        (1.0, {"low": 0, "high": 1, "low_open": True}, True),
        (1, {"low": 0, "high": 1, "low_open": True}, True),
        (0.0, {"low": 0, "high": 1, "high_open": True}, True),
        (np.float32(0.25), {"low": 0, "high": 1}, True),
        (0.0, {"low": 0}, True),
        (math.inf, {"low": 0}, True),
        (-2.0, {"high": 0}, True),
        (math.inf, {}, True),
        (True, {"low": 0}, False),  # comparison only: bool passes as 1
        (torch.tensor(0.5), {"low": 0, "high": 1}, False),
    ],
)
def test_check_range_accepts_and_returns_value_unchanged(value, bounds, require_real):
    assert check_range("x", value, **bounds, require_real=require_real) is value


@pytest.mark.parametrize(
    ("name", "value", "bounds", "require_real", "message"),
    [
        ("low_pass_fraction", 0.0, {"low": 0, "high": 1, "low_open": True}, False,
         "low_pass_fraction must be in (0, 1], got 0.0"),
        ("low_pass_fraction", 1.5, {"low": 0, "high": 1, "low_open": True}, False,
         "low_pass_fraction must be in (0, 1], got 1.5"),
        ("dropout", 1.0, {"low": 0, "high": 1, "high_open": True}, False, "dropout must be in [0, 1), got 1.0"),
        ("dropout", -0.1, {"low": 0, "high": 1, "high_open": True}, False, "dropout must be in [0, 1), got -0.1"),
        ("val_fraction", 1.0, {"low": 0, "high": 1, "low_open": True, "high_open": True}, True,
         "val_fraction must be in (0, 1), got 1.0"),
        ("val_fraction", "0.2", {"low": 0, "high": 1, "low_open": True, "high_open": True}, True,
         "val_fraction must be in (0, 1), got '0.2'"),
        ("keep", True, {"low": 0, "high": 1}, True, "keep must be in [0, 1], got True"),
        ("keep", 1.5, {"low": 0, "high": 1}, True, "keep must be in [0, 1], got 1.5"),
        ("keep", math.nan, {"low": 0, "high": 1}, True, "keep must be in [0, 1], got nan"),
        ("init_std", -0.1, {"low": 0}, False, "init_std must be >= 0, got -0.1"),
        ("lam", math.nan, {"low": 0}, False, "lam must be >= 0, got nan"),
        ("rho", 0.0, {"low": 0, "low_open": True}, True, "rho must be > 0, got 0.0"),
        ("cap", 2.0, {"high": 1}, True, "cap must be <= 1, got 2.0"),
        ("cap", 1.0, {"high": 1, "high_open": True}, True, "cap must be < 1, got 1.0"),
        ("x", None, {}, True, "x must be a real number, got None"),
    ],
)
def test_check_range_rejects(name, value, bounds, require_real, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_range(name, value, **bounds, require_real=require_real)


def test_check_range_without_require_real_keeps_the_comparison_type_error():
    with pytest.raises(TypeError):
        check_range("init_std", "0.1", 0, require_real=False)


@pytest.mark.parametrize(
    ("value", "int_", "real"),
    [
        (3, True, True),
        (np.int16(3), True, True),
        (3.0, False, True),
        (np.float64(3.0), False, True),
        (math.nan, False, True),
        (True, False, False),
        (np.bool_(False), False, False),
        ("3", False, False),
        (None, False, False),
        (torch.tensor(3), False, False),
    ],
)
def test_predicates(value, int_, real):
    assert is_int(value) is int_
    assert is_real(value) is real
