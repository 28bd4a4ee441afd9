"""The shipped round settings through ``nvflare simulator``: a bad site among good ones, an edited meta.json.

Issue 13, item 14: with ``wait_time_after_min_received: 0`` a round closed at the quorum's first
replies (an error reply counts), and with ``min_clients`` = every site one error reply stopped the
job. The shipped job waits for the others after the quorum (within ``train_timeout``) and ignores
an error reply while the quorum is reachable, so the job completes with every good site in every
round. Item 18: ``meta.json`` is not signed; the server's ``job_guard`` fails an edited one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_simulator import simulator_env  # noqa: E402  (same folder)

JOB = Path(__file__).resolve().parents[2] / "jobs" / "omnifm_seg"
SITES = ["site-1", "site-2", "site-3"]
BAD = "site-3"

# A task-data filter that fails the train task at one site only: that site replies at once with an
# error (TASK_DATA_FILTER_ERROR), before the good sites have finished training.
BAD_SITE_FILTER = f"""
from nvflare.apis.filter import Filter


class FailAtOneSite(Filter):
    def process(self, shareable, fl_ctx):
        if fl_ctx.get_identity_name() == {BAD!r}:
            raise RuntimeError("this site is broken on purpose (test)")
        return shareable
"""


def _shrink(job: Path, rounds: int = 2) -> None:
    """Fewer rounds and voxels; the server's quorum, timeouts and deploy_map stay as shipped."""
    server_path = job / "app/config/config_fed_server.json"
    server = json.loads(server_path.read_text())
    server["num_rounds"] = rounds
    server_path.write_text(json.dumps(server))
    client_path = job / "app/config/config_fed_client.json"
    client = json.loads(client_path.read_text())
    client["executors"][0]["executor"]["args"].update(
        {"local_epochs": 1, "phantom_cases": 6, "phantom_shape": [32, 32, 8]}
    )
    client_path.write_text(json.dumps(client))


def _simulate(job: Path, workspace: Path, threads: int) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(workspace), "-t", str(threads)]
    proc = subprocess.run(cmd, cwd=job.parent, capture_output=True, text=True, timeout=900, env=simulator_env(threads))
    return proc.returncode, proc.stdout + proc.stderr


def _copy(tmp_path: Path) -> Path:
    job = tmp_path / JOB.name
    shutil.copytree(JOB, job)
    meta = json.loads((job / "meta.json").read_text())
    assert sorted(meta["deploy_map"]["app"]) == sorted(["server", *SITES]), "the shipped job has three sites"
    _shrink(job)
    return job


@pytest.mark.slow
def test_one_bad_site_among_good_ones_the_job_completes_with_the_good_ones(tmp_path):
    job = _copy(tmp_path)
    (job / "app/custom/fail_at_one_site.py").write_text(BAD_SITE_FILTER)
    client_path = job / "app/config/config_fed_client.json"
    client = json.loads(client_path.read_text())
    client["task_data_filters"] = [{"tasks": ["train"], "filters": [{"path": "fail_at_one_site.FailAtOneSite"}]}]
    client_path.write_text(json.dumps(client))

    code, log = _simulate(job, tmp_path / "ws", threads=len(SITES))
    assert code == 0, log[-4000:]
    for rnd in range(2):
        for site in ("site-1", "site-2"):
            assert f"Contribution from {site} ACCEPTED by the aggregator at round {rnd}." in log, (
                f"round {rnd} closed without {site}: the round did not wait for the other good site\n" + log[-3000:]
            )
        assert re.search(f"Ignore the result from {BAD} at round {rnd}\\b", log), f"round {rnd}: {BAD}'s error"
        assert f"Contribution from {BAD}" not in log
    app = tmp_path / "ws/server/simulate_job/app_server"
    assert torch.load(app / "FL_global_model.pt", weights_only=True)["round"] == 1, "both rounds were aggregated"
    results = json.loads((tmp_path / "ws/server/simulate_job/cross_site_val/cross_val_results.json").read_text())
    assert set(results) == set(SITES), "the final evaluation still runs at every site (only training was broken)"


@pytest.mark.slow
def test_an_edited_meta_json_is_refused_by_the_signed_job_guard(tmp_path):
    """FLARE verifies the app folders' signature only; the guard in the app config catches the edit."""
    job = _copy(tmp_path)
    meta = json.loads((job / "meta.json").read_text())
    meta["min_clients"] = 1
    (job / "meta.json").write_text(json.dumps(meta))
    code, log = _simulate(job, tmp_path / "ws", threads=1)
    assert "job_guard: meta.json does not match the signed job: min_clients is 1 in meta.json, 2 in the signed" in log
    assert "Aborting current RUN due to FATAL_SYSTEM_ERROR" in log
    assert "Round 0 started." not in log, "no training task may be sent"
    assert not (tmp_path / "ws/server/simulate_job/app_server/FL_global_model.pt").exists()
    assert code != 0, "the simulator must report the refused run"
