"""int8 compression, measured in-process: bytes on the wire per client and round, and the paired Dice change.

Each run is :func:`omnifm.bench.runner.run_one` (the benchmark's round protocol, the same one the
FLARE job runs), once as it is and once with every weight transfer passed through the job's real
filter pair (:class:`omnifm.fl.quantize.QuantizeWeights` -> FOBS -> :class:`DequantizeWeights`):

- server -> site: the global shared weights a site loads (for training *and* for the evaluation
  after aggregation, as FLARE's ``validate`` task data is quantized too);
- site -> server: the shared weights of the site's round result.

The runner is not rewritten: for the compressed run its ``SiteTrainer`` is swapped for a subclass
whose ``load_global`` / ``train_round`` apply the filters, and its ``_round`` is wrapped to read
the global weights and meta the server sends. The same seed gives the same data, initial model
and data order, so "int8 - fp32" is a paired difference per seed.

Bytes are exact FOBS sizes of the shareables FLARE would send: site -> server is the executor's
DXO (``wire.result_meta`` of the round result + sample count), server -> site the global weights
with the round's real global meta (run spec, knowledge bank, algorithm state, diagnostics),
both with and without the int8 filter. The ratio's denominator is the fp32 shared weights alone
(4 bytes x values). Meta (the bank payload included) is measured as what it is on the wire, not
from its current format, so it stays right when the bank's content changes.

    python benchmarks/compression.py --preset quick --seeds 0 1 2 --algorithms omnifm \\
        --out benchmarks/results/compression.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.decomposers import common_decomposers
from nvflare.fuel.utils import fobs

from omnifm.bench import runner
from omnifm.bench.presets import build_grid, customize, get_preset
from omnifm.bench.record import git_info
from omnifm.fl import wire
from omnifm.fl.quantize import DequantizeWeights, QuantizeWeights, pack_floats

FP32 = 4


class Wire:
    """The filter pair and the byte log of one run."""

    def __init__(self, compress: bool, block_size: int) -> None:
        self.compress = compress
        self.quantize, self.dequantize = QuantizeWeights(block_size), DequantizeWeights()
        self.ctx = FLContext()
        self.log: list[dict[str, Any]] = []
        common_decomposers.register()

    def sizes(self, weights: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, int]:
        """FOBS bytes of a WEIGHTS DXO as sent fp32, as sent int8, and of its meta alone (as fp32 / int8 send it)."""
        shareable = DXO(DataKind.WEIGHTS, data=weights, meta=meta).to_shareable()
        return {"fp32": len(fobs.dumps(shareable)), "int8": len(fobs.dumps(self.quantize.process(shareable, self.ctx))),
                "meta": len(fobs.dumps(DXO(DataKind.WEIGHTS, data={}, meta=meta).to_shareable())),
                "meta_int8": len(fobs.dumps(DXO(DataKind.WEIGHTS, data={}, meta=pack_floats(meta)).to_shareable())),
                "weights_fp32": FP32 * int(sum(v.size for v in weights.values()))}

    def transfer(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``weights`` as the receiver gets them: through the filters and FOBS when compressing, else unchanged."""
        if not self.compress:
            return weights
        numpy = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in weights.items()}
        sent = fobs.loads(fobs.dumps(self.quantize.process(DXO(DataKind.WEIGHTS, data=numpy).to_shareable(), self.ctx)))
        received = from_shareable(self.dequantize.process(sent, self.ctx))
        return {k: torch.as_tensor(v) for k, v in received.data.items()}


