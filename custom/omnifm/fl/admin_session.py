"""The FLARE API session of ``omnifm-admin``: open it from an admin kit, and the job operations over it.

``session`` below is a logged-in ``nvflare.fuel.flare_api.flare_api.Session`` (or a fake with the
same methods in the tests). nvflare is imported inside :func:`open_session` only, so the
command-line tool imports without FLARE. Watching a job is :mod:`omnifm.fl.monitor`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnifm.fl.job_log import identity_conflicts

__all__ = [
    "ADMIN_CONFIG",
    "AdminError",
    "SystemStatus",
    "abort",
    "default_username",
    "download",
    "failure_logs",
    "find_admin_kit",
    "open_session",
    "safe",
    "server_log",
    "stale_jobs",
    "submit",
    "system_status",
]

ADMIN_CONFIG = "fed_admin.json"


class AdminError(Exception):
    """A problem the user fixes (kit, connection, arguments); ``omnifm-admin`` prints it and exits with 2."""


def find_admin_kit(kit: Path) -> Path:
    """The admin kit root (the folder holding ``startup/fed_admin.json``); ``kit`` may be its ``startup``."""
    kit = Path(kit).expanduser()
    if not kit.is_dir():
        raise AdminError(f"admin kit {kit} does not exist: pass --kit <provision workspace>/<project>/prod_NN/<admin>")
    for root in (kit, kit.parent):
        if (root / "startup" / ADMIN_CONFIG).is_file():
            return root.resolve()
    raise AdminError(
        f"{kit} is not an admin startup kit (no startup/{ADMIN_CONFIG}); pass the kit of an admin user "
        "(prod_NN/<admin email>), not a server or site kit"
    )


def default_username(kit: Path) -> str:
    """``username`` in ``fed_admin.json`` if set, else the kit certificate's common name, else the folder name."""
    config = json.loads((kit / "startup" / ADMIN_CONFIG).read_text()).get("admin", {})
    if config.get("username"):
        return str(config["username"])
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = x509.load_pem_x509_certificate((kit / "startup" / config.get("client_cert", "client.crt")).read_bytes())
        return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    except (OSError, ValueError, IndexError, ImportError):
        return kit.name


def _endpoint(kit: Path) -> str:
    config = json.loads((kit / "startup" / ADMIN_CONFIG).read_text()).get("admin", {})
    return f"{config.get('host', '?')}:{config.get('port', '?')}"


def open_session(kit: Path, user: str | None = None, timeout: float = 10.0) -> Any:
    """A logged-in FLARE API session; connection and login problems become :class:`AdminError`."""
    from nvflare.fuel.flare_api.api_spec import AuthenticationError, AuthorizationError, NoConnection
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    root = find_admin_kit(kit)
    user = user or default_username(root)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # FLARE prints "Connecting to FLARE ..." on stdout
            return new_secure_session(user, str(root), timeout=timeout)
    except NoConnection as err:
        raise AdminError(
            f"cannot reach the FLARE server at {_endpoint(root)} within {timeout:g} s ({err}): start the server "
            "(startup/start.sh in its kit), check the host name / port and the firewall, or raise --connect-timeout"
        ) from err
    except (AuthenticationError, AuthorizationError) as err:
        raise AdminError(f"login as {user!r} refused ({err}): use --user matching the kit's certificate") from err


