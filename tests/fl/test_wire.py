"""The checked readers of what a site uploads in DXO meta (issue 13, items 5-7)."""

from __future__ import annotations

import pytest
import torch

from omnifm.fl import wire


def test_read_matrix_returns_the_rows_as_float32():
    values, reason = wire.read_matrix({"k": [[1, 2.5, 3], [4, 5, 6]]}, "k", 3, "values")
    assert reason is None and values.dtype == torch.float32
    assert values.tolist() == [[1.0, 2.5, 3.0], [4.0, 5.0, 6.0]]


@pytest.mark.parametrize("raw", [None, []])
def test_read_matrix_absent_is_empty_with_the_column_count(raw):
    values, reason = wire.read_matrix({"k": raw} if raw is not None else {}, "k", 5, "values")
    assert reason is None and tuple(values.shape) == (0, 5)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([1.0] * 6, "values must be a list of 3-value lists, got list"),  # 6 numbers would reshape to 2 x 3
        ([[1.0] * 6], "values[0] has 6 values, expected 3"),
        ([[1.0] * 3, [1.0] * 2], "values[1] has 2 values, expected 3"),
        ("1,2,3", "values must be a list of 3-value lists, got str"),
        ({"0": [1, 2, 3]}, "got dict"),
        ([[1.0, "x", 3.0]], "values must hold only numbers"),
        ([[1.0, True, 3.0]], "values must hold only numbers"),
        ([[1.0, None, 3.0]], "values must hold only numbers"),
        ([[1.0, float("nan"), 3.0]], "NaN or Inf"),
        ([[1.0, float("inf"), 3.0]], "NaN or Inf"),
        ([[1e300, 1.0, 1.0]], "beyond the float32 range"),
        ([[10**400, 1, 1]], "beyond the float32 range"),
        ([[0.0] * 3] * 11, "11 rows uploaded, at most 10 are allowed"),
    ],
)
def test_read_matrix_refuses_without_reshaping(raw, reason):
    values, why = wire.read_matrix({"k": raw}, "k", 3, "values", max_rows=10)
    assert why is not None and reason in why and tuple(values.shape) == (0, 3)


def test_read_matrix_default_row_bound():
    assert wire.MAX_ROWS == 1024
    _, why = wire.read_matrix({"k": [[0.0]] * 1025}, "k", 1, "values")
    assert "1025 rows uploaded, at most 1024" in why


def test_read_prototypes_uses_read_matrix_and_checks_the_counts():
    protos, why = wire.read_prototypes({wire.PROTOTYPES: [[0.1] * 4], wire.PROTOTYPE_COUNTS: [9]}, 4)
    assert why is None and protos.shape == (1, 4)
    _, why = wire.read_prototypes({wire.PROTOTYPES: [[0.1] * 2] * 2}, 4)
    assert "prototypes[0] has 2 values, expected 4" in why
    _, why = wire.read_prototypes({wire.PROTOTYPES: [[0.1] * 4] * 3}, 4, max_rows=2)
    assert "3 rows uploaded, at most 2" in why


@pytest.mark.parametrize(
    ("meta", "expected"),
    [({}, {}), ({wire.RETRIEVAL_IDS: [3, 5], wire.RETRIEVAL_COUNTS: [2, 0]}, {3: 2})],
)
def test_read_retrievals_keeps_positive_counts(meta, expected):
    assert wire.read_retrievals(meta) == (expected, None)


@pytest.mark.parametrize(
    ("value", "ok"), [(1, True), (10**9, True), (0, False), (-3, False), (10**9 + 1, False), (True, False), (2.0, False)]
)
def test_read_n_samples_bounds(value, ok):
    n, why = wire.read_n_samples(value)
    assert (why is None) == ok and (n == value if ok else n == 0)


def test_read_n_samples_shows_a_huge_int_briefly():
    _, why = wire.read_n_samples(10**400)
    assert "(int, 401 characters)" in why and len(why) < 120


def test_read_metrics_allows_nan_but_not_strings():
    metrics, why = wire.read_metrics({wire.METRICS: {"dice": float("nan"), "loss": 1}})
    assert why is None and metrics["loss"] == 1.0 and type(metrics["loss"]) is float
    assert "must be a number, got str" in wire.read_metrics({wire.METRICS: {"loss": "1"}})[1]
    assert "at most 64" in wire.read_metrics({wire.METRICS: {f"m{i}": 0.0 for i in range(65)}})[1]
