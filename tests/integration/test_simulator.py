"""End-to-end: the real job config through ``nvflare simulator`` on a tiny phantom (2 sites x 2 rounds)."""

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

from omnifm.knowledge import KnowledgeBank

JOB = Path(__file__).resolve().parents[2] / "jobs" / "omnifm_seg"
SITES = ["site-1", "site-2"]


def _shrink(job: Path, algorithm: str, rounds: int = 2, participation: float = 1.0) -> None:
    """Model-zoo style overrides: same components, fewer rounds, sites and voxels."""
    meta = json.loads((job / "meta.json").read_text())
    meta["deploy_map"] = {"app": ["server", *SITES]}
    (job / "meta.json").write_text(json.dumps(meta))
    server_path = job / "app/config/config_fed_server.json"
    server = json.loads(server_path.read_text())
    server.update({"num_rounds": rounds, "min_clients": len(SITES), "algorithm": algorithm})
    for workflow in server["workflows"]:
        if "participation" in workflow["args"]:  # the sampling controller (omnifm.fl.sampling)
            workflow["args"]["participation"] = participation
    server_path.write_text(json.dumps(server))
    client_path = job / "app/config/config_fed_client.json"
    client = json.loads(client_path.read_text())
    client["executors"][0]["executor"]["args"].update(
        {"local_epochs": 1, "phantom_cases": 6, "phantom_shape": [32, 32, 8]}
    )
    client_path.write_text(json.dumps(client))


def simulator_env(threads: int) -> dict[str, str]:
    """The environment of a simulator run with ``threads`` client processes training at once.

    Each process's PyTorch gets its share of the cores (``OMP_NUM_THREADS``): N clients with one
    thread pool per core each oversubscribe the CPU, which cost 18 % of a 2-site run's wall time
    on 2 cores (63 s -> 51 s under load). ``threads=1`` keeps PyTorch's default. A parallel test
    process has set its own share already (tests/conftest.py), which its simulator keeps.
    """
    env = dict(os.environ)
    if threads > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // threads))
    return env


def _simulate(job: Path, workspace: Path, threads: int = len(SITES)) -> subprocess.CompletedProcess:
    """``threads`` = the sites keeps each site's worker alive across rounds, as a deployment does (and
    saves ~8 s of worker start-up per task); ``threads=1`` rebuilds the executor for every task."""
    cmd = [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(workspace), "-t", str(threads)]
    return subprocess.run(cmd, cwd=job.parent, capture_output=True, text=True, timeout=900, env=simulator_env(threads))


def _run(
    tmp_path: Path, algorithm: str, threads: int = len(SITES), source: Path = JOB, participation: float = 1.0
) -> tuple[Path, str]:
    job = tmp_path / source.name
    shutil.copytree(source, job)
    _shrink(job, algorithm, participation=participation)
    proc = _simulate(job, tmp_path / "ws", threads)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return tmp_path / "ws", log


# every job of another task or model than the UNet segmentation job and its variants: its headline metric
TASK_JOBS = {"omnifm_cls": "accuracy", "omnifm_cls_fusion": "accuracy", "omnifm_sr": "psnr", "omnifm_fusion": "ssim_w",
             "omnifm_seg_fedunetmm": "dice", "omnifm_vqa": "accuracy"}
HEADLINE_RANGE = {"accuracy": (0.0, 1.0), "psnr": (0.0, 100.0), "ssim_w": (-1.0, 1.0), "dice": (0.0, 1.0)}  # valid values (PSNR: dB of [0, 1] slices)
SEG_VARIANTS = {"omnifm_seg", "omnifm_seg_q8", "omnifm_seg_dp", "omnifm_seg_he"}  # the UNet job; covered by the tests below


def test_every_task_job_is_covered():
    jobs = {p.parent.name for p in JOB.parent.glob("*/meta.json") if p.parent.name not in SEG_VARIANTS}
    assert jobs == set(TASK_JOBS), "add the new task job to TASK_JOBS (it must run through the simulator)"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TASK_JOBS))
def test_task_job_runs_out_of_the_box(tmp_path, name):
    """The same FLARE components train, persist and evaluate another task; only the configs differ."""
    workspace, log = _run(tmp_path, "omnifm", source=JOB.parent / name, participation=0.5)
    app = workspace / "server/simulate_job/app_server"
    bank = KnowledgeBank.from_state_dict(torch.load(app / "knowledge_bank.pt", weights_only=True)["bank"])
    assert len(bank) > 0 and bank.value_dim > 0, "the task's class-conditional values reached the bank"
    results = json.loads((workspace / "server/simulate_job/cross_site_val/cross_val_results.json").read_text())
    for site in SITES:
        low, high = HEADLINE_RANGE[TASK_JOBS[name]]
        assert low <= results[site]["SRV_FL_global_model"][TASK_JOBS[name]] <= high
    assert f"final global model {TASK_JOBS[name]} per site" in log
    if name == "omnifm_cls_fusion":  # site-1 holds paired CT+MRI cases, site-2 MRI only
        assert "modalities ct+t1ce," in log and "modalities t1ce," in log
    if name == "omnifm_seg_fedunetmm":  # sites hold different subsets of the four MR sequences
        assert "modalities t1+t1ce+t2+flair," in log and "modalities t1ce+t2+flair," in log
    if name == "omnifm_fusion":  # paired sites; each site's picture is written next to the results
        assert "modalities ct+t1" in log and "modalities pet+t1" in log
        for site in SITES:
            png = workspace / f"server/simulate_job/cross_site_val/{site}_image_fusion_val.png"
            assert png.read_bytes()[:4] == b"\x89PNG", f"{png} missing"
    if "participation 50%" in log:  # the sampling controller: one of the two sites per round, the same rule as the bench
        assert log.count("participation 50%: training site-") == 2 and log.count("(1 of 2 sites)") == 2
    assert "rejected contribution" not in log


