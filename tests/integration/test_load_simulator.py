"""Load: the real job through ``nvflare simulator`` with 16 sites (tiny model and phantom) runs to completion.

Every site trains in the round (one round, for CI time), the bank stays within its cap, every site evaluates the final
model and the end-of-job summary averages all 16. Measured: docs in benchmarks/load.py's output
(``benchmarks/results/load/``); this test took 4 min 45 s on 2 cores under heavy load (load average ~30).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from omnifm.knowledge import KnowledgeBank

sys.path.insert(0, str(Path(__file__).parent))
from test_simulator import simulator_env  # noqa: E402  (same folder)

JOB = Path(__file__).resolve().parents[2] / "jobs" / "omnifm_seg"
N_SITES = 16
SITES = [f"site-{i + 1}" for i in range(N_SITES)]
ROUNDS = 1  # one round is enough to show 16 sites train, upload and evaluate (CI time)


def _shrink(job: Path) -> None:
    meta = json.loads((job / "meta.json").read_text())
    meta.update({"deploy_map": {"app": ["server", *SITES]}, "min_clients": N_SITES})
    (job / "meta.json").write_text(json.dumps(meta))
    server_path = job / "app/config/config_fed_server.json"
    server = json.loads(server_path.read_text())
    server.update({"num_rounds": ROUNDS, "min_clients": N_SITES})
    persistor = next(c for c in server["components"] if c["id"] == "persistor")
    persistor["args"]["model"].update({"channels": [8, 8, 16, 16]})
    server_path.write_text(json.dumps(server))
    client_path = job / "app/config/config_fed_client.json"
    client = json.loads(client_path.read_text())
    client["executors"][0]["executor"]["args"].update(
        {"local_epochs": 1, "batch_size": 8, "phantom_cases": 4, "phantom_shape": [32, 32, 8]}
    )
    client_path.write_text(json.dumps(client))


@pytest.mark.slow
def test_sixteen_sites_run_to_completion(tmp_path):
    job = tmp_path / "omnifm_seg"
    shutil.copytree(JOB, job)
    _shrink(job)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(tmp_path / "ws"),
           "-n", str(N_SITES), "-t", str(N_SITES)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200, env=simulator_env(N_SITES))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    run = tmp_path / "ws" / "server" / "simulate_job"
    results = json.loads((run / "cross_site_val" / "cross_val_results.json").read_text())
    assert sorted(results) == sorted(SITES)
    dice = {s: results[s]["SRV_FL_global_model"]["dice"] for s in SITES}
    # Dice is NaN when a site's one validation case has no tumour (documented); never out of range
    assert all(math.isnan(d) or 0.0 <= d <= 1.0 for d in dice.values()), dice
    assert sum(math.isfinite(d) for d in dice.values()) >= N_SITES // 2, dice
    for r in range(ROUNDS):
        trained = set(re.findall(rf"round {r} (site-\d+): received model", log))
        assert trained == set(SITES), f"round {r}: {sorted(set(SITES) - trained)} did not train"
    bank_file = torch.load(run / "app_server" / "knowledge_bank.pt", weights_only=True)
    bank = KnowledgeBank.from_state_dict(bank_file["bank"])
    cap = next(c for c in json.loads((job / "app/config/config_fed_server.json").read_text())["components"]
               if c["id"] == "persistor")["args"]["bank"]["max_size"]
    assert 0 < len(bank) <= cap
    (summary,) = [line for line in log.splitlines() if "job summary:" in line]
    assert all(f"{s} " in summary for s in SITES), summary
    assert "rejected contribution" not in log
    print(f"16-site simulator job: {time.perf_counter() - start:.0f} s, bank {len(bank)} entries")
