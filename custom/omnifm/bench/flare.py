"""The same configuration through ``nvflare simulator`` and in-process: parity and system cost.

:func:`prepare_job` copies the shipped job (``jobs/omnifm_seg``) and shrinks it the way the
simulator tests do (same components; fewer sites, rounds, epochs and voxels); :func:`run_simulator`
runs it in a subprocess (this module never imports nvflare); :func:`inprocess_config` builds the
:class:`~omnifm.bench.runner.RunConfig` that runs the identical spec, site settings and phantom
in-process. ``omnifm-bench flare-cost`` runs both and writes the ratios: FLARE round wall time vs
the in-process round, bytes per round vs the fp32 shared weights, retrieval vs training step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from omnifm.algorithms import build_model, initial_global
from omnifm.algorithms.server import CONTROL_PREFIX
from omnifm.algorithms.spec import job_persistor_args
from omnifm.bench.record import git_info, machine_info, write_json
from omnifm.bench.runner import RunConfig, run_one
from omnifm.bench.settings import DataConfig, site_names
from omnifm.bench.subcommands import SEG_JOB, flare_cost_parser

JOB = SEG_JOB
SERVER_CONFIG = "app/config/config_fed_server.json"
CLIENT_CONFIG = "app/config/config_fed_client.json"
TRAIN_KEYS = ("local_epochs", "batch_size", "learning_rate", "keep_empty_fraction", "min_prototype_count")
_ROUND = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}).*Round (\d+) (started|finished)\.")


def _edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=1))


def prepare_job(
    dest: str | Path, algorithm: str, sites: int, rounds: int, local_epochs: int, cases: int,
    shape: tuple[int, int, int], job: str | Path = JOB,
) -> Path:
    """Copy ``job`` to ``dest`` with the given algorithm, sites, rounds, epochs and phantom size.

    Raises:
        ValueError: ``job`` is not a job folder (no server config).
    """
    job, dest = Path(job), Path(dest)
    if not (job / SERVER_CONFIG).is_file():
        raise ValueError(f"{job} has no {SERVER_CONFIG}; pass the omnifm_seg job folder")
    shutil.copytree(job, dest)
    names = site_names(sites)
    _edit_json(dest / "meta.json", lambda m: m.update({"deploy_map": {"app": ["server", *names]}, "min_clients": sites}))
    _edit_json(dest / SERVER_CONFIG, lambda s: s.update({"num_rounds": rounds, "min_clients": sites, "algorithm": algorithm}))
    executor_args = {"local_epochs": local_epochs, "phantom_cases": cases, "phantom_shape": list(shape)}
    _edit_json(dest / CLIENT_CONFIG, lambda c: c["executors"][0]["executor"]["args"].update(executor_args))
    return dest


def run_simulator(
    job: str | Path, workspace: str | Path, timeout: float = 1800, threads: int | None = None
) -> tuple[int, str, float]:
    """``python -m nvflare.cli simulator job -w workspace [-t threads]``: (return code, stdout+stderr, seconds).

    Without ``threads`` the simulator runs one client at a time and starts a fresh worker process
    for every task; with ``threads`` equal to the number of sites every client process stays alive.
    """
    job = Path(job)
    cmd = [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(workspace)]
    cmd += ["-t", str(threads)] if threads else []
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=job.parent, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start


def final_dice(workspace: str | Path) -> dict[str, dict[str, float]]:
    """Per site, the ``GlobalModelEval`` scores of the final global model (``cross_val_results.json``).

    Raises:
        ValueError: the results file is missing (the job failed or did not reach evaluation).
    """
    path = Path(workspace) / "server/simulate_job/cross_site_val/cross_val_results.json"
    if not path.is_file():
        raise ValueError(f"no {path}; the simulator run did not finish its final evaluation (see its log)")
    results = json.loads(path.read_text())
    return {site: scores["SRV_FL_global_model"] for site, scores in results.items()}


def round_times(log: str) -> list[float]:
    """Seconds from ``Round N started.`` to ``Round N finished.`` (ScatterAndGather's log lines)."""
    started: dict[int, datetime] = {}
    times: dict[int, float] = {}
    for line in log.splitlines():
        match = _ROUND.match(line)
        if not match:
            continue
        stamp, number, event = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f"), int(match[2]), match[3]
        if event == "started":
            started[number] = stamp
        elif number in started:
            times[number] = (stamp - started[number]).total_seconds()
    return [times[k] for k in sorted(times)]


def inprocess_config(job: str | Path, seed: int = 0, group: str = "parity") -> RunConfig:
    """The in-process run of a (prepared) job: its persistor spec, executor settings and phantom.

    Raises:
        ValueError: the job sets executor or persistor arguments the in-process run cannot mirror
            (a ``seed`` different from ``seed``, another ``val_fraction``), naming them.
    """
    job = Path(job)
    server, persistor = job_persistor_args(job)
    client = json.loads((job / CLIENT_CONFIG).read_text())
    executor = client["executors"][0]["executor"]["args"]
    mismatched = [k for k, v in (("seed", persistor.get("seed", 0)), ("executor seed", executor.get("seed", 0))) if v != seed]
    if executor.get("val_fraction", 0.25) != 0.25:
        mismatched.append("val_fraction")
    if mismatched:
        raise ValueError(f"job {job} sets {mismatched}; the in-process mirror assumes seed {seed} and val_fraction 0.25")
    spec_args = {k: v for k, v in persistor.items() if k not in ("algorithm", "seed", "bank", "source_dir")}
    shape = tuple(executor.get("phantom_shape", (64, 64, 24)))
    data = DataConfig(sites=len(json.loads((job / "meta.json").read_text())["deploy_map"]["app"]) - 1,
                      cases=executor.get("phantom_cases", 20), shape=shape, val_fraction=0.25,
                      test_fraction=0.0, min_cases=2)  # the FLARE job's simulated sites have no test split
    return RunConfig(
        persistor["algorithm"], "cross-modality", seed, server["num_rounds"], data,
        {k: executor[k] for k in TRAIN_KEYS if k in executor}, spec_args, persistor.get("bank") or {}, group,
    )


def compare(job: Path, workspace: Path, cache: Path, threads: int | None = None) -> dict[str, Any]:
    """Run ``job`` through the simulator and in-process; the record holds both and the ratios."""
    code, log, flare_s = run_simulator(job, workspace, threads=threads)
    (workspace / "simulator.log").write_text(log)
    if code != 0:
        raise RuntimeError(f"nvflare simulator failed (exit {code}); log: {workspace / 'simulator.log'}")
    flare_rounds, flare_final = round_times(log), final_dice(workspace)
    config = inprocess_config(job)
    record = run_one(config, cache)
    inproc_rounds = [r["round_s"] for r in record["rounds"]]
    cells = [m for r in record["rounds"] for m in r["sites"].values()]
    shared = record["rounds"][0]["sites"]["site-1"]["bytes_down"]
    return {
        "config": config.to_dict(),
        "flare": {"wall_s": flare_s, "round_s": flare_rounds, "final": flare_final, "simulator_threads": threads},
        "inprocess": {"wall_s": record["wall_s"], "round_s": inproc_rounds, "final": record["final"]},
        "ratios": _ratios(flare_rounds, inproc_rounds, cells, shared, record),
        "max_abs_dice_diff": max(abs(flare_final[s]["dice"] - record["final"][s]["dice"]) for s in record["final"]),
    }


def _ratios(flare_rounds: list[float], inproc_rounds: list[float], cells: list[dict], shared: float, record: dict) -> dict:
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    weights_bytes = 4 * sum(v for v in _shared_sizes(record).values())
    retrieval = [m["retrieval_ms"] for m in cells if "retrieval_ms" in m]
    return {
        "flare_round_over_inprocess_round": mean(flare_rounds) / mean(inproc_rounds),
        "bytes_up_over_fp32_shared_weights": mean([m["bytes_up"] for m in cells]) / weights_bytes,
        "bytes_down_over_fp32_shared_weights": mean([m["bytes_down"] for m in cells]) / weights_bytes,
        "retrieval_over_train_step": mean(retrieval) / mean([m["step_ms"] for m in cells]) if retrieval else None,
        "fp32_shared_weights_bytes": weights_bytes,
        "fp32_full_model_bytes": 4 * sum(p.numel() for p in build_model(record["spec"]).parameters()),
        "down_bytes_round0": shared,
    }


def _shared_sizes(record: dict) -> dict[str, int]:
    """Elements of the shared model weights (SCAFFOLD's control variates excluded)."""
    weights, _ = initial_global(record["spec"], {})
    return {k: int(v.size) for k, v in weights.items() if not k.startswith(CONTROL_PREFIX)}


def main(argv: list[str] | None = None) -> int:
    """``omnifm-bench flare-cost``: one shrunk job through FLARE and in-process; writes ``system_cost.json``."""
    args = flare_cost_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="omnifm_flare_cost_") as tmp:
        job = prepare_job(Path(tmp) / "omnifm_seg", args.algorithm, args.sites, args.rounds, args.local_epochs,
                          args.cases, tuple(args.shape), args.job)
        result = compare(job, Path(tmp) / "ws", Path(tmp) / "cache", args.threads)
    context = {"command": "omnifm-bench flare-cost " + " ".join(argv or sys.argv[2:]), "git": git_info(), "machine": machine_info()}
    path = write_json(args.out / "system_cost.json", {**context, **result})
    print(json.dumps(result["ratios"], indent=1))
    print(f"max |Dice FLARE - in-process| over sites: {result['max_abs_dice_diff']:.2e}; wrote {path}")
    return 0
