"""Server load: aggregation + bank update per round and server memory against the number of sites,
and server memory across a long job.

    python benchmarks/load.py --sites 3 8 16 32 64 --rounds 5 --long-rounds 50 --out benchmarks/results/load

What runs is the server's core (:func:`omnifm.algorithms.server_round`: validation of the uploads,
the sample-weighted mean, the knowledge-bank merge/insert/prune/cap, the diagnostics) on the
shipped job's model (``jobs/omnifm_seg``'s persistor args, ``omnifm``), with uploads shaped like a
site's: every shared tensor perturbed from the global one, ``num_prototypes`` unit-norm spectral
prototypes per site with class-conditional values and member counts, retrieval counts for the
current bank's entries. Sites have distinct prototype directions, so the bank sees as many new
entries as a heterogeneous federation would (the worst case for its size). Nothing trains: the
sites' cost is measured by ``omnifm-bench``; this isolates the server's.

Memory is the process's resident set (``/proc/self/status`` VmRSS, and its peak VmHWM) after each
round, with the global weights, meta and bank carried from round to round as the FLARE persistor
and shareable generator carry them. Every configuration runs in a fresh Python process (so one
configuration's allocations do not hide another's). Writes ``load.json`` and prints two tables.

``--train-sites 8 16 32 64`` adds the whole federation trained in-process (the benchmark's
runner, :func:`omnifm.bench.runner.run_one`: ``omnifm`` with the quick preset's model, bank and
training settings, one local epoch, the cross-modality phantom at ``--train-cases`` cases of
``--train-shape`` per site): per round the wall time (every site trains and is evaluated, one
after another), the server's aggregation + bank update (``aggregate_s``), the bank size, and the
process's peak resident set. Each site count runs in a fresh process.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnifm.algorithms import initial_global, server_round
from omnifm.algorithms.server import Upload
from omnifm.knowledge import KnowledgeBank

JOB = Path(__file__).resolve().parents[1] / "jobs" / "omnifm_seg" / "app" / "config" / "config_fed_server.json"


def job_spec() -> tuple[dict[str, Any], dict[str, Any]]:
    """The shipped job's run spec and bank args (from the persistor's args)."""
    from omnifm.algorithms import make_run_spec
    from omnifm.algorithms.spec import job_persistor_args

    _, args = job_persistor_args(JOB.parents[2])
    bank = args.pop("bank")
    return make_run_spec(**args), bank


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set of this process in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def make_uploads(global_w: dict[str, np.ndarray], meta: dict, n_sites: int, spec: dict, rnd: int,
                 rng: np.random.Generator) -> list[Upload]:
    """One round's uploads of ``n_sites`` sites (see the module docstring)."""
    bank = KnowledgeBank.from_plain(meta["omnifm_bank"]) if meta.get("omnifm_bank") else None
    dim = bank.dim if bank is not None else 32
    value_dim = bank.value_dim if bank is not None else 0
    ids = [int(i) for i in bank.ids] if bank is not None and len(bank) else []
    uploads = []
    for s in range(n_sites):
        weights = {k: (v + rng.normal(0, 1e-3, v.shape)).astype(np.float32) for k, v in global_w.items()}
        site_dir = np.random.default_rng(1000 + s).normal(size=dim)  # each site its own region of token space
        protos = site_dir + 0.3 * rng.normal(size=(spec["num_prototypes"], dim))
        protos = torch.tensor(protos / np.linalg.norm(protos, axis=1, keepdims=True), dtype=torch.float32)
        values = torch.tensor(rng.normal(size=(spec["num_prototypes"], value_dim)), dtype=torch.float32)
        retrievals = {i: int(rng.integers(0, 50)) for i in ids[: 2 * spec["top_k"]]}
        uploads.append(Upload(weights=weights, n_samples=int(rng.integers(100, 400)), prototypes=protos,
                              retrievals=retrievals, site=f"site-{s + 1:03d}", values=values,
                              counts=torch.full((spec["num_prototypes"],), 9.0)))
    return uploads


def run(n_sites: int, rounds: int, seed: int = 0) -> dict[str, Any]:
    """``rounds`` server rounds with ``n_sites`` uploads each: seconds per round, bank size, RSS after each."""
    spec, bank_args = job_spec()
    weights, meta = initial_global(spec, bank_args)
    rng = np.random.default_rng(seed)
    seconds, sizes, rss = [], [], []
    for r in range(rounds):
        uploads = make_uploads(weights, meta, n_sites, spec, r, rng)
        start = time.perf_counter()
        weights, meta = server_round(spec, weights, meta, uploads)
        seconds.append(time.perf_counter() - start)
        del uploads
        gc.collect()
        sizes.append(len(KnowledgeBank.from_plain(meta["omnifm_bank"])) if meta.get("omnifm_bank") else 0)
        rss.append(rss_mb()[0])
    return {"sites": n_sites, "rounds": rounds, "seconds": seconds, "bank_size": sizes, "rss_mb": rss,
            "shared_values": int(sum(v.size for v in weights.values())), "bank_cap": bank_args.get("max_size")}


