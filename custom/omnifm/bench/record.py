"""What a benchmark run writes down: provenance, payload sizes, JSON and CSV files."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnifm.bench.metrics import headline, local_key, metric_names

FP32_BYTES = 4
RUN_FIELDS = ("run", "label", "group", "algorithm", "setting", "seed", "round", "site")
COST_FIELDS = ("bytes_up", "bytes_down", "train_s", "eval_s", "aggregate_s", "round_s")


def payload_bytes(value: Any) -> int:
    """Bytes of ``value`` sent as fp32: 4 per number (tensor/array element, int or float).

    Strings, booleans and ``None`` count 0: the measure is the numeric payload, not a wire format.

    Examples::

        >>> payload_bytes({"w": np.zeros((2, 3)), "meta": [1, 2.5, "x"]})
        32
    """
    if isinstance(value, (bool, str, type(None))):
        return 0
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return int(value.size if isinstance(value, np.ndarray) else value.numel()) * FP32_BYTES
    if isinstance(value, (int, float, np.number)):
        return FP32_BYTES
    if isinstance(value, Mapping):
        return sum(payload_bytes(v) for v in value.values())
    if isinstance(value, Iterable):
        return sum(payload_bytes(v) for v in value)
    raise ValueError(f"cannot size a {type(value).__name__} payload")


def git_info(repo: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding ``repo`` (default: this package)."""
    folder = Path(repo) if repo is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status), "source_sha256": source_digest()}


def source_digest(package: str | Path | None = None) -> str:
    """SHA-256 over the ``omnifm`` package's Python sources (names and bytes): identifies the code
    that ran even when the git tree was dirty."""
    root = Path(package) if package is not None else Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def machine_info() -> dict[str, Any]:
    """Hardware and software the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.is_available(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON via a temporary file and rename (no half-written results)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=True))
    tmp.replace(path)
    return path


def read_runs(folder: str | Path) -> list[dict[str, Any]]:
    """Every run JSON under ``folder/runs`` (sorted by file name).

    Raises:
        ValueError: the folder holds no run JSON.
    """
    paths = sorted((Path(folder) / "runs").glob("*.json"))
    if not paths:
        raise ValueError(f"no run results in {Path(folder) / 'runs'}; run `omnifm-bench --out {folder}` first")
    return [json.loads(p.read_text()) for p in paths]


def csv_rows(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per round and site of a run record (see :func:`omnifm.bench.runner.run_one`): the run's
    metrics (:func:`score_fields`) and costs."""
    cfg = run["config"]
    scores = score_fields(run)
    rows = []
    for rnd in run["rounds"]:
        for site, m in rnd["sites"].items():
            rows.append({
                "run": run["run_id"], "label": cfg["label"], "group": cfg["group"], "algorithm": cfg["algorithm"],
                "setting": cfg["setting"], "seed": cfg["seed"], "round": rnd["round"], "site": site,
                **{k: m.get(k) for k in (*scores, "bytes_up", "bytes_down", "train_s", "eval_s")},
                "aggregate_s": rnd.get("aggregate_s"), "round_s": rnd.get("round_s"),
            })
    return rows


def score_fields(run: Mapping[str, Any]) -> list[str]:
    """The run's metric names (:func:`omnifm.bench.metrics.metric_names`) and its ``<headline>_local``."""
    return [*metric_names(run), local_key(headline(run))]


def csv_fields(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The columns of ``results.csv``: run fields, every run's score fields (first-seen order), costs."""
    scores: dict[str, None] = {}
    for run in runs:
        scores.update(dict.fromkeys(score_fields(run)))
    return [*RUN_FIELDS, *scores, *COST_FIELDS]


def write_csv(path: str | Path, runs: Iterable[Mapping[str, Any]]) -> Path:
    """``results.csv``: :func:`csv_fields` for every round and site of every run."""
    path, runs = Path(path), list(runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=csv_fields(runs), restval="")
        writer.writeheader()
        for run in runs:
            writer.writerows(csv_rows(run))
    return path
