"""Helpers for the end-to-end deployment test: provision, fill ``local/``, start kits, stop them.

Everything runs on loopback from a temporary folder. Processes are started from the startup
kits' own ``startup/sub_start.sh --once`` (which ``exec``s the FLARE server/client), each in its
own session, so that :func:`stop` can kill the process and every child (job processes) by its
process-group id.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import psutil
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ADMIN = "admin@omnifm.example"
SERVER = "localhost"
SITE_RESOURCES = REPO / "site_configs" / "resources.json"
PHANTOM_LABELS = {"0": "background", "1": "necrotic", "2": "edema", "4": "enhancing"}


@dataclass
class Federation:
    """Paths of one provisioning's startup kits."""

    root: Path
    port: int
    server: Path
    sites: dict[str, Path]
    admin: Path


@dataclass
class Proc:
    """A started kit: its ``Popen``, log file and name."""

    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        """Whether the kit's main process is still running."""
        return self.popen.poll() is None

    def text(self) -> str:
        """The process's captured output so far."""
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run a console command with the venv first on PATH; raise with its output if it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=kit_env(), **kwargs)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def kit_env() -> dict[str, str]:
    """Environment for kits and tools: this venv's python first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    # the server and every site run on this one machine: one PyTorch thread each (not one per core
    # each), as tests/integration/test_simulator.py's simulator_env does for the simulator's clients
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def provision(project_yml: Path, out: Path, port: int | None = None) -> Federation:
    """Provision ``project_yml`` into ``out`` with the server renamed to ``localhost`` on a free port.

    The repository's project names a real host; only the server's name (its certificate CN and
    the address in every kit) and its port are changed, everything else is provisioned as is.
    """
    port = port or free_port()
    project = yaml.safe_load(project_yml.read_text())
    server = next(p for p in project["participants"] if p["type"] == "server")
    server.update(name=SERVER, fed_learn_port=port)
    server.pop("admin_port", None)
    out.mkdir(parents=True, exist_ok=True)
    local_yml = out / project_yml.name
    local_yml.write_text(yaml.safe_dump(project, sort_keys=False))
    run([str(VENV_BIN / "nvflare"), "provision", "-p", str(local_yml), "-w", str(out / "ws")])
    prod = sorted((out / "ws" / project["name"]).glob("prod_*"))[-1]
    sites = {p["name"]: prod / p["name"] for p in project["participants"] if p["type"] == "client"}
    return Federation(out, port, prod / SERVER, sites, prod / ADMIN)


def prepare_server(kit: Path, storage: Path, heart_beat_timeout: float = 45) -> None:
    """Allow-list ``omnifm.`` (provisioning/allow_omnifm.py) and keep job/snapshot storage in ``storage``.

    The provisioned default stores jobs and snapshots under ``/tmp/nvflare``, shared by every
    FLARE process on the machine; a test federation gets its own folders. ``heart_beat_timeout``
    is the shipped 120 s scaled down to CI size, like the jobs' round timeouts.
    """
    run([sys.executable, str(REPO / "provisioning" / "allow_omnifm.py"), str(kit),
         "--heart-beat-timeout", str(heart_beat_timeout)])
    path = kit / "local" / "resources.json"
    config = json.loads(path.read_text())
    storage_args = config["snapshot_persistor"]["args"]["storage"]["args"]
    storage_args["root_dir"] = str(storage / "snapshot-storage")
    for comp in config["components"]:
        if comp["id"] == "job_manager":
            comp["args"]["uri_root"] = str(storage / "jobs-storage")
    path.write_text(json.dumps(config, indent=2))


def prepare_site(kit: Path, data_root: Path, modality: str) -> None:
    """Fill a site kit's ``local/`` as hospital IT would: resources.json + omnifm_site.json."""
    shutil.copy(SITE_RESOURCES, kit / "local" / "resources.json")
    site_config = {
        "format": "nifti",
        "data_root": str(data_root),
        "modalities": [modality],
        "label_map": PHANTOM_LABELS,
        "split": {"val_fraction": 0.25, "seed": 0},
    }
    (kit / "local" / "omnifm_site.json").write_text(json.dumps(site_config, indent=2))


def make_phantom(out: Path, sites: int, cases: int = 4, shape: tuple[int, ...] = (32, 32, 8)) -> dict[str, str]:
    """Write a tiny phantom federation with ``omnifm-make-phantom``; returns site -> modality."""
    run([str(VENV_BIN / "omnifm-make-phantom"), "--out", str(out), "--sites", str(sites), "--cases", str(cases),
         "--shape", *map(str, shape), "--modalities", "t1", "t2", "flair"])
    datalists = {d.name: json.loads((d / "datalist.json").read_text()) for d in sorted(out.iterdir())}
    return {site: datalist["cases"][0]["modality"] for site, datalist in datalists.items()}


