"""Crash-safe checkpoint writing shared by sites (personal state) and the server (model, bank)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_torch_save(payload: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    A crash or a full disk never leaves half a checkpoint where a good one was. Keep ``payload``
    to tensors, numbers and strings so it loads with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
