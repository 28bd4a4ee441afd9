"""Utility-privacy curve of case-level DP-SGD, measured in-process, and the per-step cost of DP-SGD.

Each run is :func:`omnifm.bench.runner.run_one` (the benchmark's round protocol, the one the FLARE
job runs) with the site's DP settings passed through ``RunConfig.train`` (they become
``TrainConfig(dp=...)``). For every algorithm and seed it trains once per target epsilon (sigma
calibrated by the Opacus accountant so the job's rounds spend exactly that budget at the given
delta) and once without DP (epsilon = inf). Reported per run: test Dice (mean over sites, the test
split evaluated once after the last round), the epsilon the accountant says each site spent
(read from the round's diagnostics, i.e. ``RoundResult.diagnostics``), sigma and sampling rate.

Step cost: for each algorithm, the same model and site data, ``--cost-steps`` steps of the plain
path (``train_epoch``, batch = cases_per_step * slices_per_case slices) against the same number
of DP-SGD steps (Poisson case sampling, one backward per case, clipping, noise): median ms/step.

Writes ``<out>/privacy_curve.json`` (all records), ``<out>/privacy_curve.md`` (tables) and
``<out>/privacy_curve.png`` (the curve). Example (what benchmarks/results/privacy/ holds)::

    python benchmarks/privacy_curve.py --seeds 0 1 2 --rounds 5 --out benchmarks/results/privacy

``--data ranking`` runs the curve on the benchmark's ranking setting instead (the ``full``
preset's data: 5 cross-modality sites x 14 cases, 4 of them training cases per site, and its
training: batch 8, 2 local epochs), with ``--lr`` the learning rate the ``full`` preset chose
without DP (benchmarks/results/full_cross_modality/learning_rates.json)::

    python benchmarks/privacy_curve.py --data ranking --lr 0.1 --rounds 12 --out benchmarks/results/privacy_ranking
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnifm.bench.presets import BANK_ARGS, SCARCE, SPEC_ARGS
from omnifm.bench.presets import TRAIN as RANKING_TRAIN
from omnifm.bench.runner import RunConfig, run_one
from omnifm.bench.settings import DataConfig, load_federation
from omnifm.engine import SiteTrainer, TrainConfig
from omnifm.engine.train import train_epoch
from omnifm.tasks.segmentation import SegTask

ALGORITHMS = ("omnifm", "fedavg", "fedper")
EPSILONS = (1.0, 3.0, 8.0, math.inf)
# 3 sites x 16 cases, half for training: 8 training cases per site (delta 1e-5 << 1/8); small enough for a
# 2-core machine shared with other jobs. DP needs cases: the more a site has, the less noise per case.
DATA = DataConfig(sites=3, cases=16, shape=(32, 32, 16), val_fraction=0.25, test_fraction=0.25)
TRAIN: dict[str, Any] = {"local_epochs": 2, "batch_size": 16, "learning_rate": 1e-2}
# --data: the curve's own DP-feasible federation, or the benchmark's ranking setting (the full preset's)
DATASETS: dict[str, tuple[DataConfig, dict[str, Any]]] = {"dp-small": (DATA, dict(TRAIN)), "ranking": (SCARCE, dict(RANKING_TRAIN))}
DP: dict[str, Any] = {"max_grad_norm": 1.0, "delta": 1e-5, "cases_per_step": 4, "slices_per_case": 4, "accountant": "rdp"}


def run_config(algorithm: str, epsilon: float, seed: int, rounds: int, setting: str) -> RunConfig:
    dp = None if math.isinf(epsilon) else {**DP, "target_epsilon": float(epsilon), "noise_seed": 1000 + seed}
    return RunConfig(
        algorithm=algorithm, setting=setting, seed=seed, rounds=rounds, data=DATA,
        train={**TRAIN, "dp": dp}, spec_args=SPEC_ARGS, bank_args=BANK_ARGS, group="privacy",
        label=f"{algorithm} eps={epsilon:g}",
    )


def summarize(record: dict[str, Any], epsilon: float) -> dict[str, Any]:
    """Test Dice (mean over sites) and the accountant's numbers of the last round (max over sites)."""
    test = [site["dice"] for site in record["test"].values()]
    last = record["diagnostics"][-1]["sites"] if record["diagnostics"] else {}
    spent = [s["dp_epsilon"] for s in last.values() if "dp_epsilon" in s]
    return {
        "algorithm": record["config"]["algorithm"],
        "target_epsilon": epsilon,
        "seed": record["config"]["seed"],
        "test_dice": float(np.mean(test)) if test else math.nan,
        "val_dice": float(np.mean([s["dice"] for s in record["final"].values()])),
        "epsilon_spent": max(spent) if spent else math.inf,
        "sigma": max((s["dp_noise_multiplier"] for s in last.values() if "dp_noise_multiplier" in s), default=0.0),
        "sample_rate": max((s["dp_sample_rate"] for s in last.values() if "dp_sample_rate" in s), default=1.0),
        "wall_s": record["wall_s"],
    }


