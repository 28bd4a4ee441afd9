"""The templates in site_configs/ parse, and resources.json lets FLARE build every job component."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnifm.data.site_config import FORMATS, SiteConfig, load_site_config, parse_site_config
from omnifm.tasks import get_task
from omnifm.tasks.segmentation import BRATS_CLASSES

authorizer_module = pytest.importorskip("nvflare.app_common.widgets.component_path_authorizer")
policy_module = pytest.importorskip("nvflare.app_common.default_component_policy")
fl_exception = pytest.importorskip("nvflare.apis.fl_exception")

ROOT = Path(__file__).resolve().parents[1]
SITE_CONFIGS = ROOT / "site_configs"
TEMPLATES = sorted(SITE_CONFIGS.glob("omnifm_site.*.json"))
JOB_CONFIGS = sorted(ROOT.glob("jobs/*/app/config/*.json"))
RESOURCES = SITE_CONFIGS / "resources.json"


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_is_a_template_per_format():
    assert [p.name for p in TEMPLATES] == sorted(f"omnifm_site.{fmt}.json" for fmt in FORMATS)


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_template_parses(path: Path):
    config = parse_site_config(_load(path), path.parent, check_paths=False)
    assert isinstance(config, SiteConfig)
    assert path.name == f"omnifm_site.{config.format}.json"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_template_parses_with_its_data_in_place(path: Path, tmp_path: Path):
    """Installed as <kit>/local/omnifm_site.json with the data root it names: every path check passes."""
    data = _load(path)
    root = tmp_path / "data"
    (root).mkdir()
    (root / data.get("datalist", "datalist.json")).write_text('{"cases": []}')
    local = tmp_path / "local"
    local.mkdir()
    (local / "omnifm_site.json").write_text(json.dumps({**data, "data_root": str(root)}))
    config = load_site_config(local / "omnifm_site.json")
    assert config.data_root == root.resolve()
    assert config.datalist_path.is_file()


def test_phantom_template_is_explicit_and_self_contained():
    config = parse_site_config(_load(SITE_CONFIGS / "omnifm_site.phantom.json"), SITE_CONFIGS, check_paths=False)
    assert config.format == "phantom" and len(config.modalities) == 1 and config.phantom is not None
    assert config.label_values(list(BRATS_CLASSES)) == {0: 0, 1: 1, 2: 2, 4: 3}, "the phantom writes BraTS labels"


@pytest.mark.parametrize("name", ["omnifm_site.nifti.json", "omnifm_site.dicom.json", "omnifm_site.phantom.json"])
def test_templates_fit_the_shipped_jobs_classes(name):
    config = parse_site_config(_load(SITE_CONFIGS / name), SITE_CONFIGS, check_paths=False)
    for server in (p for p in JOB_CONFIGS if p.name == "config_fed_server.json"):
        persistor = next(c for c in json.loads(server.read_text())["components"] if c["id"] == "persistor")
        config.label_values(get_task(persistor["args"]["task"]).label_classes)  # raises if a class is unknown


# --------------------------------------------------------------------------- resources.json


class _Builder(pytest.importorskip("nvflare.fuel.utils.component_builder").ComponentBuilder):
    """FLARE's own rule for which config dicts are components (no module scanner needed for "path")."""

    def get_module_scanner(self):
        return None


def _component_paths(node, builder: _Builder | None = None) -> list[str]:
    """The class path of every dict FLARE would build as a component, at any depth."""
    builder = builder or _Builder()
    found = []
    if isinstance(node, dict):
        if builder.is_class_config(node):
            found.append(builder.get_class_path(node))
        for value in node.values():
            found += _component_paths(value, builder)
    elif isinstance(node, list):
        for value in node:
            found += _component_paths(value, builder)
    return found


class _Workspace:
    """What the authorizer asks a FLARE workspace for: the site's resources file."""

    def get_resources_file_path(self) -> str:
        return str(RESOURCES)


def _authorize(component_path: str) -> None:
    authorizer = authorizer_module.ComponentPathAuthorizer()
    authorizer.authorize_component_config({"id": "c", "path": component_path, "args": {}}, workspace=_Workspace())


def test_resources_is_flare_client_resources_with_an_allow_list():
    resources = _load(RESOURCES)
    assert resources["format_version"] == 2
    assert resources["class_list_enforcement_mode"] == "enforce"
    allow_list = resources["class_allow_list"]
    assert set(policy_module.DEFAULT_CLASS_ALLOW_LIST) <= set(allow_list), "keep FLARE's defaults"
    assert "omnifm." in allow_list and "*" not in allow_list
    assert {c["id"] for c in resources["components"]} >= {"resource_manager", "resource_consumer", "process_launcher"}


def test_resources_allow_list_is_valid_for_flare():
    policy = authorizer_module.ComponentPathAuthorizer()._get_policy_from_file(str(RESOURCES))
    allow_list, mode, uses_default = policy
    assert not uses_default and mode.value == "enforce"
    assert "omnifm." in allow_list


def test_there_are_job_components():
    paths = {p for config in JOB_CONFIGS for p in _component_paths(_load(config))}
    assert "omnifm.fl.executor.OmniFMExecutor" in paths
    assert "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather" in paths


@pytest.mark.parametrize(
    "component_path",
    sorted({p for config in JOB_CONFIGS for p in _component_paths(_load(config))}),
)
def test_every_job_component_is_allowed(component_path: str):
    _authorize(component_path)  # raises UnsafeComponentError if not allowed


@pytest.mark.parametrize("component_path", ["evil.module.Payload", "omnifmx.Thing", "nvflare.app_common.Other"])
def test_other_components_are_refused(component_path: str):
    with pytest.raises(fl_exception.UnsafeComponentError):
        _authorize(component_path)


def test_resources_hold_no_data_paths():
    """FLARE advertises custom top-level keys of the site config to the server."""
    resources = _load(RESOURCES)
    assert set(resources) == {
        "format_version",
        "class_list_enforcement_mode",
        "class_allow_list",
        "allow_log_streaming",
        "client",
        "components",
    }
