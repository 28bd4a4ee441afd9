"""On-disk cache of a *phantom* site's checked, normalised cases, for the simulator's worker processes.

``nvflare simulator`` with its default ``-t 1`` starts a new client worker process for every site
and task, so the in-process cache of :func:`omnifm.data.site.load_site_data` never hits there:
every round each site read its phantom NIfTI files again (MONAI reader, reorientation), ran the
integrity gate and normalised the intensities. This cache stores the result once per phantom
folder and reads it back in a fraction of that time.

- **Only the synthetic phantom is cached**, in ``<phantom folder>/.omnifm_cache/``. Real sites run
  one worker process per job (the in-process cache suffices) and their cases are patient data:
  copying them elsewhere would put images where the site did not put them (e.g. the startup kit's
  workspace, which admins' shell commands can list, docs/DEPLOYMENT.md).
- **Keyed by the data and the config**: SHA-256 of the site config, the site name, the task's
  classes, a format version, the datalist's bytes and the size and modification time of every
  image and label file it names. A rewritten phantom or a changed setting misses the cache.
- **Tensors only**: the file is written with ``torch.save`` (atomic rename) and read with
  ``torch.load(weights_only=True)``; an unreadable or foreign file is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CACHE_DIR", "VERSION", "cache_key", "cached", "load_cached", "save_cached"]

CACHE_DIR = ".omnifm_cache"
VERSION = 1
_FIELDS = ("train", "val", "test")


def cache_key(config: Any, site_name: str, classes: Any, cases: list[dict[str, Any]], datalist: Path) -> str:
    """SHA-256 over everything the loaded cases depend on (see the module docstring)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([VERSION, repr(config), site_name, list(classes)]).encode())
    digest.update(datalist.read_bytes())
    for case in cases:
        paths = [case.get("image"), *dict(case.get("images") or {}).values(), case.get("label")]
        for path in filter(None, paths):
            stat = Path(path).stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _path(root: Path, key: str) -> Path:
    return Path(root) / CACHE_DIR / f"site_data-{key}.pt"


def load_cached(root: Path, key: str) -> dict[str, Any] | None:
    """The cached fields of a site's data, or None (no file, unreadable, or another key/version)."""
    path = _path(root, key)
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        return None
    if not isinstance(stored, dict) or stored.get("version") != VERSION or stored.get("key") != key:
        return None
    out = {k: v for k, v in stored.items() if k not in ("version", "key", *_FIELDS)}
    for name in _FIELDS:
        out[name] = [{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in case.items()}
                     for case in stored.get(name, [])]
    return out


def save_cached(root: Path, key: str, fields: dict[str, Any]) -> Path | None:
    """Write ``fields`` (train/val/test case dicts + plain values) for ``key``; None if the folder is not writable."""
    stored: dict[str, Any] = {"version": VERSION, "key": key}
    for name, value in fields.items():
        if name in _FIELDS:
            value = [{k: _storable(v) for k, v in case.items()} for case in value]
        stored[name] = value
    path = _path(root, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".site_data.", suffix=".tmp")
        os.close(fd)
        torch.save(stored, tmp)
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def _storable(value: Any) -> Any:
    """A value ``torch.load(weights_only=True)`` reads back: arrays as tensors, numpy scalars as Python numbers."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_storable(v) for v in value)
    return value


def cached(root: Path, key: str, build: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """``(fields, hit)``: the cached fields for ``key``, or ``build()``'s, stored for next time."""
    hit = load_cached(root, key)
    if hit is not None:
        return hit, True
    fields = build()
    save_cached(root, key, fields)
    return fields, False
