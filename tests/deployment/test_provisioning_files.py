"""provisioning/project.yml and project_he.yml are valid FLARE 2.9 projects that provision real kits.

The kits are made by the real ``nvflare provision`` command into a temporary folder and checked
with FLARE's own readers where it has them (signature verification, require_signed_jobs) and
with ``cryptography`` for the certificate chain.
"""

from __future__ import annotations

import importlib
import inspect
import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

x509 = pytest.importorskip("cryptography.x509")
padding = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.padding")
NameOID = x509.oid.NameOID

ROOT = Path(__file__).resolve().parents[2]
PROVISIONING = ROOT / "provisioning"
PLAIN, HE = PROVISIONING / "project.yml", PROVISIONING / "project_he.yml"
PROJECTS = [PLAIN, HE]
ROLES = {"project_admin", "org_admin", "lead"}
HE_BUILDER = "nvflare.lighter.impl.he.HEBuilder"
STANDARD_BUILDERS = [
    "nvflare.lighter.impl.workspace.WorkspaceBuilder",
    "nvflare.lighter.impl.static_file.StaticFileBuilder",
    "nvflare.lighter.impl.cert.CertBuilder",
    "nvflare.lighter.impl.signature.SignatureBuilder",
]
sys.path.insert(0, str(PROVISIONING))
allow_omnifm = importlib.import_module("allow_omnifm")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _of_type(project: dict, kind: str) -> list[dict]:
    return [p for p in project["participants"] if p["type"] == kind]


def _builder_paths(project: dict) -> list[str]:
    return [b["path"] for b in project["builders"]]


def _server(project: dict) -> dict:
    (server,) = _of_type(project, "server")
    return server


def _nvflare_cli() -> list[str]:
    script = Path(sys.executable).with_name("nvflare")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nvflare.cli"]


def _provision(project: Path, workspace: Path) -> Path:
    """Run ``nvflare provision`` and return the prod_00 folder with the kits."""
    cmd = [*_nvflare_cli(), "provision", "-p", str(project), "-w", str(workspace), "--force"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=workspace.parent)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return workspace / _load(project)["name"] / "prod_00"


@pytest.fixture(scope="module")
def plain_kits(tmp_path_factory) -> Path:
    return _provision(PLAIN, tmp_path_factory.mktemp("plain") / "ws")


@pytest.fixture(scope="module")
def he_kits(tmp_path_factory) -> Path:
    pytest.importorskip("tenseal")
    return _provision(HE, tmp_path_factory.mktemp("he") / "ws")