def safe(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Optional information (stats, logs): a failure returns ``None`` instead of stopping the command."""
    try:
        return call(*args, **kwargs)
    except Exception:  # noqa: BLE001 - FLARE raises many types; the caller falls back and says so
        return None


def submit(session: Any, job: Path) -> str:
    """Submit a copy of ``job`` (FLARE signs the submitted folder in place) and return the job id."""
    job = Path(job)
    if not (job / "meta.json").is_file():
        raise AdminError(f"{job} is not a job folder (no meta.json): build one with omnifm-build-job")
    with tempfile.TemporaryDirectory(prefix="omnifm-submit-") as tmp:
        copy = Path(tmp) / job.resolve().name
        shutil.copytree(job, copy, symlinks=False, ignore=shutil.ignore_patterns("__pycache__", ".__nvfl_*"))
        return str(session.submit_job(str(copy)))


def download(session: Any, job_id: str, out: Path | None = None) -> str:
    """Download the job's result (server workspace, logs, models) into ``out`` or the kit's transfer folder."""
    return str(session.download_job_result(job_id, str(out) if out else None))


def abort(session: Any, job_id: str) -> str:
    """Abort a running or queued job; returns FLARE's reply.

    Raises:
        AdminError: FLARE answers "is not running" for a job its store lists as running (a server
            restart left it stale); the message names the fix.
    """
    try:
        return str(session.abort_job(job_id) or f"abort sent for job {job_id}")
    except Exception as err:  # noqa: BLE001 - FLARE's InternalError etc.; only this answer gets a hint
        if "is not running" not in str(err):
            raise
        raise AdminError(
            f"FLARE answers '{err}': if 'omnifm-admin status' lists job {job_id} as RUNNING, a server restart left "
            "it stale and abort cannot end it; on the server host run python provisioning/clear_stale_job.py "
            f"<server kit> {job_id} (docs/DEPLOYMENT.md, section 8)"
        ) from err


@dataclass
class SystemStatus:
    """What ``status`` (no job id) shows: FLARE's system info, the clients' jobs, the job list, and warnings.

    ``conflicts`` is None when the server's log could not be searched (no shell-command right).
    """

    system_info: Any
    client_jobs: list[dict] | None
    jobs: list[dict]
    stale: list[str] = field(default_factory=list)
    conflicts: dict[str, dict[str, Any]] | None = None


def stale_jobs(jobs: list[dict], system_info: Any) -> list[str]:
    """Jobs the job store lists as RUNNING although the server runs no process for them (a server restart)."""
    running = {str(getattr(j, "job_id", "")) for j in (getattr(system_info, "job_info", None) or [])}
    return [str(j.get("job_id")) for j in jobs if j.get("status") == "RUNNING" and str(j.get("job_id")) not in running]


def system_status(session: Any) -> SystemStatus:
    """System info, client job status, job list, stale jobs and identity conflicts (grep of the server log)."""
    system_info, jobs = session.get_system_info(), session.list_jobs()
    grep = safe(session.grep_target, "server", pattern="registered", file="log.txt")
    return SystemStatus(system_info, safe(session.get_client_job_status), jobs, stale_jobs(jobs, system_info),
                        None if grep is None else identity_conflicts(grep))


def server_log(session: Any, job_id: str) -> str:
    """The server's job log (``get_job_logs``: the live log, or the job store's once the job ended); ``""`` if none."""
    reply = safe(session.get_job_logs, job_id, target="server") or {}
    return (reply.get("logs") or {}).get("server") or ""


def _error_log_components(session: Any, job_id: str) -> dict[str, str]:
    """Sites' streamed error logs (job components ``ERRORLOG_<site>``), when the sites allow log streaming."""
    names = [n for n in (safe(session.list_job_components, job_id) or []) if str(n).startswith("ERRORLOG_")]
    folder = safe(session.download_job_components, job_id) if names else None
    if not folder:
        return {}
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.name in names]
    return {p.name.removeprefix("ERRORLOG_"): p.read_text(errors="replace") for p in files}


def _result_logs(session: Any, job_id: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory(prefix="omnifm-result-") as tmp:
        folder = safe(session.download_job_result, job_id, tmp)
        if not folder:
            return {}
        return {str(p.relative_to(folder)): p.read_text(errors="replace") for p in Path(folder).rglob("log*.txt")}


def failure_logs(session: Any, job_id: str) -> dict[str, str]:
    """The job's logs: server log store (all sites) + sites' error logs, else the downloaded result's logs."""
    reply = safe(session.get_job_logs, job_id, target="all") or {}
    logs = {site: text for site, text in (reply.get("logs") or {}).items() if text}
    logs.update(_error_log_components(session, job_id))
    return logs or _result_logs(session, job_id)
