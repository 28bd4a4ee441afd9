"""End-to-end: the classification job with per-case labels through ``nvflare simulator`` on the phantom.

A copy of ``jobs/omnifm_cls`` with ``labels: "case"`` and the phantom's hemisphere classes, shrunk to
2 sites x 1 round x 1 epoch on 4 tiny cases: the phantom writes its class datalist, the FL client's
integrity gate passes the classes to the cases, and each site is scored per case.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

JOB = Path(__file__).resolve().parents[2] / "jobs" / "omnifm_cls"
SITES = ["site-1", "site-2"]
TASK = {"kind": "classification", "labels": "case", "classes": ["no_tumour", "right", "left"], "mirror": False}


def _case_mode_job(job: Path) -> None:
    meta = json.loads((job / "meta.json").read_text())
    meta["deploy_map"] = {"app": ["server", *SITES]}
    (job / "meta.json").write_text(json.dumps(meta))
    server_path = job / "app/config/config_fed_server.json"
    server = json.loads(server_path.read_text())
    server.update({"num_rounds": 1, "min_clients": len(SITES)})
    next(c for c in server["components"] if c["id"] == "persistor")["args"]["task"] = TASK
    server_path.write_text(json.dumps(server))
    client_path = job / "app/config/config_fed_client.json"
    client = json.loads(client_path.read_text())
    client["executors"][0]["executor"]["args"].update({"local_epochs": 1, "phantom_cases": 4, "phantom_shape": [24, 24, 8]})
    client_path.write_text(json.dumps(client))


@pytest.mark.slow
def test_case_label_job_runs_and_scores_per_case(tmp_path: Path):
    job = tmp_path / JOB.name
    shutil.copytree(JOB, job)
    _case_mode_job(job)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(tmp_path / "ws"), "-t", str(len(SITES))]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    results = json.loads((tmp_path / "ws/server/simulate_job/cross_site_val/cross_val_results.json").read_text())
    for site in SITES:
        assert 0.0 <= results[site]["SRV_FL_global_model"]["accuracy"] <= 1.0
        data_line = next(line for line in log.splitlines() if f"{site} data (" in line)
        assert "cases per class: no_tumour" in data_line, data_line  # the hemisphere classes reached the site
    assert "scored per case" in log
