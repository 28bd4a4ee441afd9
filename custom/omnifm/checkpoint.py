"""Crash-safe checkpoint files shared by sites (personal state) and the server (model, bank).

- :func:`atomic_torch_save` writes a temporary file next to the target and renames it over the
  target, so a crash never leaves half a checkpoint. The temporary file is named
  ``.<target name>.<writer pid>.<random>.omnifm-tmp``; a writer killed with ``kill -9`` leaves it
  behind, and :func:`clean_stale_temps` removes such orphans on the next start (only files of
  that pattern whose writer process is gone, never anything else).
- :func:`load_torch_file` reads a checkpoint with ``weights_only=True``; every failure becomes a
  :class:`CheckpointError` naming the file and the fix (PyTorch's own errors, e.g. ``EOFError``
  with no text or ``OSError: [Errno 22]``, name neither).
- :func:`load_personal_file` is a site's personal-state file: readable, the expected layout, and
  every tensor in it finite.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PERSONAL_FIX",
    "TEMP_SUFFIX",
    "CheckpointError",
    "atomic_torch_save",
    "check_finite_tensors",
    "clean_stale_temps",
    "load_personal_file",
    "load_torch_file",
]

TEMP_SUFFIX = ".omnifm-tmp"
_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>[0-9]+)\.[A-Za-z0-9_]+" + re.escape(TEMP_SUFFIX) + "$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
PERSONAL_FIX = (
    "move the file out of the folder (or delete it) and restart: the site then starts its personal "
    "parameters fresh from the global model"
)


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and the fix."""


def atomic_torch_save(payload: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    A crash or a full disk never leaves half a checkpoint where a good one was. Keep ``payload``
    to tensors, numbers and strings so it loads with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # called at start-up, before this process writes anything
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files :func:`atomic_torch_save` left in ``folder`` when its writer died.

    Only files named like ours (``.<name>.<pid>.<random>.omnifm-tmp``) whose writer process no
    longer runs are removed; a save in progress in another live process is left alone.

    Returns:
        The removed files (empty when the folder does not exist).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.glob(f".*{TEMP_SUFFIX}"):
        match = _TEMP_NAME.match(path.name)
        if match is None or not path.is_file() or _writer_alive(int(match["pid"])):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # another process cleaned it first
        removed.append(path)
    return removed


def _short(err: BaseException) -> str:
    if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err).lower():
        return "it holds objects other than tensors, numbers and strings, which weights_only loading refuses"
    text = _ANSI.sub("", str(err)).strip().splitlines()
    detail = text[0][:120] if text else "no details"
    return f"{type(err).__name__}: {detail}"


def load_torch_file(path: str | Path, what: str, fix: str) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a dict checkpoint, with errors that name the file.

    Args:
        path: The checkpoint file.
        what: What the file is, for the message (e.g. ``"saved global model"``).
        fix: What the user should do, for the message.

    Raises:
        CheckpointError: missing, empty, truncated, not a PyTorch file, holds pickled objects, or
            not a dict — ``"<what> <path> cannot be read (<cause>): ... — <fix>"``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist — {fix}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises EOFError, OSError, RuntimeError, UnpicklingError, KeyError, ...
        cause = "the file is empty" if path.stat().st_size == 0 else _short(err)
        raise CheckpointError(
            f"{what} {path} cannot be read ({cause}): it is damaged or truncated (e.g. a crash or a full disk "
            f"while copying it) or was not written by OmniFM — {fix}"
        ) from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"{what} {path} holds a {type(payload).__name__}, not an OmniFM checkpoint — {fix}")
    return payload


def _tensors(node: Any, key: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(node, torch.Tensor):
        yield key, node
    elif isinstance(node, dict):
        for name, value in node.items():
            yield from _tensors(value, f"{key}/{name}" if key else str(name))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _tensors(value, f"{key}[{i}]")


def check_finite_tensors(payload: Any, path: str | Path, what: str, fix: str) -> None:
    """Refuse a checkpoint holding NaN or Inf in any tensor, however deeply nested.

    Raises:
        CheckpointError: naming the file, how many tensors are affected, a few of their keys, and the fix.
    """
    bad = [key for key, t in _tensors(payload) if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise CheckpointError(
            f"{what} {path} holds non-finite values (NaN/Inf) in {len(bad)} tensor(s) ({shown}); it was saved "
            f"after training diverged and its uploads would be rejected every round — {fix}"
        )


def load_personal_file(path: str | Path, required: Sequence[str] = ("personal",)) -> dict[str, Any]:
    """A site's personal-state file (``{"personal": {name: tensor}, "round": int, ...}``), checked.

    Every tensor in the file is checked, whatever its key (parameters, ``buffer/``, ``ditto/``,
    ``control/``, optimizer state, ...).

    Raises:
        CheckpointError: unreadable, not that layout, or any tensor holds NaN/Inf; the message
            names the file and says to move it away.
    """
    what = "personal-state file"
    payload = load_torch_file(path, what, PERSONAL_FIX)
    for key in required:
        state = payload.get(key)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{what} {path} has no {key!r} dict of tensors — {PERSONAL_FIX}")
    check_finite_tensors(payload, path, what, PERSONAL_FIX)
    return payload