def isolated(n_sites: int, rounds: int) -> dict[str, Any]:
    """:func:`run` in a fresh Python process."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, __file__, "--one", str(n_sites), str(rounds)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def train(n_sites: int, rounds: int, cases: int, shape: list[int], cache: Path) -> dict[str, Any]:
    """The federation of ``n_sites`` trained in-process for ``rounds`` rounds (module docstring)."""
    from omnifm.bench.presets import BANK_ARGS, SPEC_ARGS, TRAIN
    from omnifm.bench.runner import RunConfig, run_one
    from omnifm.bench.settings import DataConfig

    config = RunConfig("omnifm", "cross-modality", 0, rounds, DataConfig(sites=n_sites, cases=cases, shape=tuple(shape)),
                       {**TRAIN, "local_epochs": 1}, SPEC_ARGS, BANK_ARGS)
    record = run_one(config, cache)
    per_round = record["rounds"]
    return {"sites": n_sites, "rounds": rounds, "cases": cases, "shape": list(shape), "data_s": record["data_s"],
            "round_s": [r["round_s"] for r in per_round], "aggregate_s": [r["aggregate_s"] for r in per_round],
            "bank_size": [r["bank_size"] for r in per_round], "wall_s": record["wall_s"]}


def isolated_train(n_sites: int, rounds: int, cases: int, shape: list[int], cache: Path) -> dict[str, Any]:
    """:func:`train` in a fresh Python process."""
    import subprocess

    cmd = [sys.executable, __file__, "--train-one", str(n_sites), str(rounds), "--train-cases", str(cases),
           "--train-shape", *map(str, shape), "--train-cache", str(cache)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the {n_sites}-site training run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _train_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'sites':>5} {'s/round':>8} {'s/site/round':>12} {'aggregate ms':>12} {'bank (last)':>11} {'peak MiB':>8}"
          f" {'data s':>7}   (median of rounds 2..; in-process training, one site after another)")
    for row in rows:
        later = slice(1, None) if len(row["round_s"]) > 1 else slice(None)
        round_s = statistics.median(row["round_s"][later])
        print(f"{row['sites']:>5} {round_s:>8.2f} {round_s / row['sites']:>12.3f} "
              f"{1000 * statistics.median(row['aggregate_s'][later]):>12.1f} {row['bank_size'][-1]:>11} "
              f"{row['peak_rss_mb']:>8.0f} {row['data_s']:>7.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", nargs=2, type=int, metavar=("SITES", "ROUNDS"), help=argparse.SUPPRESS)
    parser.add_argument("--sites", nargs="*", type=int, default=[3, 8, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per site count (the first is reported apart)")
    parser.add_argument("--long-rounds", type=int, default=50, help="rounds of the memory run (0: skip)")
    parser.add_argument("--long-sites", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="folder for load.json (default: print only)")
    parser.add_argument("--train-sites", nargs="*", type=int, default=[],
                        help="also train the federation in-process at these site counts (e.g. 8 16 32 64)")
    parser.add_argument("--train-rounds", type=int, default=3)
    parser.add_argument("--train-cases", type=int, default=4, help="phantom cases per site of the training runs")
    parser.add_argument("--train-shape", nargs=3, type=int, default=[32, 32, 8])
    parser.add_argument("--train-cache", type=Path, default=Path("/tmp/omnifm_load_cache"), help="phantom cache folder")
    parser.add_argument("--train-one", nargs=2, type=int, metavar=("SITES", "ROUNDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.one:
        print(json.dumps({**run(*args.one), "peak_rss_mb": rss_mb()[1]}))
        return 0
    if args.train_one:
        row = train(*args.train_one, args.train_cases, args.train_shape, args.train_cache)
        print(json.dumps({**row, "peak_rss_mb": rss_mb()[1]}))
        return 0
    if min([*args.sites, *args.train_sites], default=1) < 1 or args.train_rounds < 1:
        raise SystemExit("site counts and --train-rounds must be >= 1")
    rows = [isolated(n, args.rounds) for n in args.sites]
    print(f"{'sites':>5} {'s/round (median of rounds 2..)':>31} {'bank size (last)':>16} {'RSS MiB (last)':>14} "
          f"{'peak MiB':>8}")
    for row in rows:
        later = row["seconds"][1:] or row["seconds"]
        print(f"{row['sites']:>5} {statistics.median(later):>31.4f} {row['bank_size'][-1]:>16} {row['rss_mb'][-1]:>14.0f} "
              f"{row['peak_rss_mb']:>8.0f}")
    long = isolated(args.long_sites, args.long_rounds) if args.long_rounds else None
    if long:
        rss = long["rss_mb"]
        print(f"{args.long_rounds} rounds x {args.long_sites} sites: RSS after round 1 {rss[0]:.0f} MiB, round 10 "
              f"{rss[min(9, len(rss) - 1)]:.0f}, last {rss[-1]:.0f} (growth rounds 10..last "
              f"{rss[-1] - rss[min(9, len(rss) - 1)]:+.0f} MiB); bank size max {max(long['bank_size'])} "
              f"(cap {long['bank_cap']}); s/round median {statistics.median(long['seconds']):.4f}")
    trained = []
    for n in args.train_sites:
        print(f"training {n} sites in-process ({args.train_rounds} rounds) ...", flush=True)
        trained.append(isolated_train(n, args.train_rounds, args.train_cases, args.train_shape, args.train_cache))
    if trained:
        _train_table(trained)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "load.json").write_text(json.dumps(
            {"command": "python benchmarks/load.py " + " ".join(sys.argv[1:] if argv is None else argv), "machine": platform.platform(),
             "per_site_count": rows, "long": long, "trained": trained}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
