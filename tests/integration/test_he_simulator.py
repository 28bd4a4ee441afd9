"""End-to-end: the HE job (CKKS-encrypted weights) through ``nvflare simulator`` on a tiny phantom."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ts = pytest.importorskip("tenseal")

from omnifm.fl import he  # noqa: E402
from omnifm.fl.he_persistor import ENCRYPTED_MODEL_FILE  # noqa: E402
from omnifm.knowledge import KnowledgeBank  # noqa: E402
from test_simulator import SITES, _shrink, _simulate  # noqa: E402  (same folder)

JOB = Path(__file__).resolve().parents[2] / "jobs" / "omnifm_seg_he"


def _simulate_with_contexts(job: Path, workspace: Path) -> str:
    """Write the TenSEAL contexts into the workspace's startup/ (omnifm-he-context), run the simulator; its log."""
    tool = subprocess.run([sys.executable, "-m", "omnifm.tools.he_context", str(workspace / "startup")],
                          capture_output=True, text=True, timeout=120)
    assert tool.returncode == 0, tool.stderr
    proc = _simulate(job, workspace)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


@pytest.mark.he
@pytest.mark.slow
def test_he_job_trains_persists_encrypted_and_evaluates(tmp_path):
    job = tmp_path / "omnifm_seg_he"
    shutil.copytree(JOB, job)
    _shrink(job, "omnifm")
    workspace = tmp_path / "ws"
    log = _simulate_with_contexts(job, workspace)

    app = workspace / "server/simulate_job/app_server"
    assert not (app / "FL_global_model.pt").exists(), "the server holds no plaintext model in HE mode"
    ckpt = torch.load(app / ENCRYPTED_MODEL_FILE, weights_only=True)
    assert ckpt["round"] == 1 and ckpt["scheme"] == "CKKS"
    assert set(ckpt["encrypted"]) == {he.PACKED}, "all shared weights packed into one CKKS vector"
    client = ts.context_from((workspace / "startup" / he.CLIENT_CONTEXT).read_bytes())
    packed = ts.ckks_vector_from(client, ckpt["encrypted"][he.PACKED].numpy().tobytes())
    values = sum(math.prod(s) for s in ckpt["shapes"].values())
    assert packed.size() == values and len(packed.ciphertext()) == math.ceil(values / 4096), "fewest ciphertexts"
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
    _shrink(job, "omnifm", rounds=1)
    proc = _simulate(job, tmp_path / "ws")
    log = proc.stdout + proc.stderr
    assert "Cannot load tenseal_context server_context.tenseal" in log
    assert "omnifm-he-context <workspace>/startup" in log, "the failure names the fix"
    assert proc.returncode != 0
    assert not (tmp_path / "ws/server/simulate_job/app_server" / ENCRYPTED_MODEL_FILE).exists()


@pytest.mark.he
@pytest.mark.slow
def test_dp_and_he_together_train_encrypted_with_epsilon_reported_and_no_bank(tmp_path):
    """Issue 12, item 6: DP-SGD at the sites (jobs/omnifm_seg_dp's settings) inside the HE job: the server
    averages CKKS ciphertexts of DP-trained weights, every site reports epsilon, no bank entry is uploaded."""
    job = tmp_path / "omnifm_seg_he"
    shutil.copytree(JOB, job)
    _shrink(job, "omnifm")
    dp_client = json.loads((JOB.parent / "omnifm_seg_dp" / "app/config/config_fed_client.json").read_text())
    dp = {**dp_client["executors"][0]["executor"]["args"]["dp"], "cases_per_step": 2, "slices_per_case": 2}
    client_path = job / "app/config/config_fed_client.json"
    client = json.loads(client_path.read_text())
    client["executors"][0]["executor"]["args"]["dp"] = dp
    client_path.write_text(json.dumps(client))
    workspace = tmp_path / "ws"
    log = _simulate_with_contexts(job, workspace)
    assert log.count("encrypted mean of 2 sites") == 2 and "rejected contribution" not in log
    assert log.count("DP (unit: case") == 2 * len(SITES), log[-4000:]
    app = workspace / "server/simulate_job/app_server"
    assert not (app / "FL_global_model.pt").exists(), "the server holds no plaintext model in HE mode"
    assert torch.load(app / ENCRYPTED_MODEL_FILE, weights_only=True)["round"] == 1
    bank = torch.load(app / "knowledge_bank.pt", weights_only=True)["bank"]
    assert bank["prototypes"].shape[0] == 0, "DP mode sends no bank entries, in HE mode too"
