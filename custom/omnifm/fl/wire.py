"""What crosses the wire: DXO meta keys and tensor <-> numpy conversion.

Weights travel as ``DataKind.WEIGHTS`` numpy float32 arrays (the format FLARE's HE filters
encrypt). Everything OmniFM-specific travels in DXO meta as plain Python lists and numbers:
no tensors, numpy objects or custom classes (they would break checkpoint loading with
``weights_only=True`` and are not needed on the wire).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from omnifm.algorithms import server
from omnifm.engine import RoundResult
from omnifm.validation import MAX_COUNT, is_int, is_real

SPEC = "omnifm_spec"
BANK = server.BANK
STATE = server.STATE
EXTRAS = "omnifm_extras"
PROTOTYPES = "omnifm_prototypes"
PROTOTYPE_COUNTS = "omnifm_prototype_counts"
RETRIEVAL_IDS = "omnifm_retrieval_ids"
RETRIEVAL_COUNTS = "omnifm_retrieval_counts"
METRICS = "omnifm_metrics"
PROTOTYPE_VALUES = "omnifm_prototype_values"

MAX_ROWS = 1024  # most rows a site may upload in one matrix field (prototypes, ...)
MAX_METRICS = 64  # most metric entries one contribution may carry


def to_numpy(weights: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in weights.items()}


def to_torch(weights: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in weights.items()}


def result_meta(result: RoundResult) -> dict[str, Any]:
    """Plain-Python meta for a site's round result (aggregates only; no per-image data)."""
    ids = sorted(result.retrieval_counts)
    return {
        PROTOTYPES: result.prototypes.tolist(),
        PROTOTYPE_COUNTS: [int(c) for c in result.prototype_counts.tolist()],
        RETRIEVAL_IDS: [int(i) for i in ids],
        RETRIEVAL_COUNTS: [int(result.retrieval_counts[i]) for i in ids],
        METRICS: {k: float(v) for k, v in result.metrics.items()},
        EXTRAS: server.to_plain(result.extras),
        PROTOTYPE_VALUES: [] if result.prototype_values is None else result.prototype_values.tolist(),
    }


def read_bank_upload(
    meta: dict[str, Any], bank_state: dict[str, Any], max_rows: int = MAX_ROWS
) -> tuple[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None], str | None]:
    """A contribution's bank upload ``(prototypes (P, dim), values (P, value_dim) or None, counts (P,))``,
    or empty ones and the reason it was refused (values must have one row per prototype)."""
    dim, value_dim = bank_state["dim"], int(bank_state.get("value_dim") or 0)
    empty = (torch.zeros(0, dim), torch.zeros(0, value_dim) if value_dim else None, torch.zeros(0))
    protos, reason = read_prototypes(meta, dim, max_rows)
    if reason:
        return empty, reason
    counts, _ = read_counts(meta, PROTOTYPE_COUNTS, "prototype counts", len(protos))
    counts_t = torch.tensor(counts, dtype=torch.float64) if counts else torch.ones(len(protos), dtype=torch.float64)
    if not value_dim:
        return (protos, None, counts_t), None
    values, reason = read_matrix(meta, PROTOTYPE_VALUES, value_dim, "prototype values", max_rows)
    if reason:
        return empty, reason
    if values.shape[0] != protos.shape[0]:
        return empty, f"prototype values has {values.shape[0]} rows, expected {protos.shape[0]} (one per prototype)"
    if protos.shape[0] and float(counts_t.min()) <= 0:
        return empty, "prototype counts must be >= 1"
    return (protos, values, counts_t), None


def check_names(weights: Any, expected: Mapping[str, Any]) -> str | None:
    """Why ``weights`` is not a dict with exactly the global model's parameter names, or None."""
    if not isinstance(weights, dict) or (not weights and expected):
        return "no weights in the contribution"
    missing, extra = set(expected) - set(weights), set(weights) - set(expected)
    if missing or extra:
        return f"parameter names differ from the global model (missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]})"
    return None