def step_cost(algorithm: str, cache: Path, steps: int, setting: str) -> dict[str, float]:
    """Median ms per step, plain vs DP-SGD, on site-1's data with the same slices per step."""
    spec = RunConfig(algorithm=algorithm, setting=setting, seed=0, rounds=1, data=DATA, spec_args=SPEC_ARGS).spec()
    sites, _ = load_federation(setting, DATA, 0, cache, SegTask.from_dict(spec["task"]))
    data = sites[sorted(sites)[0]]
    per_step = DP["cases_per_step"] * DP["slices_per_case"]
    cpu = torch.device("cpu")
    trainers = {}
    for mode in ("plain", "dp"):
        dp = {**DP, "noise_multiplier": 1.0, "noise_seed": 0} if mode == "dp" else None
        config = TrainConfig(**{**TRAIN, "batch_size": per_step, "local_epochs": 1}, dp=dp)
        trainers[mode] = SiteTrainer(spec, config, data.train, data.val, device=cpu)
    trainers["dp"].dp.steps_per_epoch = 1  # one step per call
    times: dict[str, list[float]] = {"plain": [], "dp": []}
    for i in range(steps + 1):  # interleaved, so a change of the machine's load hits both; step 0 warms up
        for mode, trainer in trainers.items():
            retriever = trainer._retriever(None)
            batch = next(iter(trainer.round_loader(i, 0)))
            t0 = time.perf_counter()
            if mode == "dp":
                gens = (torch.Generator().manual_seed(i), torch.Generator().manual_seed(i + 1))
                trainer.dp.train_epoch(trainer.model, trainer.optimizers["main"], trainer.loss_fn, cpu, retriever, 0.1, gens)
            else:
                train_epoch(trainer.model, [batch], trainer.optimizers["main"], trainer.loss_fn, cpu, retriever, 0.1)
            times[mode].append(1000 * (time.perf_counter() - t0))
    out = {f"{mode}_ms": statistics.median(t[1:]) for mode, t in times.items()}
    out["ratio"] = out["dp_ms"] / out["plain_ms"]
    return out


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def table(rows: list[dict[str, Any]], costs: dict[str, dict[str, float]], command: str) -> str:
    lines = [
        "# Utility-privacy curve (case-level DP-SGD)", "",
        f"Command: `{command}`  ", f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"shared with other jobs; torch {torch.__version__}.  ",
        f"Data: setting `{rows[0]['setting']}`, {DATA.sites} sites x {DATA.cases} phantom cases ({DATA.shape}), "
        f"val {DATA.val_fraction}, test {DATA.test_fraction}; training {TRAIN}; DP {DP}.", "",
        "Test Dice: mean over sites, mean ± sd over seeds. epsilon spent: what the Opacus RDP accountant "
        "reports after the last round (max over sites, at delta = 1e-5); inf = no DP.", "",
        "| algorithm | target eps | eps spent | sigma | q | test Dice | val Dice | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for algorithm in sorted({r["algorithm"] for r in rows}, key=list(ALGORITHMS).index):
        for eps in sorted({r["target_epsilon"] for r in rows}):
            group = [r for r in rows if r["algorithm"] == algorithm and r["target_epsilon"] == eps]
            if not group:
                continue
            spent = max(r["epsilon_spent"] for r in group)
            lines.append(
                f"| {algorithm} | {eps:g} | {spent:.3f} | {group[0]['sigma']:.3f} | {group[0]['sample_rate']:.3f} | "
                f"{_mean_sd([r['test_dice'] for r in group])} | {_mean_sd([r['val_dice'] for r in group])} | {len(group)} |"
            )
    lines += ["", "## Cost of DP-SGD per step", "",
              f"Same model and site data, {DP['cases_per_step']} x {DP['slices_per_case']} = "
              f"{DP['cases_per_step'] * DP['slices_per_case']} slices per plain step vs {DP['cases_per_step']} expected "
              "cases per DP step (one backward per case, clip, noise); median ms/step.", "",
              "| algorithm | plain ms/step | DP ms/step | DP / plain |", "|---|---|---|---|"]
    for algorithm, c in costs.items():
        lines.append(f"| {algorithm} | {c['plain_ms']:.1f} | {c['dp_ms']:.1f} | {c['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = sorted({r["target_epsilon"] for r in rows if math.isfinite(r["target_epsilon"])})
    inf_x = (max(finite) * 30) if finite else 1.0  # far enough right of the last finite tick for its label
    fig, ax = plt.subplots(figsize=(6, 4))
    for algorithm in [a for a in ALGORITHMS if any(r["algorithm"] == a for r in rows)]:
        xs, ys, sds = [], [], []
        for eps in sorted({r["target_epsilon"] for r in rows}):
            group = [r for r in rows if r["algorithm"] == algorithm and r["target_epsilon"] == eps]
            if group:
                spent = max(r["epsilon_spent"] for r in group)
                xs.append(inf_x if math.isinf(spent) else spent)
                dice = [r["test_dice"] for r in group]
                ys.append(statistics.mean(dice))
                sds.append(statistics.stdev(dice) if len(dice) > 1 else 0.0)
        ax.errorbar(xs, ys, yerr=sds, marker="o", capsize=3, label=algorithm)
    ax.set_xscale("log")
    ticks = [*finite, inf_x]
    ax.set_xticks(ticks, [f"{t:g}" if t < 1e4 else f"1e{math.log10(t):.0f}" for t in finite] + ["no DP"])
    ax.minorticks_off()
    ax.set_xlabel("epsilon spent (case level, delta = 1e-5; Opacus RDP)")
    ax.set_ylabel("test Dice (mean over sites)")
    ax.set_title("Utility-privacy curve, DP-SGD at each site")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge(paths: list[Path], out: Path, command: str) -> int:
    """Combine the rows (and step costs) of several runs' JSONs into one table and plot."""
    rows, costs, commands = [], {}, []
    for path in paths:
        part = json.loads(path.read_text())
        rows += part["rows"]
        costs.update(part.get("step_cost") or {})
        commands.append(part.get("command", "?"))
    (out / "privacy_curve.json").write_text(json.dumps(
        {"command": command, "parts": commands, "rows": rows, "step_cost": costs}, default=float))
    (out / "privacy_curve.md").write_text(table(rows, costs, " ; ".join(commands) + f" ; then {command}"))
    plot(rows, out / "privacy_curve.png")
    print((out / "privacy_curve.md").read_text())
    return 0


def _select_data(name: str, lr: float | None) -> None:
    """Point the module's DATA and TRAIN (read by the runs and the table) at ``--data``'s, ``--lr`` on top."""
    global DATA
    DATA, train = DATASETS[name]
    TRAIN.clear()
    TRAIN.update(train)
    if lr is not None:
        if not lr > 0:
            raise SystemExit(f"--lr must be > 0, got {lr}")
        TRAIN["learning_rate"] = lr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--epsilons", nargs="+", type=float, default=list(EPSILONS), help="'inf' = no DP")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--setting", default="cross-modality")
    parser.add_argument("--cost-steps", type=int, default=10, help="0: skip the step-cost measurement")
    parser.add_argument("--local-epochs", type=int, default=None,
                        help=f"local epochs per round (default {TRAIN['local_epochs']}); DP-SGD takes one step per "
                             "Poisson sample of cases_per_step cases, so it needs more epochs for the same number of steps")
    parser.add_argument("--data", choices=sorted(DATASETS), default="dp-small",
                        help="dp-small: 3 sites x 8 training cases (default); ranking: the full preset's 5 sites x 4 training cases")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: the --data setting's training learning rate)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="only combine the privacy_curve.json files of earlier (e.g. parallel) runs into --out")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/privacy"))
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "omnifm_privacy_cache")
    args = parser.parse_args(argv)
    command = "python benchmarks/privacy_curve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    _select_data(args.data, args.lr)
    if args.local_epochs is not None:
        if args.local_epochs < 1:
            parser.error(f"--local-epochs must be >= 1, got {args.local_epochs}")
        TRAIN["local_epochs"] = args.local_epochs  # the runs and the table's setup line read TRAIN
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        return merge(args.merge, args.out, command)
    costs = {a: step_cost(a, args.cache, args.cost_steps, args.setting) for a in args.algorithms if args.cost_steps}
    print(f"step cost: {costs}", flush=True)
    records, rows = [], []
    for seed in args.seeds:  # seed-major: an interrupted run still has every cell of the first seeds
        for algorithm in args.algorithms:
            for eps in args.epsilons:
                record = run_one(run_config(algorithm, eps, seed, args.rounds, args.setting), args.cache)
                row = {**summarize(record, eps), "setting": args.setting}
                print(f"{algorithm} eps={eps:g} seed={seed}: test Dice {row['test_dice']:.3f}, "
                      f"eps spent {row['epsilon_spent']:.3f}, {row['wall_s']:.0f} s", flush=True)
                records.append(record)
                rows.append(row)
                (args.out / "privacy_curve.json").write_text(json.dumps(
                    {"command": command, "rows": rows, "step_cost": costs, "records": records}, default=float))
                (args.out / "privacy_curve.md").write_text(table(rows, costs, command))
                plot(rows, args.out / "privacy_curve.png")
    print((args.out / "privacy_curve.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
