"""``omnifm-bench``: run a benchmark grid in-process, write per-run JSON, results.csv, tables and plots.

Examples::

    omnifm-bench --preset quick                                  # ~1-2 min on 2 CPU cores
    omnifm-bench --preset full --workers 2                       # the documented grid
    omnifm-bench --preset full --algorithms omnifm fedavg --settings same-modality --seeds 0 1 2 --rounds 10
    omnifm-bench report benchmarks/results/full                  # tables + plots again from the JSONs
    omnifm-bench flare-cost --out benchmarks/results/system_cost # FLARE simulator vs in-process, same config
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from omnifm.bench.presets import GROUPS, PRESETS, build_grid, customize, get_preset
from omnifm.bench.record import git_info, machine_info, write_json
from omnifm.bench.report import write_report
from omnifm.bench.runner import RunConfig, run_one
from omnifm.bench.settings import SETTINGS

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "omnifm_bench_cache"


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnifm-bench",
        description="Run the OmniFM benchmark grid in-process on the built-in phantom "
        "(subcommands: `report DIR`, `flare-cost`).",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--algorithms", nargs="+", help="main-group algorithms (default: the preset's)")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, help="data settings (default: the preset's)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the preset's)")
    parser.add_argument("--rounds", type=int, help="federated rounds (default: the preset's)")
    parser.add_argument("--groups", nargs="+", choices=GROUPS, help="main / ablation / sensitivity (default: the preset's)")
    parser.add_argument("--spec-arg", nargs="+", default=[], metavar="KEY=JSON",
                        help="run-spec override for every run, e.g. align_weight=0.5 (added to the labels)")
    parser.add_argument("--bank-arg", nargs="+", default=[], metavar="KEY=JSON",
                        help="knowledge-bank override for every run, e.g. max_size=256 (added to the labels)")
    parser.add_argument("--train-arg", nargs="+", default=[], metavar="KEY=JSON",
                        help="training override for every run, e.g. learning_rate=0.003 (added to the labels)")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/<preset>)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="phantom cache folder")
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--force", action="store_true", help="re-run runs whose JSON already exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``omnifm-bench`` and ``python -m omnifm.bench``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        return _report(argv[1:])
    if argv and argv[0] == "flare-cost":
        from omnifm.bench.flare import main as flare_main

        return flare_main(argv[1:])
    args = _run_parser().parse_args(argv)
    if args.workers < 1 or args.threads < 1:
        raise SystemExit(f"--workers and --threads must be >= 1, got {args.workers} and {args.threads}")
    preset = customize(
        get_preset(args.preset), args.algorithms, args.settings, args.seeds, args.rounds, args.groups,
        _pairs(args.spec_arg), _pairs(args.bank_arg), _pairs(args.train_arg),
    )
    out = args.out or Path("benchmarks/results") / preset.name
    grid = build_grid(preset)
    context = {
        "command": "omnifm-bench " + shlex.join(argv),
        "git": git_info(),
        "machine": {**machine_info(), "torch_threads": args.threads, "workers": args.workers},
    }
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    write_json(out / f"grid-{stamp}.json", {**context, "preset": preset.name, "runs": [r.run_id for r in grid]})
    start = time.perf_counter()
    _run_grid(grid, out, args, context)
    print(f"grid of {len(grid)} runs done in {time.perf_counter() - start:.0f} s", flush=True)
    summary = write_report(out)
    print(summary.read_text())
    print(f"wrote {out / 'results.csv'}, {summary} and plots", flush=True)
    return 0


def _pairs(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=[2, 3]"]`` -> ``{"a": 1, "b": [2, 3]}`` (values are JSON; bare words stay strings)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="omnifm-bench report", description="Tables and plots from a results folder.")
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    try:
        summary = write_report(args.results)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    print(summary.read_text())
    return 0


def _run_grid(grid: list[RunConfig], out: Path, args: argparse.Namespace, context: dict[str, Any]) -> None:
    todo = [cfg for cfg in grid if args.force or not _done(out, cfg)]
    print(f"{len(grid)} runs, {len(grid) - len(todo)} already done, {args.workers} worker(s)", flush=True)
    jobs = [(cfg, str(args.cache), str(out), args.threads, context) for cfg in todo]
    if args.workers == 1:
        for i, job in enumerate(jobs):
            print(_finish_line(i + 1, len(jobs), _work(job)), flush=True)
        return
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for i, line in enumerate(pool.imap_unordered(_work, jobs)):
            print(_finish_line(i + 1, len(jobs), line), flush=True)


def _done(out: Path, cfg: RunConfig) -> bool:
    path = out / "runs" / f"{cfg.run_id}.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text())["config"] == json.loads(json.dumps(cfg.to_dict()))
    except (ValueError, KeyError):
        return False


def _work(job: tuple[RunConfig, str, str, int, dict[str, Any]]) -> str:
    cfg, cache, out, threads, context = job
    torch.set_num_threads(threads)
    record = run_one(cfg, cache, progress=lambda line: print(line, flush=True))
    write_json(Path(out) / "runs" / f"{cfg.run_id}.json", {**context, **record})
    dice = [m["dice"] for m in record["final"].values()]
    return f"{cfg.run_id}: final mean Dice {sum(dice) / len(dice):.3f}, {record['wall_s']:.0f} s"


def _finish_line(i: int, n: int, line: str) -> str:
    return f"== run {i}/{n} done: {line}"


if __name__ == "__main__":
    raise SystemExit(main())