def _cert(path: Path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def _attr(cert, oid) -> str:
    return cert.subject.get_attributes_for_oid(oid)[0].value


def _signed_by(cert, root) -> bool:
    try:
        root.public_key().verify(
            cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm
        )
    except Exception:  # cryptography raises InvalidSignature; any failure means "not signed by root"
        return False
    return True


# --------------------------------------------------------------------------- the yml files


@pytest.mark.parametrize("path", PROJECTS, ids=lambda p: p.name)
def test_project_is_api_v3_with_one_server_three_sites_and_all_roles(path: Path):
    project = _load(path)
    assert project["api_version"] == 3
    assert project["name"] == "omnifm"
    assert "." in _server(project)["name"], "the server name is its host name (FQDN)"
    sites = _of_type(project, "client")
    assert len(sites) >= 3
    assert len({s["org"] for s in sites}) == len(sites), "one hospital (org) per site"
    assert {a["role"] for a in _of_type(project, "admin")} >= ROLES


@pytest.mark.parametrize("path", PROJECTS, ids=lambda p: p.name)
def test_project_asks_for_mutual_tls_and_signed_jobs(path: Path):
    project = _load(path)
    assert project["connection_security"] == "mtls"
    assert all(p.get("connection_security", "mtls") == "mtls" for p in project["participants"])
    static = next(b for b in project["builders"] if b["path"].endswith("StaticFileBuilder"))
    assert static["args"]["require_signed_jobs"] is True


@pytest.mark.parametrize("path", PROJECTS, ids=lambda p: p.name)
def test_standard_builders_in_order_and_he_builder_only_in_he_project(path: Path):
    paths = _builder_paths(_load(path))
    assert [p for p in paths if p != HE_BUILDER] == STANDARD_BUILDERS
    if path == HE:
        assert paths.index(HE_BUILDER) < paths.index(STANDARD_BUILDERS[-1]), "sign after the contexts exist"
    else:
        assert HE_BUILDER not in paths


def test_he_project_is_the_plain_project_plus_the_he_builder():
    plain, he = _load(PLAIN), _load(HE)
    assert [b for b in he["builders"] if b["path"] != HE_BUILDER] == plain["builders"]
    assert {k: v for k, v in he.items() if k != "builders"} == {k: v for k, v in plain.items() if k != "builders"}


@pytest.mark.parametrize(
    "path, builder",
    [pytest.param(p, b, id=f"{p.stem}-{b['path'].rsplit('.', 1)[-1]}") for p in PROJECTS for b in _load(p)["builders"]],
)
def test_builder_path_imports_and_args_bind(path: Path, builder: dict):
    if builder["path"] == HE_BUILDER:
        pytest.importorskip("tenseal")
    module, _, name = builder["path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    inspect.signature(cls.__init__).bind(None, **builder.get("args", {}))  # raises TypeError on a bad arg


# --------------------------------------------------------------------------- provisioned kits


def test_every_participant_gets_a_kit(plain_kits: Path):
    names = {p["name"] for p in _load(PLAIN)["participants"]}
    assert {d.name for d in plain_kits.iterdir() if d.is_dir()} == names


def test_server_kit_has_tls_material_and_config(plain_kits: Path):
    server = _server(_load(PLAIN))
    startup = plain_kits / server["name"] / "startup"
    for name in ("fed_server.json", "rootCA.pem", "server.crt", "server.key", "start.sh", "sub_start.sh"):
        assert (startup / name).is_file(), name
    config = json.loads((startup / "fed_server.json").read_text())
    (service,) = config["servers"]
    assert service["service"]["target"] == f"{server['name']}:{server['fed_learn_port']}"
    assert service["connection_security"] == "mtls"
    assert config["require_signed_jobs"] is True


@pytest.mark.parametrize("kind", ["client", "admin"])
def test_site_and_admin_kits_point_at_the_server_with_their_own_keys(plain_kits: Path, kind: str):
    project = _load(PLAIN)
    server = _server(project)
    for person in _of_type(project, kind):
        startup = plain_kits / person["name"] / "startup"
        assert {"client.crt", "client.key", "rootCA.pem"} <= {p.name for p in startup.iterdir()}
        if kind == "client":
            config = json.loads((startup / "fed_client.json").read_text())
            assert config["servers"][0]["service"]["target"] == f"{server['name']}:{server['fed_learn_port']}"
            assert config["client"]["connection_security"] == "mtls"
        else:
            admin = json.loads((startup / "fed_admin.json").read_text())["admin"]
            assert (admin["host"], admin["port"], admin["username"]) == (
                server["name"],
                server["fed_learn_port"],
                person["name"],
            )


def test_private_keys_are_owner_only(plain_kits: Path):
    keys = sorted(plain_kits.glob("*/startup/*.key"))
    assert len(keys) == len(_load(PLAIN)["participants"])
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_certificates_chain_to_the_project_root_and_carry_identity(plain_kits: Path):
    project = _load(PLAIN)
    for person in project["participants"]:
        startup = plain_kits / person["name"] / "startup"
        root = _cert(startup / "rootCA.pem")
        cert = _cert(startup / ("server.crt" if person["type"] == "server" else "client.crt"))
        assert _signed_by(cert, root), person["name"]
        assert _attr(cert, NameOID.COMMON_NAME) == person["name"]
        assert _attr(cert, NameOID.ORGANIZATION_NAME) == person["org"]
        if person["type"] == "admin":
            assert _attr(cert, NameOID.UNSTRUCTURED_NAME) == person["role"]


def test_server_certificate_names_the_host_the_sites_dial(plain_kits: Path):
    server = _server(_load(PLAIN))
    cert = _cert(plain_kits / server["name"] / "startup" / "server.crt")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert server["name"] in names.get_values_for_type(x509.DNSName)


def test_a_second_provisioning_is_a_different_federation(plain_kits: Path, tmp_path: Path):
    other = _provision(PLAIN, tmp_path / "ws")
    site = _cert(other / "site-1" / "startup" / "client.crt")
    assert not _signed_by(site, _cert(plain_kits / "site-1" / "startup" / "rootCA.pem")), "foreign kit must not chain"
    assert _signed_by(site, _cert(other / "site-1" / "startup" / "rootCA.pem"))


def test_flare_requires_signed_jobs_on_every_site(plain_kits: Path):
    fed_utils = pytest.importorskip("nvflare.private.fed.utils.fed_utils")
    from nvflare.apis.workspace import Workspace

    for site in _of_type(_load(PLAIN), "client"):
        workspace = Workspace(root_dir=str(plain_kits / site["name"]), site_name=site["name"])
        assert fed_utils.require_signed_jobs(workspace, "fed_client.json") is True


def test_sites_do_not_stream_logs_and_plain_kits_are_unsigned(plain_kits: Path):
    for site in _of_type(_load(PLAIN), "client"):
        local = plain_kits / site["name"] / "local"
        assert json.loads((local / "resources.json.default").read_text())["allow_log_streaming"] is False
    assert not list(plain_kits.glob("*/*/signature.json")), "FLARE 2.9 signs only HE/CC kits"


# --------------------------------------------------------------------------- HE kits


@pytest.mark.he
def test_he_kits_carry_the_tenseal_contexts(he_kits: Path):
    project = _load(HE)
    assert (he_kits / _server(project)["name"] / "startup" / "server_context.tenseal").stat().st_size > 0
    for site in _of_type(project, "client"):
        assert (he_kits / site["name"] / "startup" / "client_context.tenseal").stat().st_size > 0
    for admin in _of_type(project, "admin"):
        assert not list((he_kits / admin["name"]).rglob("*.tenseal")), "admins get no HE context"


@pytest.mark.he
def test_he_kits_are_signed_and_tampering_is_detected(he_kits: Path, tmp_path: Path):
    from nvflare.lighter.utils import verify_folder_signature

    kits = [he_kits / p["name"] for p in _load(HE)["participants"] if p["type"] in ("server", "client")]
    for kit in kits:
        for folder in ("startup", "local"):
            root_ca = str(kit / "startup" / "rootCA.pem")
            assert verify_folder_signature(str(kit / folder), root_ca, True, "signature.json"), kit / folder
    tampered = shutil.copytree(kits[-1], tmp_path / "tampered")
    with open(tampered / "startup" / "fed_client.json", "a") as handle:
        handle.write(" ")
    assert not verify_folder_signature(
        str(tampered / "startup"), str(tampered / "startup" / "rootCA.pem"), True, "signature.json"
    )


@pytest.mark.he
def test_server_context_cannot_decrypt_but_adds_what_sites_encrypt(he_kits: Path):
    ts = pytest.importorskip("tenseal")
    project = _load(HE)
    server = ts.context_from((he_kits / _server(project)["name"] / "startup" / "server_context.tenseal").read_bytes())
    sites = [
        ts.context_from((he_kits / s["name"] / "startup" / "client_context.tenseal").read_bytes())
        for s in _of_type(project, "client")
    ]
    assert not server.is_private() and all(site.is_private() for site in sites)
    weights, values = [0.5, 0.3, 0.2], [[1.0, -2.0, 3.5], [0.0, 4.0, -1.0], [2.0, 2.0, 2.0]]
    encrypted = [ts.ckks_vector(site, v).serialize() for site, v in zip(sites, values)]
    total = sum(ts.ckks_vector_from(server, e) * w for e, w in zip(encrypted, weights))
    decrypted = ts.ckks_vector_from(sites[0], total.serialize()).decrypt()
    expected = [sum(w * v[i] for w, v in zip(weights, values)) for i in range(3)]
    assert max(abs(a - b) for a, b in zip(decrypted, expected)) < 1e-3


# --------------------------------------------------------------------------- allow_omnifm.py


def _component_paths(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["path"]] if isinstance(node.get("path"), str) and "." in node["path"] else []
        return own + [p for value in node.values() for p in _component_paths(value)]
    if isinstance(node, list):
        return [p for value in node for p in _component_paths(value)]
    return []


class _KitWorkspace:
    """What FLARE's component authorizer asks a workspace for."""

    def __init__(self, kit: Path):
        self.kit = kit

    def get_resources_file_path(self) -> str:
        return str(self.kit / "local" / "resources.json")


def test_allow_omnifm_lets_the_server_build_every_job_component(plain_kits: Path, tmp_path: Path):
    authorizer = pytest.importorskip("nvflare.app_common.widgets.component_path_authorizer")
    kit = shutil.copytree(plain_kits / _server(_load(PLAIN))["name"], tmp_path / "server")
    written = allow_omnifm.allow_omnifm(kit)
    default = json.loads((kit / "local" / "resources.json.default").read_text())
    config = json.loads(written.read_text())
    assert config["class_allow_list"] == default["class_allow_list"] + ["omnifm."]
    assert default["servers"][0]["heart_beat_timeout"] == 600 and config["servers"][0]["heart_beat_timeout"] == 120
    default["servers"][0]["heart_beat_timeout"] = 120
    assert {k: v for k, v in config.items() if k != "class_allow_list"} == {
        k: v for k, v in default.items() if k != "class_allow_list"
    }, "everything else stays as provisioned"
    jobs = ROOT.glob("jobs/*/app/config/config_fed_server.json")
    paths = [p for job in jobs for p in _component_paths(json.loads(job.read_text()))]
    assert any(p.startswith("omnifm.") for p in paths)
    for path in paths:
        authorizer.ComponentPathAuthorizer().authorize_component_config(
            {"id": "c", "path": path, "args": {}}, workspace=_KitWorkspace(kit)
        )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda kits, tmp: kits / "admin@omnifm.example", "is not a server or site kit"),
        (lambda kits, tmp: tmp / "missing", "is not a server or site kit"),
    ],
    ids=["admin-kit", "missing-kit"],
)
def test_allow_omnifm_refuses_a_non_site_kit(plain_kits: Path, tmp_path: Path, make, message: str):
    with pytest.raises(ValueError, match=message):
        allow_omnifm.allow_omnifm(make(plain_kits, tmp_path))


