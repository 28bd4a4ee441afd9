"""docker/ is validated statically: there is no Docker engine on the project's machines.

The Dockerfile is parsed instruction by instruction, compose.yml with yaml.safe_load; pinned
versions are checked against pyproject.toml's constraints, and the entrypoint's own checks are run
(they need no container).
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ (tomllib) reads pyproject.toml")

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE, COMPOSE, LOCK = DOCKER / "Dockerfile", DOCKER / "compose.yml", DOCKER / "requirements.lock"
ENTRYPOINT = DOCKER / "entrypoint.sh"
IMAGE_ENTRYPOINT = "/usr/local/bin/omnifm-entrypoint"
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "VOLUME", "EXPOSE", "ENTRYPOINT", "CMD"}
SITES = ["site-1", "site-2"]
KEY_PACKAGES = ["torch", "nvflare", "monai", "tenseal", "pydicom"]
sys.path.insert(0, str(DOCKER))
make_lock = importlib.import_module("make_lock")


def _instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction; continuation lines joined, comments dropped."""
    result, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, args = pending.partition(" ")
            result.append((keyword.upper(), args.strip()))
            pending = ""
    assert not pending, "dangling line continuation at the end of the Dockerfile"
    return result


def _args_of(keyword: str) -> list[str]:
    return [args for kw, args in _instructions() if kw == keyword]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _site_requirements() -> list[Requirement]:
    """pyproject's runtime dependencies and the extras the image installs."""
    return make_lock.root_requirements(ROOT / "pyproject.toml")


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and ";" not in line, f"not an exact pin: {line!r}"
            assert canonicalize_name(name) not in pins, f"{name} pinned twice"
            pins[canonicalize_name(name)] = version
    return pins


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _mounts(service: dict) -> dict[str, dict]:
    """target -> {"source", "read_only"} for short and long volume syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts[target] = {"source": source, "read_only": "ro" in mode}
        else:
            mounts[volume["target"]] = {"source": volume["source"], "read_only": bool(volume.get("read_only"))}
    return mounts


def _project() -> dict:
    return yaml.safe_load((ROOT / "provisioning" / "project.yml").read_text())


def _server() -> dict:
    return next(p for p in _project()["participants"] if p["type"] == "server")


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_parses_into_known_instructions():
    instructions = _instructions()
    assert instructions[0][0] in ("ARG", "FROM")
    assert {kw for kw, _ in instructions} <= INSTRUCTIONS
    assert [kw for kw, _ in instructions].count("FROM") == 1


def test_base_image_is_cuda_capable():
    (base,) = _args_of("FROM")
    defaults = dict(a.split("=", 1) for a in _args_of("ARG") if "=" in a)
    image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base)
    assert re.fullmatch(r"nvidia/cuda:12\.\d+(\.\d+)?-(cudnn-)?runtime-ubuntu\d\d\.\d\d", image), image


def test_python_in_the_image_satisfies_requires_python():
    installs = " ".join(_args_of("RUN"))
    version = re.search(r"python(3\.\d+)-venv", installs).group(1)
    assert f"python{version} -m venv" in installs, "the venv is made with the installed interpreter"
    assert Requirement(f"python{_pyproject()['requires-python']}").specifier.contains(version + ".0")


def test_every_copied_source_exists_in_the_repository():
    for args in _args_of("COPY"):
        *sources, _ = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: missing from the build context"


def test_dependencies_come_from_the_lock_and_the_package_without_deps():
    runs = _args_of("RUN")
    assert any("pip install" in r and "-r /opt/omnifm/requirements.lock" in r for r in runs)
    package_install = next(r for r in runs if "/opt/omnifm/src" in r and "pip install" in r)
    assert "--no-deps" in package_install, "installing the package must not move the pins"
    for command in (c for r in runs for c in r.split("&&")):
        words = shlex.split(command)
        if words[:2] == ["pip", "install"]:
            named = [w for w in words[2:] if not w.startswith(("-", "/"))]
            assert all("==" in w for w in named), f"only exact pins (==) in the image: {command}"


def test_entrypoint_is_copied_and_used_through_tini():
    assert any(args.split()[-1] == IMAGE_ENTRYPOINT for args in _args_of("COPY") if "docker/entrypoint.sh" in args)
    (entrypoint,) = _args_of("ENTRYPOINT")
    assert yaml.safe_load(entrypoint) == ["/usr/bin/tini", "-g", "--", IMAGE_ENTRYPOINT]
    assert not _args_of("CMD")


def test_image_exposes_the_provisioned_server_port_and_runs_unprivileged():
    assert _args_of("EXPOSE") == [str(_server()["fed_learn_port"])]
    assert _args_of("USER") and _args_of("USER")[-1] not in ("root", "0")


def test_build_context_keeps_kits_and_data_out():
    lines = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignore[0] == "**", "deny everything, then allow what the build copies"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {s.rstrip("/") for args in _args_of("COPY") for s in shlex.split(args)[:-1]}
    assert copied <= allowed


# --------------------------------------------------------------------------- pins


def test_lock_pins_every_site_requirement_within_pyproject_constraints():
    pins = _lock()
    for requirement in _site_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a site requirement but not pinned in docker/requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} violates pyproject.toml's {requirement}"
        )


@pytest.mark.parametrize("name", KEY_PACKAGES)
def test_key_packages_are_pinned(name: str):
    assert name in _lock()


def test_torch_pin_equals_the_torch_the_tests_run_with():
    """README and CI install exactly torch==2.13.0; the image must run the same version."""
    installed = metadata.version("torch").split("+")[0]
    assert _lock()["torch"] == installed, (
        f"docker/requirements.lock pins torch=={_lock()['torch']} but the tests ran with {installed}: "
        "run `python docker/make_lock.py`"
    )


def test_lock_is_what_make_lock_renders_from_its_pins():
    pins = _lock()
    assert LOCK.read_text() == make_lock.render(pins)


# --------------------------------------------------------------------------- entrypoint


def test_entrypoint_exists_is_executable_and_valid_bash():
    assert ENTRYPOINT.read_text().startswith("#!/usr/bin/env bash\n")
    assert os.access(ENTRYPOINT, os.X_OK), "chmod +x docker/entrypoint.sh"
    assert subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True).returncode == 0
    assert "sub_start.sh" in ENTRYPOINT.read_text()


def _run_entrypoint(kit: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMNIFM_KIT": str(kit), "NVFL_WORKSPACE": str(tmp_path / "run")}
    return subprocess.run(["bash", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=60)


def _fake_kit(tmp_path: Path, config: str | None) -> Path:
    kit = tmp_path / "kit"
    (kit / "startup").mkdir(parents=True)
    if config:
        (kit / "startup" / config).write_text("{}")
    return kit


@pytest.mark.parametrize(
    "config, message",
    [
        (None, "sub_start.sh is missing"),
        ("fed_admin.json", "is an admin kit"),
        ("fed_client.json", "has no private key"),
    ],
    ids=["no-start-script", "admin-kit", "no-key"],
)
def test_entrypoint_refuses_a_wrong_kit_naming_the_fix(tmp_path: Path, config: str | None, message: str):
    kit = _fake_kit(tmp_path, config)
    if config:
        script = kit / "startup" / "sub_start.sh"
        script.write_text("#!/usr/bin/env bash\necho started\n")
        script.chmod(0o755)
    result = _run_entrypoint(kit, tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "started" not in result.stdout


def test_entrypoint_refuses_a_missing_kit(tmp_path: Path):
    result = _run_entrypoint(tmp_path / "nothing", tmp_path)
    assert result.returncode == 2
    assert "Mount the kit" in result.stderr


def test_entrypoint_warns_about_missing_site_files_and_runs_the_kit(tmp_path: Path):
    kit = _fake_kit(tmp_path, "fed_client.json")
    (kit / "startup" / "client.key").write_text("not a real key")
    script = kit / "startup" / "sub_start.sh"
    script.write_text('#!/usr/bin/env bash\necho "started in $NVFL_WORKSPACE"\n')
    script.chmod(0o755)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "daemon_pid.fl").write_text("1")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.update(OMNIFM_KIT=str(kit), NVFL_WORKSPACE=str(tmp_path / "run"), OMNIFM_DATA=str(tmp_path / "no-data"))
    result = subprocess.run(["bash", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"started in {tmp_path / 'run'}" in result.stdout
    for expected in ("local/resources.json is missing", "omnifm_site.json is missing", "no data folder"):
        assert expected in result.stderr
    assert not (tmp_path / "run" / "daemon_pid.fl").exists(), "stale pid files are cleared"


# --------------------------------------------------------------------------- compose.yml


def test_compose_has_a_server_and_two_sites_on_one_image():
    services = _compose()["services"]
    assert set(services) == {"fl-server", *SITES}
    assert {s["image"] for s in services.values()} == {"omnifm-flare:0.1.0"}
    build = services["fl-server"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert not any("entrypoint" in s or "command" in s for s in services.values()), "the image entrypoint runs the kit"


@pytest.mark.parametrize("name", ["fl-server", *SITES])
def test_every_container_mounts_its_own_provisioned_kit_read_only(name: str):
    kit = _mounts(_compose()["services"][name])["/workspace/kit"]
    assert kit["read_only"]
    participant = _server()["name"] if name == "fl-server" else name
    assert kit["source"].endswith(f"/{participant}")
    assert participant in {p["name"] for p in _project()["participants"]}


@pytest.mark.parametrize("name", SITES)
def test_sites_mount_data_read_only_and_open_no_port(name: str):
    site = _compose()["services"][name]
    assert _mounts(site)["/data"]["read_only"] is True
    assert "ports" not in site
    assert "fl-server" in site["depends_on"]


def test_sites_reach_the_server_under_its_certificate_name():
    compose = _compose()
    server = compose["services"]["fl-server"]
    aliases = [a for net in server["networks"].values() for a in net.get("aliases", [])]
    assert _server()["name"] in aliases
    port = _server()["fed_learn_port"]
    assert server["ports"] == [f"{port}:{port}"]
    assert "/tmp/nvflare" in _mounts(server), "the server's job store survives a container restart"