def _trainer_class(link: Wire) -> type:
    class WireSiteTrainer(runner.SiteTrainer):  # no __init__: the runner inspects SiteTrainer's signature
        def load_global(self, weights: dict[str, torch.Tensor]) -> None:
            super().load_global(link.transfer(weights))

        def train_round(self, bank, round_num=0, server_extras=None, num_rounds=None):  # noqa: ANN001
            result = super().train_round(bank, round_num, server_extras, num_rounds=num_rounds)
            numpy = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in result.weights.items()}
            meta = {**wire.result_meta(result), MetaKey.NUM_STEPS_CURRENT_ROUND: result.n_samples}
            link.log.append({"direction": "up", "round": round_num, **link.sizes(numpy, meta)})
            return dataclasses.replace(result, weights=link.transfer(result.weights))

    return WireSiteTrainer


@contextlib.contextmanager
def wired(link: Wire) -> Iterator[None]:
    """The runner with its weight transfers going through ``link`` (restored afterwards)."""
    original_round, original_trainer = runner._round, runner.SiteTrainer

    def logged_round(config, spec, trainers, weights, meta, round_num):  # noqa: ANN001
        sizes = link.sizes({k: np.asarray(v, np.float32) for k, v in weights.items()}, meta)
        link.log.append({"direction": "down", "round": round_num, "sites": len(trainers), **sizes})
        return original_round(config, spec, trainers, weights, meta, round_num)

    runner._round, runner.SiteTrainer = logged_round, _trainer_class(link)
    try:
        yield
    finally:
        runner._round, runner.SiteTrainer = original_round, original_trainer


def _mean_dice(record: dict[str, Any], key: str) -> float:
    scores = record.get(key) or {}
    values = [s["dice"] for s in scores.values() if np.isfinite(s.get("dice", np.nan))]
    return float(np.mean(values)) if values else float("nan")


def run_pair(config: runner.RunConfig, cache: Path, block_size: int, repeat: bool = False) -> dict[str, Any]:
    """The same run without and with int8 on the wire (and, with ``repeat``, fp32 again: the noise floor)."""
    out: dict[str, Any] = {"run_id": config.run_id, "algorithm": config.algorithm, "seed": config.seed}
    for name, compress in (("fp32", False), ("int8", True), ("fp32_again", False))[: 3 if repeat else 2]:
        link = Wire(compress, block_size)
        with wired(link):
            record = runner.run_one(dataclasses.replace(config, label=f"{config.label} wire={name}"), cache)
        out[name] = {"val_dice": _mean_dice(record, "final"), "test_dice": _mean_dice(record, "test"),
                     "wall_s": record["wall_s"], "bytes": link.log}
        print(f"[{config.run_id}] {name}: val Dice {out[name]['val_dice']:.4f} test Dice "
              f"{out[name]['test_dice']:.4f} ({record['wall_s']:.0f} s)", flush=True)
    return out


def _ratios(log: list[dict[str, Any]], direction: str) -> dict[str, float]:
    rows = [r for r in log if r["direction"] == direction]
    keys = [k for k in ("fp32", "int8", "meta", "meta_int8") if all(k in r for r in rows)]
    out = {key: statistics.mean(r[key] / r["weights_fp32"] for r in rows) for key in keys}
    return {**out, "int8_max": max(r["int8"] / r["weights_fp32"] for r in rows)}


