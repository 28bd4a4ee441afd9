"""The per-site round metrics record: one JSON line per (round, site), written by the server.

The aggregator (:class:`~omnifm.fl.aggregator.OmniFMAggregator`, and the HE aggregator that
subclasses it) appends one line per accepted contribution when it has aggregated a round, to
``omnifm_metrics.jsonl`` in the server's app folder (``<server workspace>/<job id>/app_server/``;
in the downloaded job result under ``app_server/``)::

    {"schema": 1, "round": 0, "site": "site-1", "n": 31, "time": 1763790970.44,
     "metrics": {"align_loss": 0.0, "dice_global": 0.0044, "dice_local": null, "loss": 2.4235}}

- ``schema``: this format's version (1). ``round``: the round index (from 0, as in the log and
  the checkpoints). ``site``: the contributing site's FLARE name. ``n``: its training-sample count
  (its weight in the mean). ``time``: when the line was written (Unix seconds).
- ``metrics``: the site's aggregate training metrics as sent in its DXO meta
  (:data:`omnifm.fl.wire.METRICS`): names of at most 64 characters ``[A-Za-z0-9_.@-]``, values
  numbers only; NaN and infinities are written as ``null``. Anything else (strings, lists, bools,
  other names) is left out, never an error. No paths, no per-case or patient data.

Each line is written with a single ``write`` on a file opened for appending, so a line is either
whole or (the server killed mid-write) torn at the end of the file; the next append first ends a
torn line, and :func:`read_rows` skips lines it cannot read. Appends after a restart keep the
earlier lines. While the job runs, the most recent lines are also published in the server's
``show_stats`` reply (group :data:`STATS_GROUP`, key ``rows``), which every admin allowed to view
the job can read; FLARE's ``get_job_log`` returns only ``log.txt``/``log.json`` and its ``cat``
needs the shell-command right and refuses ``.jsonl`` files, so ``omnifm-admin monitor`` reads the
published rows while the job runs and the file in the job result once it ended
(:func:`rows_from_stats`, :func:`rows_from_result`).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import zipfile
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_PUBLISHED",
    "MetricsRecorder",
    "RECORD_FILE",
    "SCHEMA",
    "STATS_GROUP",
    "append_rows",
    "make_row",
    "read_rows",
    "rows_from_result",
    "rows_from_stats",
]

RECORD_FILE = "omnifm_metrics.jsonl"
SCHEMA = 1
STATS_GROUP = "OmniFMMetricsRecord"
MAX_PUBLISHED = 512  # most recent lines in the show_stats reply
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

Rows = dict[tuple[int, str], dict[str, float]]


def _number(value: Any) -> float | None | bool:
    """The value as written (finite float, or None for NaN/inf); ``False`` when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        value = float(value)
    except (OverflowError, ValueError):
        return None
    return value if math.isfinite(value) else None


def make_row(round_num: Any, site: Any, n: Any, metrics: Mapping[str, Any] | None, now: float | None = None) -> dict | None:
    """One record line as a dict (see the module docstring), or None when round, site or n are unusable.

    Example::

        >>> make_row(2, "site-1", 31, {"dice": float("nan"), "loss": 1.5, "note": "x"}, now=0.0)
        {'schema': 1, 'round': 2, 'site': 'site-1', 'n': 31, 'time': 0.0, 'metrics': {'dice': None, 'loss': 1.5}}
    """
    if isinstance(round_num, bool) or not isinstance(round_num, int) or round_num < 0:
        return None
    if not isinstance(site, str) or not _NAME.match(site) or isinstance(n, bool) or not isinstance(n, int):
        return None
    clean: dict[str, float | None] = {}
    for key, value in sorted((metrics or {}).items(), key=lambda kv: str(kv[0])):
        number = _number(value)
        if isinstance(key, str) and _NAME.match(key) and number is not False:
            clean[key] = number
    return {"schema": SCHEMA, "round": round_num, "site": site, "n": n,
            "time": round(time.time() if now is None else now, 3), "metrics": clean}