def test_allow_omnifm_does_not_overwrite_without_force(plain_kits: Path, tmp_path: Path):
    kit = shutil.copytree(plain_kits / "site-1", tmp_path / "site")
    (kit / "local" / "resources.json").write_text("{}")
    with pytest.raises(ValueError, match="--force"):
        allow_omnifm.allow_omnifm(kit)
    assert allow_omnifm.main([str(kit), "--force"]) == 0
    assert "omnifm." in json.loads((kit / "local" / "resources.json").read_text())["class_allow_list"]


# --------------------------------------------------------------------------- hardened site authorization


SITE_AUTHZ = ROOT / "site_configs" / "authorization.json"


def _may(policy: dict, site_org: str, role: str, user_org: str, command: str) -> bool:
    from nvflare.fuel.sec.authz import AuthzContext, Person
    from nvflare.security.security import FLAuthorizer

    user = Person(f"someone@{user_org}", user_org, role)
    allowed, _ = FLAuthorizer(site_org, policy).authorize(AuthzContext(right=command, user=user, submitter=user))
    return allowed


@pytest.mark.parametrize("command", ["cat", "ls", "grep", "tail", "head", "pwd"])
def test_hardened_site_authorization_keeps_shell_commands_to_the_sites_own_it(plain_kits: Path, command: str):
    """Issue 13, item 17: a researcher must not `cat site-2 local/omnifm_site.json` on its org's site."""
    default = json.loads((plain_kits / "site-2" / "local" / "authorization.json.default").read_text())
    assert _may(default, "hospital_b", "lead", "hospital_b", command), "premise: FLARE's default lets the lead"
    hardened = json.loads(SITE_AUTHZ.read_text())
    assert not _may(hardened, "hospital_b", "lead", "hospital_b", command)
    assert not _may(hardened, "hospital_b", "project_admin", "omnifm_consortium", command)
    assert _may(hardened, "hospital_b", "org_admin", "hospital_b", command), "the hospital's own IT admin keeps it"
    assert not _may(hardened, "hospital_b", "org_admin", "hospital_a", command)