@pytest.mark.slow
def test_omnifm_job_trains_persists_and_evaluates(tmp_path):
    workspace, log = _run(tmp_path, "omnifm")
    app = workspace / "server/simulate_job/app_server"
    ckpt = torch.load(app / "FL_global_model.pt", weights_only=True)
    assert ckpt["round"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    bank = KnowledgeBank.from_state_dict(torch.load(app / "knowledge_bank.pt", weights_only=True)["bank"])
    assert bank.version == 2 and len(bank) > 0 and bank.prototypes.norm(dim=1).max() <= bank.rho

    results = json.loads((workspace / "server/simulate_job/cross_site_val/cross_val_results.json").read_text())
    for site in SITES:
        dice = results[site]["SRV_FL_global_model"]["dice"]
        assert math.isfinite(dice) and 0.0 <= dice <= 1.0
        assert list((workspace / site / "omnifm_personal").glob("omnifm-*.pt")), f"{site} kept no personal state"
    assert "SYNTHETIC phantom" in log
    assert "rejected contribution" not in log
    assert list((workspace / "server/simulate_job/tb_events").rglob("events.out.tfevents*")), "metrics not streamed"


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["fedavg", "fedper"])  # FedProx = FedAvg's components + a site-side term (unit-tested)
def test_baselines_run_with_the_same_components(tmp_path, algorithm):
    workspace, log = _run(tmp_path, algorithm)
    app = workspace / "server/simulate_job/app_server"
    assert (app / "FL_global_model.pt").is_file()
    assert not (app / "knowledge_bank.pt").exists(), f"{algorithm} keeps no bank"
    results = json.loads((workspace / "server/simulate_job/cross_site_val/cross_val_results.json").read_text())
    assert all(math.isfinite(results[s]["SRV_FL_global_model"]["dice"]) for s in SITES)


@pytest.mark.slow
def test_ditto_runs_through_flare_and_keeps_a_personal_model(tmp_path):
    """A new algorithm through the same components: the personal model survives the executor rebuilds."""
    workspace, log = _run(tmp_path, "ditto", threads=1)  # -t 1: a new executor for every task
    results = json.loads((workspace / "server/simulate_job/cross_site_val/cross_val_results.json").read_text())
    assert all(math.isfinite(results[s]["SRV_FL_global_model"]["dice"]) for s in SITES)
    assert "rejected contribution" not in log
    for site in SITES:
        files = sorted((workspace / site / "omnifm_personal").glob("ditto-*.pt"))
        (personal,) = [p for p in files if not p.name.endswith(".prev.pt")]  # + the previous generation
        state = torch.load(personal, weights_only=True)
        assert state["round"] == 1 and any(k.startswith("ditto/") for k in state["personal"])
        assert torch.load(personal.with_name(personal.stem + ".prev.pt"), weights_only=True)["round"] == 0


NAN_FILTER = """
import numpy as np
from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter


class PoisonWeights(Filter):
    def process(self, shareable, fl_ctx):
        dxo = from_shareable(shareable)
        dxo.data = {k: np.full_like(v, np.nan) for k, v in dxo.data.items()}
        return dxo.update_shareable(shareable)
"""


@pytest.mark.slow
def test_a_round_with_no_acceptable_contribution_fails_the_job(tmp_path):
    """Every site sends NaN weights: the aggregator must stop the job, not keep the old model quietly."""
    job = tmp_path / "omnifm_seg"
    shutil.copytree(JOB, job)
    _shrink(job, "fedavg")
    (job / "app/custom/poison.py").write_text(NAN_FILTER)
    client_path = job / "app/config/config_fed_client.json"
    client = json.loads(client_path.read_text())
    client["task_result_filters"] = [{"tasks": ["train"], "filters": [{"path": "poison.PoisonWeights", "args": {}}]}]
    client_path.write_text(json.dumps(client))
    proc = _simulate(job, tmp_path / "ws")
    log = proc.stdout + proc.stderr
    assert "contains NaN or Inf" in log
    assert "no site contribution was accepted" in log
    assert "Aborting current RUN due to FATAL_SYSTEM_ERROR" in log
    assert not (tmp_path / "ws/server/simulate_job/app_server/FL_global_model.pt").exists(), "no model was saved"
    results = tmp_path / "ws/server/simulate_job/cross_site_val/cross_val_results.json"
    assert not results.exists() or json.loads(results.read_text()) == {}, "no final evaluation ran"
    assert proc.returncode != 0, "the simulator must report the aborted run"
