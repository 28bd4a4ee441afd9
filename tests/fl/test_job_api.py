"""The shipped jobs built through FLARE's Python job API (FedJob) export to the same configs as the job folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnifm.fl.job_api import build_job, config_object, main

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def _load(folder: Path, side: str) -> dict:
    return json.loads((folder / "app" / "config" / f"config_fed_{side}.json").read_text())


def _normalized(config: dict) -> dict:
    """Executor ids are not written by FLARE's generator (nothing refers to them); filter lists default to
    []; a filter group's tasks are a set to FLARE (the generator writes them in set order)."""
    out = json.loads(json.dumps(config))
    for entry in out.get("executors", []):
        entry["executor"].pop("id", None)
    for key in ("task_data_filters", "task_result_filters"):
        for group in out.setdefault(key, []):
            group["tasks"] = sorted(group["tasks"])
    return out


@pytest.mark.parametrize(
    "name", ["omnifm_seg", "omnifm_seg_q8", "omnifm_seg_dp", "omnifm_seg_he", "omnifm_cls", "omnifm_cls_fusion", "omnifm_sr", "omnifm_fusion",
             "omnifm_seg_fedunetmm", "omnifm_vqa"]
)
def test_exported_job_equals_the_job_folder(tmp_path, name):
    if name.endswith("_he"):
        pytest.importorskip("tenseal")
    job = build_job(JOBS / name)
    job.export_job(str(tmp_path))
    exported = tmp_path / job.name
    assert job.name == name
    original_server, original_client = _load(JOBS / name, "server"), _load(JOBS / name, "client")
    assert _normalized(_load(exported, "server")) == _normalized(original_server)
    assert _normalized(_load(exported, "client")) == _normalized(original_client)
    meta, original_meta = (json.loads((f / "meta.json").read_text()) for f in (exported, JOBS / name))
    assert meta["min_clients"] == original_meta["min_clients"]
    assert not (exported / "app" / "custom").exists(), "omnifm is an installed package, not custom code"


def test_config_object_keeps_placeholders_and_runs_no_constructor():
    entry = {"path": "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather",
             "args": {"num_rounds": "{num_rounds}", "min_clients": "{min_clients}"}}
    obj = config_object(entry)  # ScatterAndGather.__init__ would refuse a string num_rounds
    assert obj.__class__.__name__ == "ScatterAndGather" and obj.num_rounds == "{num_rounds}"


def test_sites_default_to_three_and_can_be_named():
    assert build_job(JOBS / "omnifm_seg").clients == ["site-1", "site-2", "site-3"]
    assert build_job(JOBS / "omnifm_seg", ["a", "b"]).clients == ["a", "b"]


def test_cli_export(tmp_path, capsys):
    assert main(["--export", str(tmp_path)]) == 0
    assert (tmp_path / "omnifm_seg" / "app" / "config" / "config_fed_server.json").is_file()
    assert main(["--sites", "0"]) == 2