def test_hardened_site_authorization_keeps_every_other_right_a_federation_needs(plain_kits: Path):
    default = json.loads((plain_kits / "site-2" / "local" / "authorization.json.default").read_text())
    hardened = json.loads(SITE_AUTHZ.read_text())
    assert set(hardened["permissions"]) == set(default["permissions"]), "the same roles as provisioned"
    for role in ("lead", "org_admin"):
        assert set(hardened["permissions"][role]) == set(default["permissions"][role]), role
    for role, org in (("lead", "hospital_b"), ("project_admin", "omnifm_consortium")):
        for right in ("submit_job", "byoc", "check_status", "list_jobs", "abort_job", "download_job"):
            assert _may(hardened, "hospital_b", role, org, right), (role, right)
    assert _may(hardened, "hospital_b", "project_admin", "omnifm_consortium", "restart")
    assert not _may(hardened, "hospital_b", "lead", "hospital_b", "shutdown"), "researchers do not operate sites"
    assert not _may(hardened, "hospital_b", "org_admin", "hospital_b", "submit_job")


@pytest.mark.parametrize("name", ["omnifm_site.nifti.json", "omnifm_site.dicom.json", "omnifm_site.phantom.json"])
def test_site_config_templates_keep_the_data_outside_the_kit(name: str):
    """FLARE's shell commands reach only relative paths inside the kit's workspace; data must not live there."""
    data_root = json.loads((ROOT / "site_configs" / name).read_text())["data_root"]
    assert Path(data_root).is_absolute(), f"{name}: data_root {data_root!r} is relative to local/, i.e. inside the kit"
