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

SPEC = "omnifm_spec"
BANK = server.BANK
STATE = server.STATE
EXTRAS = "omnifm_extras"
PROTOTYPES = "omnifm_prototypes"
PROTOTYPE_COUNTS = "omnifm_prototype_counts"
RETRIEVAL_IDS = "omnifm_retrieval_ids"
RETRIEVAL_COUNTS = "omnifm_retrieval_counts"
METRICS = "omnifm_metrics"


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
    }


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
        if not np.isfinite(value).all():
            return f"{name} contains NaN or Inf"
    return None


def read_prototypes(meta: dict[str, Any], dim: int) -> tuple[torch.Tensor, str | None]:
    """Uploaded prototypes as a (P, dim) tensor, or an empty tensor and the reason they were refused."""
    empty = torch.zeros(0, dim)
    raw = meta.get(PROTOTYPES) or []
    try:
        protos = torch.tensor(raw, dtype=torch.float32).reshape(-1, dim) if raw else empty
    except (TypeError, ValueError, RuntimeError):
        return empty, f"prototypes are not a list of {dim}-vectors"
    if not torch.isfinite(protos).all():
        return empty, "prototypes contain NaN or Inf"
    return protos, None


def read_retrievals(meta: dict[str, Any]) -> dict[int, int]:
    ids, counts = meta.get(RETRIEVAL_IDS) or [], meta.get(RETRIEVAL_COUNTS) or []
    if len(ids) != len(counts):
        return {}
    return {int(i): int(c) for i, c in zip(ids, counts) if int(c) > 0}


def read_extras(meta: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A contribution's algorithm extras (plain dict), or ``{}`` and the reason they were refused."""
    extras = meta.get(EXTRAS) or {}
    if not isinstance(extras, dict):
        return {}, f"extras must be a dict, got {type(extras).__name__}"
    return extras, None
