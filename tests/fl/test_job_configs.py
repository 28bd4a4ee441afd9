"""Job configs are code: every component path imports and its args bind to the constructor."""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

import pytest
from nvflare.fuel.utils.json_scanner import JsonScanner
from nvflare.fuel.utils.wfconf import resolve_var_refs

JOBS = Path(__file__).resolve().parents[2] / "jobs"
CONFIGS = sorted(JOBS.glob("*/app/config/config_fed_*.json"))


def _components(config: dict):
    for section in ("components", "workflows"):
        yield from config.get(section, [])
    for executor in config.get("executors", []):
        yield executor["executor"]
    for section in ("task_result_filters", "task_data_filters"):
        for entry in config.get(section, []):
            yield from entry.get("filters", [])


def _resolved(path: Path) -> dict:
    config = json.loads(path.read_text())
    variables = {k: v for k, v in config.items() if not isinstance(v, (list, dict))}
    resolve_var_refs(JsonScanner(config), variables)
    return config


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def test_there_are_job_configs():
    assert any(p.parts[-4] == "omnifm_seg" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parts[-4]}/{p.name}")
def test_components_import_and_bind(path: Path):
    for component in _components(_resolved(path)):
        assert set(component) <= {"id", "path", "args"}, f"{component.get('id')}: only id/path/args allowed"
        module_name, _, class_name = component["path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        inspect.signature(cls).bind(**component.get("args", {}))
        cls(**component.get("args", {}))  # constructor validation runs too


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parts[-4]}/{p.name}")
def test_no_absolute_paths_or_unresolved_vars(path: Path):
    strings = list(_strings(_resolved(path)))
    assert not [s for s in strings if s.startswith("/")], "job configs carry no absolute paths"
    assert not [s for s in strings if re.search(r"\{\w+\}", s)], "unresolved {var} reference"


@pytest.mark.parametrize("job", sorted(p.parent for p in JOBS.glob("*/meta.json")), ids=lambda p: p.name)
def test_meta_deploys_existing_apps(job: Path):
    meta = json.loads((job / "meta.json").read_text())
    for app in meta["deploy_map"]:
        assert (job / app / "config").is_dir(), f"{job.name}: app {app} has no config folder"


SERVER_CONFIGS = [p for p in CONFIGS if p.name == "config_fed_server.json"]


def _component(config: dict, path_suffix: str) -> dict:
    (found,) = [c for c in _components(config) if c["path"].endswith(path_suffix)]
    return found


@pytest.mark.parametrize("path", SERVER_CONFIGS, ids=lambda p: p.parts[-4])
def test_rounds_survive_a_lost_site(path: Path):
    """Finite timeouts and a quorum below the number of sites (issue 13, items 13 and 14).

    ``train_timeout: 0`` waits forever for a dead site; ``wait_time_after_min_received: 0`` closes
    the round at the quorum's first replies (error replies count) without waiting for the others.
    """
    config = _resolved(path)
    meta = json.loads((path.parents[2] / "meta.json").read_text())
    sag = _component(config, "ScatterAndGather")["args"]
    sites = [s for members in meta["deploy_map"].values() for s in members if s != "server"]
    assert 0 < sag["wait_time_after_min_received"] < sag["train_timeout"], sag
    assert 1 <= sag["min_clients"] < len(sites), f"quorum {sag['min_clients']} of {sites}: no site may be lost"
    assert meta["min_clients"] == sag["min_clients"], "meta.json and ScatterAndGather must name the same quorum"
    assert sag["ignore_result_error"] is None, "dynamic mode: an error reply is ignored while the quorum is reachable"
    assert 0 < _component(config, "GlobalModelEval")["args"]["validation_timeout"] <= sag["train_timeout"]


@pytest.mark.parametrize("path", SERVER_CONFIGS, ids=lambda p: p.parts[-4])
def test_server_guards_the_unsigned_meta(path: Path):
    config = _resolved(path)
    guard = _component(config, "omnifm.fl.job_guard.JobGuard")["args"]
    assert guard["min_clients"] == _component(config, "ScatterAndGather")["args"]["min_clients"]
    meta = json.loads((path.parents[2] / "meta.json").read_text())
    assert guard["mandatory_clients"] == meta["mandatory_clients"]
