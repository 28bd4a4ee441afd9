"""``omnifm-bench``: run a benchmark grid in-process, write per-run JSON, results.csv, tables and plots.

Examples::

    omnifm-bench --preset quick                                  # a few minutes on 2 CPU cores
    omnifm-bench --preset full --workers 2                       # the documented grid (LR tuning, then reporting)
    omnifm-bench --preset cls-quick --out my-cls                 # classification: class skew x participation
    omnifm-bench --preset fedunetmm-quick --workers 2            # FedUNetMM vs the FLAIR-only UNet, same cases
    omnifm-bench --preset quick --participation 0.5              # half the sites train each round
    omnifm-bench --preset full --algorithms omnifm fedper --seeds 0 1 2 --rounds 10 --out my-results
    omnifm-bench report my-results                               # tables + plots again from the JSONs
    omnifm-bench premise --out premise                           # low-frequency consistency on the phantom
    omnifm-bench contrast --out contrast                         # tumour contrast (AUC) per modality and region
    omnifm-bench flare-cost --out benchmarks/results/system_cost # FLARE simulator vs in-process, same config

Results go to a fresh folder ``./omnifm-bench-results/<preset>-<UTC time>`` unless ``--out`` names
one (an existing folder resumes: runs whose JSON matches their config are not run again). The
committed ``benchmarks/results/`` changes only when ``--out`` points there on purpose.
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
from typing import TYPE_CHECKING, Any

from omnifm.bench.names import GROUPS, PRESET_NAMES, SETTINGS
from omnifm.bench.subcommands import PARSERS
from omnifm.tools._cli import pipe_safe

if TYPE_CHECKING:  # the stack (torch, MONAI, the data layer) is imported after argument parsing
    from omnifm.bench.presets import Preset
    from omnifm.bench.runner import RunConfig

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "omnifm_bench_cache"
DEFAULT_OUT = Path("omnifm-bench-results")
LEARNING_RATES = "learning_rates.json"


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnifm-bench",
        description="Run the OmniFM benchmark grid in-process on the built-in phantom "
        "(subcommands: `report DIR`, `premise`, `contrast`, `flare-cost`).",
    )
    parser.add_argument("--preset", choices=PRESET_NAMES, default="quick")
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
    parser.add_argument("--data-arg", nargs="+", default=[], metavar="KEY=JSON",
                        help="federation size override, e.g. sites=3 cases=8 shape=[32,32,16] (DataConfig fields)")
    parser.add_argument("--lr-grid", nargs="*", type=float, metavar="LR",
                        help="learning rates tuned per algorithm on the tuning seeds (default: the preset's; none: no tuning)")
    parser.add_argument("--tuning-seeds", nargs="+", type=int, help="seeds of the tuning runs (default: the preset's)")
    parser.add_argument("--participation", nargs="+", type=float, metavar="FRACTION",
                        help="share of sites sampled to train each round, e.g. 0.5 or 1 0.5 0.2 (main group; "
                        "default: the preset's, 1 for the segmentation presets)")
    parser.add_argument("--out", type=Path,
                        help=f"results folder (default: a fresh ./{DEFAULT_OUT}/<preset>-<UTC time>; an existing one resumes)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"phantom cache folder, reused across runs (default: {DEFAULT_CACHE})")
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--force", action="store_true", help="re-run runs whose JSON already exists")
    return parser


@pipe_safe
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``omnifm-bench`` and ``python -m omnifm.bench``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        return _report(argv[1:])
    if argv and argv[0] in PARSERS:  # --help and bad arguments answer before the subcommand's heavy imports
        PARSERS[argv[0]]().parse_args(argv[1:])
    if argv and argv[0] == "contrast":
        from omnifm.bench.contrast import main as contrast_main

        return contrast_main(argv[1:])
    if argv and argv[0] == "premise":
        from omnifm.bench.premise import main as premise_main

        return premise_main(argv[1:])
    if argv and argv[0] == "flare-cost":
        from omnifm.bench.flare import main as flare_main

        return flare_main(argv[1:])
    args = _run_parser().parse_args(argv)
    if args.workers < 1 or args.threads < 1:
        raise SystemExit(f"--workers and --threads must be >= 1, got {args.workers} and {args.threads}")
    from omnifm.bench.presets import build_grid, customize, get_preset
    from omnifm.bench.record import git_info, machine_info, write_json
    from omnifm.bench.report import write_report

    try:
        preset = customize(
            get_preset(args.preset), args.algorithms, args.settings, args.seeds, args.rounds, args.groups,
            _pairs(args.spec_arg), _pairs(args.bank_arg), _pairs(args.train_arg), args.lr_grid, args.tuning_seeds,
            _pairs(args.data_arg), args.participation,
        )
    except ValueError as err:
        raise SystemExit(str(err)) from None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or DEFAULT_OUT / f"{preset.name}-{stamp}"
    context = {
        "command": "omnifm-bench " + shlex.join(argv),
        "git": git_info(),
        "machine": {**machine_info(), "torch_threads": args.threads, "workers": args.workers},
    }
    print(f"results -> {out}", flush=True)
    start = time.perf_counter()
    rates = _tune(preset, out, args, context)
    grid = build_grid(preset, rates)
    write_json(out / f"grid-{stamp}.json", {**context, "preset": preset.name, "learning_rates": rates,
                                            "runs": [r.run_id for r in grid]})
    _run_grid(grid, out, args, context)
    print(f"{len(grid)} reporting runs done, {time.perf_counter() - start:.0f} s in all", flush=True)
    summary = write_report(out, preset.last_k)
    print(summary.read_text())
    print(f"wrote {out / 'results.csv'} and {summary}", flush=True)
    return 0


def _tune(preset: Preset, out: Path, args: argparse.Namespace, context: dict[str, Any]) -> dict[str, float]:
    """Run the tuning grid (if the preset has one) and pick each algorithm's learning rate on validation."""
    from omnifm.bench.presets import tuning_grid
    from omnifm.bench.record import read_runs, write_json
    from omnifm.bench.tune import select_learning_rates

    grid = tuning_grid(preset)
    if not grid:
        return {}
    print(f"tuning: {len(grid)} runs (learning rates {list(preset.lr_grid)}, seeds {list(preset.tuning_seeds)})", flush=True)
    _run_grid(grid, out, args, context)
    wanted = {r.run_id for r in grid}
    runs = [r for r in read_runs(out) if r["run_id"] in wanted]
    rates = select_learning_rates(runs, preset.last_k)
    write_json(out / LEARNING_RATES, {"last_k": preset.last_k, "learning_rates": rates})
    print("learning rates chosen on validation: " + ", ".join(f"{a} {lr:g}" for a, lr in rates.items()), flush=True)
    return rates


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
    from omnifm.bench.report import write_report

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
    import torch

    from omnifm.bench.record import write_json
    from omnifm.bench.runner import run_one

    cfg, cache, out, threads, context = job
    torch.set_num_threads(threads)
    record = run_one(cfg, cache, progress=lambda line: print(line, flush=True))
    write_json(Path(out) / "runs" / f"{cfg.run_id}.json", {**context, **record})
    head = record["task"]["headline"]
    values = [m[head] for m in record["final"].values()]
    return f"{cfg.run_id}: final mean {head} {sum(values) / len(values):.3f}, {record['wall_s']:.0f} s"


def _finish_line(i: int, n: int, line: str) -> str:
    return f"== run {i}/{n} done: {line}"


if __name__ == "__main__":
    raise SystemExit(main())
