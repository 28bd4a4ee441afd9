"""Checks of the arguments of :func:`~omnifm.data.ingest.load_case` and
:func:`~omnifm.data.ingest.prepare_dataset` (a bad argument is a ``ValueError``, not a bad case)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omnifm.data.modalities import MODALITIES
from omnifm.data.site_config import SPACING_RANGE_MM
from omnifm.validation import check_range, is_int

def _check_modality(modality: str | None, allow_none: bool = False) -> str | None:
    if modality is None and allow_none:
        return None
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
    return modality


def _check_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    if isinstance(spacing, (str, bytes)) or not isinstance(spacing, Sequence) or len(spacing) != 3:
        raise ValueError(f"spacing must be three positive numbers (mm) or None, got {spacing!r}")
    for i, value in enumerate(spacing):
        check_range(f"spacing[{i}] (mm)", value, *SPACING_RANGE_MM)
    return tuple(float(v) for v in spacing)  # type: ignore[return-value]


def _check_label_values(label_values: Mapping[int, int] | None) -> dict[int, int] | None:
    if label_values is None:
        return None
    if not isinstance(label_values, Mapping):
        raise ValueError(f"label_values must be a dict {{raw value: class index}}, got {label_values!r}")
    for raw, index in label_values.items():
        if not is_int(raw) or not is_int(index) or not 0 <= index <= 255:
            raise ValueError(f"label_values must map ints to class indices in [0, 255], got entry {raw!r}: {index!r}")
    return {int(raw): int(index) for raw, index in label_values.items()}


def _check_case(case: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(case, Mapping) or "image" not in case or "modality" not in case:
        raise ValueError(f"case must be a dict with 'image' and 'modality' (and optional 'label'), got {case!r}")
    _check_modality(case["modality"])
    return {key: case[key] for key in ("image", "label", "modality") if case.get(key) is not None}