def start(kit: Path, name: str, logs: Path) -> Proc:
    """Start a server or client kit with ``startup/sub_start.sh --once`` in its own process group."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with open(log, "ab") as handle:
        popen = subprocess.Popen(
            ["bash", str(kit / "startup" / "sub_start.sh"), "--once"],
            cwd=kit, stdout=handle, stderr=subprocess.STDOUT, env=kit_env(), start_new_session=True,
        )
    return Proc(name, popen, log)


def stop(proc: Proc, grace: float = 10.0) -> None:
    """Stop a kit and every process it started, by PID: SIGTERM, then SIGKILL after ``grace`` s.

    FLARE starts each job's server/client process in a new session (``setsid``), so the kit's
    process group does not cover them; the process tree is collected first and each PID is
    signalled. ``grace=0`` kills at once (a crash).
    """
    tree = _tree(proc.popen.pid)
    if grace > 0:
        _signal(tree, signal.SIGTERM)
        _, tree = psutil.wait_procs(tree, timeout=grace)
    _signal(tree, signal.SIGKILL)
    psutil.wait_procs(tree, timeout=10)
    try:
        proc.popen.wait(timeout=10)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"{proc.name} (pid {proc.popen.pid}) survived SIGKILL") from err


def _tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and all its descendants (empty if it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal(procs: list[psutil.Process], sig: int) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, procs: Sequence[Proc] = (), poll: float = 2.0
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` and dead processes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        dead = [p.name for p in procs if not p.alive()]
        if dead:
            raise AssertionError(f"waiting for {what}: {dead} exited\n" + "\n".join(p.text()[-3000:] for p in procs))
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# A FLARE API query in a fresh interpreter. In the pytest process a session can inherit FLARE state
# that earlier in-process tests left behind: after tests/fl/test_he_aggregation.py ran in the same
# process (which happens under pytest-xdist, where a worker runs several files), the server
# rejected every admin message as unauthenticated ("missing client name") and no site ever
# showed as registered.
_QUERY = """
import json, sys
from nvflare.fuel.flare_api.flare_api import new_secure_session
user, kit, timeout, what, *args = sys.argv[1:]
sess = new_secure_session(user, kit, timeout=float(timeout))
try:
    if what == "clients":
        out = sorted(c.name for c in sess.get_system_info().client_info)
    elif what == "job_status":
        out = str(sess.get_job_meta(args[0]).get("status"))
    else:
        out = sess.check_status("client")
    print(json.dumps(out, default=str))
finally:
    sess.close()
"""


def query(fed: Federation, what: str, *args: str, timeout: float = 30.0):
    """As the project admin, through a FLARE API session in a new process: ``clients`` (the names the
    server lists), ``job_status <id>`` or ``client_status``. Raises RuntimeError if the session fails."""
    cmd = [sys.executable, "-c", _QUERY, ADMIN, str(fed.admin), str(timeout), what, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60, env=kit_env())
    if done.returncode != 0:
        raise RuntimeError(f"FLARE API query {what!r} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def connected_clients(fed: Federation) -> set[str]:
    """Clients the server currently lists (``get_system_info``); empty if the server is not up yet."""
    try:
        return set(query(fed, "clients", timeout=10.0))
    except (RuntimeError, subprocess.TimeoutExpired, ValueError, IndexError):  # not listening yet: keep polling
        return set()


def admin(fed: Federation, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``omnifm-admin --kit <admin kit> ...``; returns the completed process (any exit code)."""
    cmd = [str(VENV_BIN / "omnifm-admin"), "--kit", str(fed.admin), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=kit_env())


def build_job(
    job: Path, out: Path, mode: str, rounds: int, *sets: str, name: str | None = None, min_clients: int = 2
) -> Path:
    """Build a CI-sized job with ``omnifm-build-job``: all sites, ``min_clients``, ``rounds`` rounds, 1 epoch.

    ``sets`` are extra ``--set [server:|client:]KEY=VALUE`` overrides. Returns the built job folder.
    """
    name = name or job.name
    small = ["client:executor.local_epochs=1", "client:executor.batch_size=8", *sets]
    cmd = [str(VENV_BIN / "omnifm-build-job"), str(job), "--out", str(out), "--mode", mode, "--name", name,
           "--sites", "@ALL", "--min-clients", str(min_clients), "--num-rounds", str(rounds)]
    run(cmd + [arg for value in small for arg in ("--set", value)])
    return out / name


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def submit(fed: Federation, job: Path) -> str:
    """``omnifm-admin submit <job>``; returns the job id it printed."""
    done = admin(fed, "submit", str(job), timeout=120)
    found = UUID.findall(done.stdout)
    if done.returncode != 0 or not found:
        raise AssertionError(f"omnifm-admin submit exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return found[-1]


def monitor(fed: Federation, job_id: str, timeout: float) -> subprocess.CompletedProcess:
    """``omnifm-admin monitor <job-id> --timeout S`` (exit 0 means FINISHED_COMPLETED)."""
    return admin(fed, "monitor", job_id, "--timeout", str(int(timeout)), timeout=timeout + 60)


def download(fed: Federation, job_id: str, out: Path) -> Path:
    """``omnifm-admin download <job-id> --out <out>``; returns ``out``."""
    done = admin(fed, "download", job_id, "--out", str(out), timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"omnifm-admin download exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return out


def job_status(fed: Federation, job_id: str) -> str:
    """The job's status in the server's job store (e.g. ``FINISHED:COMPLETED``, ``ABANDONED``)."""
    return str(query(fed, "job_status", job_id))


def job_log(kit: Path, job_id: str) -> str:
    """A kit's job log (``<kit>/<job-id>/log.txt``), empty until the job's process writes it."""
    path = kit / job_id / "log.txt"
    return path.read_text(errors="replace") if path.is_file() else ""


def copy_kit(kit: Path, dest: Path) -> Path:
    """A copy of a startup kit (``startup/`` + ``local/`` only), as someone would carry it elsewhere."""
    dest.mkdir(parents=True)
    for part in ("startup", "local"):
        shutil.copytree(kit / part, dest / part)
    return dest
