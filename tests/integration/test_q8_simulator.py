"""End-to-end: the int8-compressed job (``jobs/omnifm_seg_q8``) through ``nvflare simulator``; HE + int8 refused at start."""

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
def test_quantized_job_trains_in_both_directions_and_evaluates(tmp_path):
    job = tmp_path / "omnifm_seg_q8"
    shutil.copytree(JOBS / "omnifm_seg_q8", job)
    _shrink(job, "omnifm")
    proc = _simulate(job, tmp_path / "ws")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "rejected contribution" not in log
    assert "arrived uncompressed" not in log, "a direction was sent without compression"
    # 2 rounds: the server quantizes 2 train tasks per round + 2 validate tasks; each site quantizes 2 results
    assert log.count("int8-quantized") == 2 * 2 + 2 + 2 * 2, log[-4000:]
    assert "0.254x" in log or "0.255x" in log  # int8 + float32 scales of 256-value blocks

    app = tmp_path / "ws/server/simulate_job/app_server"
    ckpt = torch.load(app / "FL_global_model.pt", weights_only=True)
    assert ckpt["round"] == 1 and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in ckpt["model"].values())
    results = json.loads((tmp_path / "ws/server/simulate_job/cross_site_val/cross_val_results.json").read_text())
    for site in SITES:
        dice = results[site]["SRV_FL_global_model"]["dice"]
        assert math.isfinite(dice) and 0.0 <= dice <= 1.0


@pytest.mark.he
@pytest.mark.slow
def test_he_job_with_int8_filters_is_refused_at_start_with_the_reason(tmp_path):
    pytest.importorskip("tenseal")
    from omnifm.fl import he

    job = tmp_path / "omnifm_seg_he"
    shutil.copytree(JOBS / "omnifm_seg_he", job)
    _shrink(job, "omnifm", rounds=1)
    quantize = {"path": "omnifm.fl.quantize.QuantizeWeights", "args": {}}
    for side, section in (("server", "task_data_filters"), ("client", "task_result_filters")):
        path = job / f"app/config/config_fed_{side}.json"  # someone adds int8 filters to the HE job by hand
        config = json.loads(path.read_text())
        config[section] = [{"tasks": ["train"], "filters": [quantize]}, *config.get(section, [])]
        path.write_text(json.dumps(config))
    he.write_contexts(tmp_path / "ws" / "startup")
    proc = _simulate(job, tmp_path / "ws")
    log = proc.stdout + proc.stderr
    assert "CKKS ciphertexts cannot be int8-quantized" in log, log[-4000:]
    assert "QuantizeWeights: homomorphic encryption and int8 compression cannot be combined" in log
    assert proc.returncode != 0
    assert "encrypted mean of" not in log, "no round may run"
