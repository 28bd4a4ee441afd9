"""``omnifm-build-job`` builds installed / BYOC copies of a job without touching the source."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import omnifm
from omnifm.tools.build_job import BuildSpec, build_job, main, parse_assignment, parse_sites

REPO = Path(__file__).resolve().parents[3]
SOURCE = REPO / "jobs" / "omnifm_seg"
PACKAGE = Path(omnifm.__file__).resolve().parent


def _load_config_checks():
    """The checks of tests/fl/test_job_configs.py, loaded from that file so both stay the same."""
    spec = importlib.util.spec_from_file_location("_job_config_checks", REPO / "tests" / "fl" / "test_job_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree_digest(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("mode", ["installed", "byoc"])
def test_source_is_untouched_and_no_symlinks_or_signatures(tmp_path, mode):
    before = _tree_digest(SOURCE)
    job, _ = build_job(SOURCE, tmp_path / "build", BuildSpec(mode=mode, sites=["site-a"], min_clients=1, num_rounds=1))
    assert _tree_digest(SOURCE) == before
    assert job == tmp_path / "build" / "omnifm_seg"
    assert not [p for p in job.rglob("*") if p.is_symlink()]
    assert not [p for p in job.rglob(".__nvfl_*")]
    assert not [p for p in tmp_path.joinpath("build").iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_installed_mode_has_no_app_custom(tmp_path):
    assert (SOURCE / "app" / "custom").is_dir(), "premise: the repo job carries the README-only app/custom"
    job, _ = build_job(SOURCE, tmp_path, BuildSpec(mode="installed"))
    assert not list(job.glob("*/custom"))
    assert (job / "app" / "config" / "config_fed_server.json").is_file()


def test_byoc_mode_copies_the_package_without_bytecode(tmp_path):
    job, _ = build_job(SOURCE, tmp_path, BuildSpec(mode="byoc"))
    custom = job / "app" / "custom"
    assert sorted(p.name for p in custom.iterdir()) == ["omnifm"], "only the package, not the README"
    copied = {str(p.relative_to(custom / "omnifm")) for p in (custom / "omnifm").rglob("*.py")}
    original = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    assert copied == original
    assert not [p for p in custom.rglob("*") if p.name == "__pycache__" or p.suffix in (".pyc", ".pyo")]


def test_byoc_package_imports_from_the_job_alone(tmp_path):
    job, _ = build_job(SOURCE, tmp_path / "build", BuildSpec(mode="byoc"))
    custom = job / "app" / "custom"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import omnifm, omnifm.fl.persistor, omnifm.fl.executor, omnifm.fl.aggregator, omnifm.fl.model_locator;"
        "paths = [getattr(m, '__file__', None) or '' for n, m in sys.modules.items() if n.split('.')[0] == 'omnifm'];"
        "print(len(paths)); print('\\n'.join(p for p in paths if not p.startswith(sys.argv[1])))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-I", "-c", code, str(custom.resolve())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    count, *outside = done.stdout.strip().splitlines()
    assert int(count) > 5 and outside == [], f"modules imported from outside the job: {outside}"


@pytest.mark.parametrize(
    "sites, expected",
    [(["@ALL"], ["@ALL"]), (["hospital-a", "hospital-b"], ["server", "hospital-a", "hospital-b"])],
)
def test_deploy_map_min_clients_and_rounds_are_rewritten(tmp_path, sites, expected):
    spec = BuildSpec(mode="installed", sites=sites, min_clients=2, num_rounds=3)
    job, changes = build_job(SOURCE, tmp_path, spec)
    meta = _json(job / "meta.json")
    server = _json(job / "app" / "config" / "config_fed_server.json")
    assert meta["deploy_map"] == {"app": expected}
    assert meta["min_clients"] == 2 and server["min_clients"] == 2 and server["num_rounds"] == 3
    assert any("deploy_map" in c for c in changes) and any("num_rounds = 3" in c for c in changes)


def test_without_options_the_configs_are_copied_unchanged(tmp_path):
    job, _ = build_job(SOURCE, tmp_path, BuildSpec(mode="installed"))
    for name in ("meta.json", "app/config/config_fed_server.json", "app/config/config_fed_client.json"):
        assert _json(job / name) == _json(SOURCE / name), name


def test_set_overrides_top_level_variables_and_component_args(tmp_path):
    overrides = [parse_assignment("client:executor.local_epochs=1"), parse_assignment("server:algorithm=fedavg")]
    job, _ = build_job(SOURCE, tmp_path, BuildSpec(mode="installed", name="tiny", overrides=overrides))
    client = _json(job / "app" / "config" / "config_fed_client.json")
    assert client["executors"][0]["executor"]["args"]["local_epochs"] == 1
    assert _json(job / "app" / "config" / "config_fed_server.json")["algorithm"] == "fedavg"
    assert job.name == "tiny" and _json(job / "meta.json")["name"] == "tiny"


def test_set_reaches_a_top_level_section_and_the_jobs_ship_the_short_round_settings(tmp_path):
    """Issue 13, item 24: ``server.task_request_interval`` is a top-level section of the server config."""
    shipped = _json(SOURCE / "app" / "config" / "config_fed_server.json")
    assert shipped["server"] == {"task_request_interval": 0.5}
    flows = {w["id"]: w["args"] for w in shipped["workflows"]}
    assert flows["scatter_and_gather"]["snapshot_every_n_rounds"] == 0
    assert flows["scatter_and_gather"]["task_check_period"] == flows["final_evaluation"]["task_check_period"] == 0.1
    overrides = [parse_assignment("server:server.task_request_interval=2.0")]
    job, _ = build_job(SOURCE, tmp_path, BuildSpec(mode="installed", overrides=overrides))
    assert _json(job / "app" / "config" / "config_fed_server.json")["server"] == {"task_request_interval": 2.0}


@pytest.mark.parametrize("mode", ["installed", "byoc"])
def test_built_job_passes_the_job_config_checks(tmp_path, mode):
    checks = _load_config_checks()
    spec = BuildSpec(mode=mode, sites=["@ALL"], min_clients=2, num_rounds=2)
    job, _ = build_job(SOURCE, tmp_path, spec)
    for config in sorted(job.glob("app/config/config_fed_*.json")):
        checks.test_components_import_and_bind(config)
        checks.test_no_absolute_paths_or_unresolved_vars(config)
    checks.test_meta_deploys_existing_apps(job)


def test_refuses_to_overwrite_without_force_and_keeps_old_build_on_failure(tmp_path, capsys):
    argv = [str(SOURCE), "--out", str(tmp_path), "--mode", "installed", "--num-rounds", "2"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(argv) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main([*argv, "--force", "--set", "no_such_variable=1"]) == 2
    assert _json(tmp_path / "omnifm_seg" / "app" / "config" / "config_fed_server.json")["num_rounds"] == 2
    assert main([*argv[:-1], "5", "--force"]) == 0
    assert _json(tmp_path / "omnifm_seg" / "app" / "config" / "config_fed_server.json")["num_rounds"] == 5


def test_symlinked_files_become_real_files(tmp_path):
    source = tmp_path / "src" / "linked_job"
    build_job(SOURCE, tmp_path / "src", BuildSpec(mode="installed", name="linked_job"))
    real = tmp_path / "README.md"
    real.write_text("shared notes\n")
    (source / "NOTES.md").symlink_to(real)
    job, _ = build_job(source, tmp_path / "out", BuildSpec(mode="installed"))
    assert not (job / "NOTES.md").is_symlink() and (job / "NOTES.md").read_text() == "shared notes\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sites", "site-1,server"], "not a site name"),
        (["--sites", "site-1,site-1"], "twice"),
        (["--sites", "@ALL,site-1"], "not a site name"),
        (["--sites", "site-1", "--min-clients", "2"], "exceeds the 1 sites"),
        (["--min-clients", "0"], "must be at least 1"),
        (["--set", "nope=1"], "no top-level variable 'nope'"),
        (["--set", "client:missing.arg=1"], "no component 'missing'"),
        (["--set", "noequals"], "expected [server:|client:]key=value"),
        (["--set", "edge:key=1"], "expected [server:|client:]key=value"),
        (["--name", "bad name"], "job name 'bad name'"),
    ],
)
def test_bad_options_are_named(tmp_path, capsys, args, message):
    try:
        code = main([str(SOURCE), "--out", str(tmp_path), "--mode", "byoc", *args])
    except SystemExit as exit_:  # argparse type errors
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "omnifm_seg").exists()


def test_not_a_job_folder_is_refused(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "out"), "--mode", "installed"]) == 2
    assert "no meta.json" in capsys.readouterr().err


def test_out_inside_the_source_is_refused(tmp_path):
    source = tmp_path / "omnifm_seg"
    build_job(SOURCE, tmp_path, BuildSpec(mode="installed"))
    with pytest.raises(ValueError, match="inside it"):
        build_job(source, source / "build", BuildSpec(mode="installed"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("num_rounds=3", ("server", "num_rounds", 3)),
        ("client:executor.phantom_shape=[32,32,8]", ("client", "executor.phantom_shape", [32, 32, 8])),
        ("server:algorithm=fedprox", ("server", "algorithm", "fedprox")),
        ("client:executor.learning_rate=1e-3", ("client", "executor.learning_rate", 0.001)),
    ],
)
def test_parse_assignment(text, expected):
    assert parse_assignment(text) == expected


def test_parse_sites_all():
    assert parse_sites("@ALL") == ["@ALL"]
    assert parse_sites(" a , b ") == ["a", "b"]


# ---------------------------------------------------------------- a federation that survives losing a site


def _guard_args(job: Path) -> dict:
    server = _json(job / "app" / "config" / "config_fed_server.json")
    (guard,) = [c for c in server["components"] if c["path"] == "omnifm.fl.job_guard.JobGuard"]
    return {k: server["min_clients"] if v == "{min_clients}" else v for k, v in guard["args"].items()}


@pytest.mark.parametrize(
    "sites, min_clients, expected",
    [
        (["a", "b", "c"], None, 2),  # the source's 2 lets one of three be lost: kept
        (["a", "b"], None, 1),  # 2 of 2 would need every site: one below
        (["a"], None, 1),
        (["a", "b", "c", "d"], None, 2),
        (["a", "b"], 2, 2),  # an explicit --min-clients is kept (with a warning)
    ],
)
def test_named_sites_get_a_quorum_below_their_number_and_the_guard_pins_them(tmp_path, sites, min_clients, expected):
    from omnifm.fl.job_guard import JobGuard, mismatches

    job, changes = build_job(SOURCE, tmp_path, BuildSpec(mode="installed", sites=sites, min_clients=min_clients))
    meta, server = _json(job / "meta.json"), _json(job / "app" / "config" / "config_fed_server.json")
    assert meta["min_clients"] == server["min_clients"] == expected
    guard = JobGuard(**_guard_args(job))
    assert guard.sites == tuple(sorted(sites)) and guard.min_clients == expected
    assert mismatches(meta, sites, guard.sites, guard.min_clients, guard.mandatory) == [], "the build passes its guard"
    assert any(f"job_guard.sites = {json.dumps(sites)}" in c for c in changes)
    assert any("no site may be lost" in c for c in changes) == (expected == len(sites))


def test_all_sites_leave_the_guard_unpinned(tmp_path):
    job, _ = build_job(SOURCE, tmp_path, BuildSpec(mode="installed", sites=["@ALL"]))
    assert _guard_args(job)["sites"] == "@ALL"


@pytest.mark.parametrize("key", ["scatter_and_gather.train_timeout", "final_evaluation.validation_timeout"])
def test_a_timeout_that_waits_forever_is_refused(tmp_path, capsys, key):
    assert main([str(SOURCE), "--out", str(tmp_path), "--mode", "installed", "--set", f"{key}=0"]) == 2
    err = capsys.readouterr().err
    assert f"{key} is 0, which waits forever for a site that died" in err
    assert not (tmp_path / "omnifm_seg").exists()


def test_a_round_that_waits_for_no_one_is_warned_about(tmp_path, capsys):
    args = ["--set", "scatter_and_gather.wait_time_after_min_received=0", "--sites", "a,b,c"]
    assert main([str(SOURCE), "--out", str(tmp_path), "--mode", "installed", *args]) == 0
    assert "wait_time_after_min_received is 0: a round closes as soon as min_clients sites replied" in \
        capsys.readouterr().out
