"""End-to-end: the HE job (CKKS-encrypted weights) through ``nvflare simulator`` on a tiny phantom."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("tenseal")

from omnifm.fl.he_persistor import ENCRYPTED_MODEL_FILE  # noqa: E402
from omnifm.knowledge import KnowledgeBank  # noqa: E402

JOB = Path(__file__).resolve().parents[2] / "jobs" / "omnifm_seg_he"
SITES = ["site-1", "site-2"]


def shrink_job(job: Path, algorithm: str = "omnifm", rounds: int = 2) -> None:
    """Model-zoo style overrides: same components, 2 sites, fewer rounds and voxels, 1 epoch."""
    meta = json.loads((job / "meta.json").read_text())
    meta["deploy_map"] = {"app": ["server", *SITES]}
    (job / "meta.json").write_text(json.dumps(meta))
    server_path = job / "app/config/config_fed_server.json"
    server = json.loads(server_path.read_text())
    server.update({"num_rounds": rounds, "min_clients": len(SITES), "algorithm": algorithm})
    server_path.write_text(json.dumps(server))
    client_path = job / "app/config/config_fed_client.json"
    client = json.loads(client_path.read_text())
    client["executors"][0]["executor"]["args"].update(
        {"local_epochs": 1, "phantom_cases": 6, "phantom_shape": [32, 32, 8]}
    )
    client_path.write_text(json.dumps(client))


def run_simulator(job: Path, workspace: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(workspace)]
    return subprocess.run(cmd, cwd=job.parent, capture_output=True, text=True, timeout=900, env=dict(os.environ))


@pytest.mark.he
@pytest.mark.slow
def test_he_job_trains_persists_encrypted_and_evaluates(tmp_path):
    job = tmp_path / "omnifm_seg_he"
    shutil.copytree(JOB, job)
    shrink_job(job)
    workspace = tmp_path / "ws"
    tool = subprocess.run([sys.executable, "-m", "omnifm.tools.he_context", str(workspace / "startup")],
                          capture_output=True, text=True, timeout=120)
    assert tool.returncode == 0, tool.stderr
    proc = run_simulator(job, workspace)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    app = workspace / "server/simulate_job/app_server"
    assert not (app / "FL_global_model.pt").exists(), "the server holds no plaintext model in HE mode"
    ckpt = torch.load(app / ENCRYPTED_MODEL_FILE, weights_only=True)
    assert ckpt["round"] == 1 and ckpt["scheme"] == "CKKS"
    assert set(ckpt["encrypted"]) == set(ckpt["shapes"]) and all(t.numel() > 1000 for t in ckpt["encrypted"].values())
    bank = KnowledgeBank.from_state_dict(torch.load(app / "knowledge_bank.pt", weights_only=True)["bank"])
    assert bank.version == 2 and len(bank) > 0 and bank.prototypes.norm(dim=1).max() <= bank.rho

    assert log.count("encrypted mean of 2 sites") == 2
    assert "rejected contribution" not in log
    results = json.loads((workspace / "server/simulate_job/cross_site_val/cross_val_results.json").read_text())
    for site in SITES:
        dice = results[site]["SRV_FL_global_model"]["dice"]
        assert math.isfinite(dice) and 0.0 <= dice <= 1.0
        assert list((workspace / site / "omnifm_personal").glob("omnifm-*.pt")), f"{site} kept no personal state"


@pytest.mark.he
@pytest.mark.slow
def test_he_job_without_context_files_fails_with_the_missing_file_named(tmp_path):
    job = tmp_path / "omnifm_seg_he"
    shutil.copytree(JOB, job)
    shrink_job(job, rounds=1)
    proc = run_simulator(job, tmp_path / "ws")
    log = proc.stdout + proc.stderr
    assert "Cannot load tenseal_context server_context.tenseal" in log
    assert "omnifm-he-context <workspace>/startup" in log, "the failure names the fix"
    assert proc.returncode != 0
    assert not (tmp_path / "ws/server/simulate_job/app_server" / ENCRYPTED_MODEL_FILE).exists()
