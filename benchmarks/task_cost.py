"""What one simulator client task costs *us* before training starts (issue 13 item 24).

``nvflare simulator`` with ``-t 1`` runs every task of every site in a new client worker process.
This measures, each in a fresh Python process, the parts of that start-up the project owns:

1. ``import omnifm.fl.executor`` (torch, MONAI, nvflare and our package);
2. ``load_site_data`` of a simulated phantom site whose files exist (what rounds 2.. do):
   without the disk cache (NIfTI read + reorientation, integrity gate, normalisation) and with it;
3. building the model and the site trainer from the job's run spec.

    python benchmarks/task_cost.py [--repeats 3] [--cases 24] [--shape 64 64 24]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

PROBE = r"""
import json, sys, time, shutil
from pathlib import Path
t = time.perf_counter()
import omnifm.fl.executor  # noqa: F401
imports = time.perf_counter() - t
from omnifm.data import cache, site
from omnifm.data.site import load_site_data, simulator_config
from omnifm.tasks.segmentation import SegTask
ws, cases, shape, use_cache = Path(sys.argv[1]), int(sys.argv[2]), tuple(map(int, sys.argv[3:6])), sys.argv[6] == "1"
config = simulator_config("site-1", cases, shape, 0.25, 0)
if not use_cache:
    shutil.rmtree(ws / "omnifm_phantom" / "site-1" / cache.CACHE_DIR, ignore_errors=True)
t = time.perf_counter()
data = load_site_data(config, ws, "site-1", SegTask.from_dict(None))
load = time.perf_counter() - t
server = json.loads(Path("jobs/omnifm_seg/app/config/config_fed_server.json").read_text())
args = dict(next(c for c in server["components"] if c["id"] == "persistor")["args"]); args.pop("bank")
args["algorithm"] = server["algorithm"]
from omnifm.algorithms import make_run_spec
from omnifm.engine import SiteTrainer, TrainConfig
t = time.perf_counter()
SiteTrainer(make_run_spec(**args), TrainConfig(), data.train, data.val)
model = time.perf_counter() - t
print(json.dumps({"imports": imports, "load_site_data": load, "model_and_trainer": model}))
"""


def probe(ws: str, cases: int, shape: list[int], use_cache: bool) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, ws, str(cases), *map(str, shape), "1" if use_cache else "0"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 24])
    args = parser.parse_args(argv)
    ws = tempfile.mkdtemp(prefix="omnifm_task_cost_")
    probe(ws, args.cases, args.shape, use_cache=True)  # writes the phantom and the cache (round 1's cost)
    rows = {"no cache": [], "cache": []}
    for _ in range(args.repeats):
        rows["no cache"].append(probe(ws, args.cases, args.shape, use_cache=False))
        probe(ws, args.cases, args.shape, use_cache=True)  # rewrite the cache the uncached run removed
        rows["cache"].append(probe(ws, args.cases, args.shape, use_cache=True))
    for name, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{name:>8}: " + ", ".join(f"{k} {v:.2f} s" for k, v in med.items()) + f" (median of {len(runs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