def check_weights(weights: Any, expected: dict[str, tuple[int, ...]]) -> str | None:
    """Why a contribution's weights cannot be averaged with the global model, or None if they can."""
    reason = check_names(weights, expected)
    if reason:
        return reason
    for name, value in weights.items():
        if not isinstance(value, np.ndarray):
            return f"{name} is {type(value).__name__}, expected a numpy array"
        if tuple(value.shape) != tuple(expected[name]):
            return f"{name} has shape {tuple(value.shape)}, expected {tuple(expected[name])}"
        if value.dtype.kind != "f":
            return f"{name} has dtype {value.dtype}, expected floating-point numbers"
        if not np.isfinite(value).all():
            return f"{name} contains NaN or Inf"
    return None


def _kind(value: Any) -> str:
    return type(value).__name__


def _shown(value: Any) -> str:
    """``repr(value)`` cut to 40 characters (an upload may hold a 400-digit int)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}... ({_kind(value)}, {len(text)} characters)"


def read_matrix(
    meta: dict[str, Any], key: str, cols: int, name: str, max_rows: int = MAX_ROWS
) -> tuple[torch.Tensor, str | None]:
    """``meta[key]`` as a checked ``(rows, cols)`` float32 tensor, or an empty one and why it was refused.

    An absent, ``None`` or empty field is an empty ``(0, cols)`` tensor (no reason). Refused: not a
    list of lists, more than ``max_rows`` rows, a row that does not hold exactly ``cols`` values (no
    reshaping, even when the element count would fit), a value that is not a number (``bool``
    included), NaN/Inf, or a value outside the float32 range.

    Args:
        meta: a contribution's DXO meta.
        key: the meta key (e.g. :data:`PROTOTYPES`).
        cols: the number of values each row must hold (e.g. the bank's dimension).
        name: what the field is, for the reason (e.g. ``"prototypes"``).
        max_rows: the most rows accepted.
    """
    empty = torch.zeros(0, cols)
    raw = meta.get(key)
    if raw is None or (isinstance(raw, list) and not raw):
        return empty, None
    if not isinstance(raw, list) or not all(isinstance(row, list) for row in raw):
        return empty, f"{name} must be a list of {cols}-value lists, got {_kind(raw)}"
    if len(raw) > max_rows:
        return empty, f"{name}: {len(raw)} rows uploaded, at most {max_rows} are allowed"
    wrong = next((i for i, row in enumerate(raw) if len(row) != cols), None)
    if wrong is not None:
        return empty, f"{name}[{wrong}] has {len(raw[wrong])} values, expected {cols} (its dimension)"
    if not all(is_real(v) for row in raw for v in row):
        return empty, f"{name} must hold only numbers"
    try:
        values = torch.tensor(raw, dtype=torch.float64).to(torch.float32)
    except (OverflowError, RuntimeError):  # an int beyond float64
        return empty, f"{name} hold values beyond the float32 range"
    if not torch.isfinite(values).all():
        return empty, f"{name} contain NaN or Inf (or values beyond the float32 range)"
    return values, None


def read_counts(meta: dict[str, Any], key: str, name: str, length: int | None = None) -> tuple[list[int], str | None]:
    """``meta[key]`` as a list of ints in ``[0, MAX_COUNT]`` (absent/None: ``[]``), or ``[]`` and the reason.

    ``length``, when given, is the number of entries required (e.g. one count per prototype).
    """
    raw = meta.get(key)
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        return [], f"{name} must be a list of ints, got {_kind(raw)}"
    if len(raw) > MAX_ROWS * 64:
        return [], f"{name}: {len(raw)} entries uploaded, at most {MAX_ROWS * 64} are allowed"
    wrong = next((i for i, v in enumerate(raw) if not (is_int(v) and 0 <= v <= MAX_COUNT)), None)
    if wrong is not None:
        return [], f"{name}[{wrong}] must be an int in [0, {MAX_COUNT}], got {_shown(raw[wrong])}"
    if length is not None and len(raw) not in (0, length):
        return [], f"{name} has {len(raw)} entries, expected {length}"
    return [int(v) for v in raw], None


def read_prototypes(meta: dict[str, Any], dim: int, max_rows: int = MAX_ROWS) -> tuple[torch.Tensor, str | None]:
    """Uploaded prototypes as a (P, dim) tensor, or an empty tensor and the reason they were refused.

    Rows of another dimension are refused (see :func:`read_matrix`), as are prototype counts that
    are not ``P`` ints in ``[0, MAX_COUNT]``.
    """
    protos, reason = read_matrix(meta, PROTOTYPES, dim, "prototypes", max_rows)
    if reason:
        return protos, reason
    _, reason = read_counts(meta, PROTOTYPE_COUNTS, "prototype counts", len(protos))
    return (protos, None) if not reason else (torch.zeros(0, dim), reason)


def read_retrievals(meta: dict[str, Any]) -> tuple[dict[int, int], str | None]:
    """Retrieval counts by bank id, or ``{}`` and the reason they were refused.

    Ids and counts are lists of the same length; ids are distinct ints >= 0, counts ints in
    ``[0, MAX_COUNT]``; ids with a zero count are dropped.
    """
    ids, reason = read_counts(meta, RETRIEVAL_IDS, "retrieval ids")
    if reason:
        return {}, reason
    counts, reason = read_counts(meta, RETRIEVAL_COUNTS, "retrieval counts", len(ids))
    if reason:
        return {}, reason
    if len(counts) != len(ids):
        return {}, f"retrieval counts has {len(counts)} entries, expected {len(ids)} (one per retrieval id)"
    if len(set(ids)) != len(ids):
        return {}, "retrieval ids repeat an id"
    return {i: c for i, c in zip(ids, counts) if c > 0}, None


def read_n_samples(value: Any) -> tuple[int, str | None]:
    """A contribution's sample count (the averaging weight): an int in ``[1, MAX_COUNT]``, or 0 and the reason."""
    if not is_int(value) or not 1 <= value <= MAX_COUNT:
        return 0, f"n_samples must be an int in [1, {MAX_COUNT}], got {_shown(value)}"
    return int(value), None


def read_metrics(meta: dict[str, Any]) -> tuple[dict[str, float], str | None]:
    """A contribution's metrics as ``{name: float}``, or ``{}`` and the reason they were refused.

    NaN is allowed (e.g. Dice when a site's validation cases have no foreground); strings, lists,
    bools and other non-numbers are not.
    """
    raw = meta.get(METRICS)
    if raw is None:
        return {}, None
    if not isinstance(raw, dict):
        return {}, f"metrics must be a dict of name -> number, got {_kind(raw)}"
    if len(raw) > MAX_METRICS:
        return {}, f"metrics: {len(raw)} entries, at most {MAX_METRICS} are allowed"
    bad = next((k for k, v in raw.items() if not isinstance(k, str) or not is_real(v)), None)
    if bad is not None:
        return {}, f"metric {str(bad)[:40]!r} must be a number, got {_kind(raw[bad])}"
    return {k: float(v) for k, v in raw.items()}, None


def read_extras(meta: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A contribution's algorithm extras (plain dict), or ``{}`` and the reason they were refused.

    FedDG's amplitudes, when present, must be a finite ``(G, C, w, w)`` numeric list with at most
    :data:`MAX_ROWS` groups (whether all sites' windows match is the core rule's check).
    """
    extras = meta.get(EXTRAS) or {}
    if not isinstance(extras, dict):
        return {}, f"extras must be a dict, got {type(extras).__name__}"
    amplitudes = extras.get(server.AMPLITUDES)
    if amplitudes:
        try:
            amps = np.asarray(amplitudes, dtype=np.float32)
        except (TypeError, ValueError, OverflowError):
            return {}, "extras amplitudes must be a rectangular list of numbers"
        if amps.ndim != 4 or amps.shape[0] > MAX_ROWS or not np.isfinite(amps).all():
            return {}, f"extras amplitudes must be finite (G, C, w, w) with G <= {MAX_ROWS}, got shape {amps.shape}"
    return extras, None