def append_rows(path: Path, rows: Iterable[dict]) -> int:
    """Append ``rows`` to the record at ``path``, one ``write`` per line; returns the lines written.

    A file whose last line was torn (no final newline) gets that line ended first.
    """
    lines = [json.dumps(row, allow_nan=False, separators=(",", ":")) + "\n" for row in rows]
    if not lines:
        return 0
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if _torn(path):
            os.write(fd, b"\n")
        for line in lines:
            os.write(fd, line.encode())
    finally:
        os.close(fd)
    return len(lines)


def _torn(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def _row_values(row: Any) -> tuple[tuple[int, str], dict[str, float]] | None:
    if not isinstance(row, dict) or row.get("schema") != SCHEMA or not isinstance(row.get("metrics"), dict):
        return None
    checked = make_row(row.get("round"), row.get("site"), row.get("n"), {}, now=0.0)
    if checked is None:
        return None
    values = {"n": float(checked["n"])}
    for key, value in row["metrics"].items():
        number = math.nan if value is None else _number(value)
        if isinstance(key, str) and _NAME.match(key) and number is not False:
            values[key] = math.nan if number is None else number
    return (checked["round"], checked["site"]), values


def read_rows(lines: Iterable[Any]) -> Rows:
    """``{(round, site): {"n": n, metric: value}}`` from record lines (JSON text or dicts); ``null`` -> NaN.

    Unreadable lines are skipped; a later line for the same (round, site) replaces an earlier one.
    """
    rows: Rows = {}
    for line in lines:
        if isinstance(line, str):
            try:
                line = json.loads(line) if line.strip() else None
            except ValueError:
                continue
        found = _row_values(line)
        if found:
            rows[found[0]] = found[1]
    return rows


def rows_from_stats(stats: Mapping | None) -> Rows:
    """The rows the aggregator published in ``Session.show_stats(job_id, "server")``."""
    group = ((stats or {}).get("server") or {}).get(STATS_GROUP)
    rows = group.get("rows") if isinstance(group, dict) else None
    return read_rows(rows) if isinstance(rows, list) else {}


def rows_from_result(folder: Path) -> Rows:
    """The record in a downloaded job result (``app_server/omnifm_metrics.jsonl``, also inside its zips)."""
    folder = Path(folder)
    for path in sorted(folder.rglob(f"app_server/{RECORD_FILE}")):
        return read_rows(path.read_text(errors="replace").splitlines())
    for archive in sorted(p for p in folder.rglob("*") if p.is_file() and zipfile.is_zipfile(p)):
        with zipfile.ZipFile(archive) as zipped:
            names = sorted(n for n in zipped.namelist() if n.endswith(f"app_server/{RECORD_FILE}"))
            if names:
                return read_rows(zipped.read(names[0]).decode(errors="replace").splitlines())
    return {}


class MetricsRecorder:
    """Writes the record for one server app and keeps its latest lines for ``show_stats``.

    Args:
        max_published: most recent lines kept for :meth:`stats_info`.
    """

    def __init__(self, max_published: int = MAX_PUBLISHED) -> None:
        self.recent: deque[dict] = deque(maxlen=max_published)
        self.written = 0

    def record(self, app_dir: str | Path | None, round_num: int, contributions: Mapping[str, tuple[Any, Mapping]]) -> str | None:
        """Append one line per site of ``contributions`` (``site -> (n, metrics)``); returns a problem or None.

        The lines are kept for ``show_stats`` even when the file cannot be written (no app folder,
        disk full): the problem is returned for the caller to log, the round goes on.
        """
        rows = [row for site in sorted(contributions)
                if (row := make_row(round_num, site, *contributions[site])) is not None]
        self.recent.extend(rows)
        if app_dir is None:
            return f"{RECORD_FILE} not written: the server has no app folder"
        try:
            self.written += append_rows(Path(app_dir) / RECORD_FILE, rows)
        except OSError as err:
            return f"{RECORD_FILE} not written ({err.strerror or type(err).__name__})"
        return None

    def stats_info(self) -> dict:
        """The ``show_stats`` group: the record file's name, lines written, the latest lines."""
        return {"file": RECORD_FILE, "written": self.written, "rows": list(self.recent)}
