"""End-to-end: the DP job (``jobs/omnifm_seg_dp``) through ``nvflare simulator``: epsilon in the site
log every round and in cross_val_results.json; no bank entries leave the sites."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from test_simulator import SITES, _shrink, _simulate  # noqa: E402  (same folder)

JOBS = Path(__file__).resolve().parents[2] / "jobs"


@pytest.mark.slow
def test_dp_job_reports_epsilon_and_uploads_no_bank(tmp_path):
    job = tmp_path / "omnifm_seg_dp"
    shutil.copytree(JOBS / "omnifm_seg_dp", job)
    _shrink(job, "omnifm")
    client_path = job / "app/config/config_fed_client.json"
    client = json.loads(client_path.read_text())
    client["executors"][0]["executor"]["args"]["dp"].update({"cases_per_step": 2, "slices_per_case": 2})
    client_path.write_text(json.dumps(client))
    proc = _simulate(job, tmp_path / "ws")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "rejected contribution" not in log
    assert log.count("DP (unit: case") == 2 * len(SITES), log[-4000:]  # every round, every site
    assert "sigma" in log and "calibrated" in log

    app = tmp_path / "ws/server/simulate_job/app_server"
    bank = torch.load(app / "knowledge_bank.pt", weights_only=True)["bank"]
    assert bank["prototypes"].shape[0] == 0, "DP mode sends no bank entries"
    results = json.loads((tmp_path / "ws/server/simulate_job/cross_site_val/cross_val_results.json").read_text())
    for site in SITES:
        scores = results[site]["SRV_FL_global_model"]
        assert 0 < scores["dp_epsilon"] <= 8.0 and scores["dp_delta"] == 1e-5
        assert math.isfinite(scores["dice"])