def summarise(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per algorithm: byte ratios (mean over rounds, sites, seeds) and the paired Dice change (mean, sd, per seed)."""
    out = {}
    for algorithm in sorted({p["algorithm"] for p in pairs}):
        mine = [p for p in pairs if p["algorithm"] == algorithm]
        log = [r for p in mine for r in p["int8"]["bytes"]]
        row: dict[str, Any] = {"seeds": [p["seed"] for p in mine], "up": _ratios(log, "up"), "down": _ratios(log, "down")}
        row["per_round_per_client"] = {k: (row["up"][k] + row["down"][k]) / 2 for k in ("fp32", "int8")}
        for split in ("val_dice", "test_dice"):
            deltas = [p["int8"][split] - p["fp32"][split] for p in mine]
            row[split] = {"fp32": [p["fp32"][split] for p in mine], "int8": [p["int8"][split] for p in mine],
                          "delta": deltas, "delta_mean": statistics.mean(deltas),
                          "delta_sd": statistics.stdev(deltas) if len(deltas) > 1 else float("nan")}
        again = [p for p in mine if "fp32_again" in p]
        row["noise_floor_val_dice"] = [p["fp32_again"]["val_dice"] - p["fp32"]["val_dice"] for p in again]
        out[algorithm] = row
    return out


def table(summary: dict[str, Any]) -> str:
    lines = ["| algorithm | up fp32 / w | up int8 / w | down fp32 / w | down int8 / w (max) | (up+down)/2 int8 / w | "
             "meta down / w (fp32, int8) | val Dice fp32 | val Dice int8 - fp32 (paired, mean +- sd) | "
             "test Dice int8 - fp32 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for algorithm, row in summary.items():
        val, test = row["val_dice"], row["test_dice"]
        lines.append(
            f"| {algorithm} | {row['up']['fp32']:.3f} | {row['up']['int8']:.3f} | {row['down']['fp32']:.3f} | "
            f"{row['down']['int8']:.3f} ({row['down']['int8_max']:.3f}) | {row['per_round_per_client']['int8']:.3f} | "
            f"{row['down']['meta']:.3f}, {row['down'].get('meta_int8', float('nan')):.3f} | "
            f"{statistics.mean(val['fp32']):.4f} | {val['delta_mean']:+.4f} +- {val['delta_sd']:.4f} | "
            f"{test['delta_mean']:+.4f} +- {test['delta_sd']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", help="benchmark preset for data, rounds and training (quick)")
    parser.add_argument("--algorithms", nargs="+", default=["omnifm"], help="federated algorithms (omnifm)")
    parser.add_argument("--setting", default="cross-modality", help="data setting (cross-modality)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (0 1 2)")
    parser.add_argument("--rounds", type=int, help="rounds (default: the preset's)")
    parser.add_argument("--block-size", type=int, default=256, help="values per float32 scale (256, as the job)")
    parser.add_argument("--cache", type=Path, help="phantom cache folder (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="write pairs + summary as JSON here")
    parser.add_argument("--noise-floor", action="store_true",
                        help="run each first-seed fp32 run twice: the Dice difference of two identical runs")
    parser.add_argument("--table-from", type=Path, help="only print the table of a JSON written by --out")
    args = parser.parse_args(argv)
    if args.table_from:
        saved = json.loads(args.table_from.read_text())
        print(f"setup: {json.dumps(saved.get('setup'))}\n")
        print(table(summarise(saved["pairs"])))
        return 0
    preset = customize(get_preset(args.preset), algorithms=args.algorithms, settings=[args.setting],
                       seeds=args.seeds, rounds=args.rounds, groups=["main"])
    grid = build_grid(preset)
    torch.set_num_threads(1)
    start = time.perf_counter()
    pairs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in grid:
            pairs.append(run_pair(config, args.cache or Path(tmp), args.block_size,
                                  args.noise_floor and config.seed == args.seeds[0]))
            _write(args.out, {"pairs": pairs})  # a cut-short run keeps what it measured
    summary = summarise(pairs)
    setup = {"preset": args.preset, "setting": args.setting, "rounds": preset.rounds, "data": preset.data.to_dict(),
             "train": preset.train, "block_size": args.block_size, "python": platform.python_version(),
             "git": git_info(),
             "command": "python benchmarks/compression.py " + " ".join(argv if argv is not None else sys.argv[1:]),
             "wall_s": time.perf_counter() - start}
    print(f"\nsetup: {json.dumps(setup)}\n")
    print("w = fp32 shared weights (4 bytes x values); up/down = FOBS bytes of the shareable FLARE sends\n")
    print(table(summary))
    _write(args.out, {"setup": setup, "summary": summary, "pairs": pairs})
    return 0


def _write(path: Path | None, data: dict[str, Any]) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
