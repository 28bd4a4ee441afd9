"""``omnifm-admin``: submit, watch, download and abort OmniFM jobs over the FLARE API (mutual TLS).

Example::

    omnifm-admin --kit workspace/omnifm/prod_00/admin@hospital-a.org status
    omnifm-admin --kit <kit> submit build/omnifm_seg          # prints the job id
    omnifm-admin --kit <kit> monitor <job-id> --timeout 3600  # rounds + per-site metrics; exit 0 if completed
    omnifm-admin --kit <kit> download <job-id> --out results
    omnifm-admin --kit <kit> abort <job-id>

``--kit`` is an admin startup kit made by ``nvflare provision`` (the folder holding
``startup/fed_admin.json``). The user defaults to the certificate's common name. ``submit`` sends a
temporary copy because FLARE signs the submitted folder in place.

Exit codes: 0 done / job completed; 1 the job ended abnormally (its error lines are printed);
2 a usage, kit or connection problem (the message names the fix); 3 ``monitor`` timed out.
This module is the command line and its printing only: the FLARE API session and the job
operations are :mod:`omnifm.fl.admin_session`, watching a job is :mod:`omnifm.fl.monitor` (per-site
metrics from the server's record, :mod:`omnifm.fl.metrics_record`), FLARE's log lines are read by
:mod:`omnifm.fl.job_log`; all tested with a fake session. :func:`main` wires them to a real ``Session``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from omnifm.fl.admin_session import AdminError, SystemStatus, abort, download, open_session, safe, submit, system_status
from omnifm.fl.monitor import EXIT_JOB_FAILED, EXIT_OK, EXIT_TIMEOUT, job_progress, monitor, progress_line

__all__ = [
    "EXIT_JOB_FAILED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "build_parser",
    "format_jobs_table",
    "format_status",
    "main",
    "status",
]

EXIT_USAGE = 2
_DETAIL_KEYS = ("job_id", "name", "status", "submitter_name", "submit_time_iso", "start_time", "duration")


# ---------------------------------------------------------------- printing


def status(session: Any, job_id: str | None = None) -> str:
    """System status and the jobs table, or one job's details and round progress."""
    if job_id:
        meta = session.get_job_meta(job_id)
        details = [f"{key}: {meta[key]}" for key in _DETAIL_KEYS if meta.get(key) not in (None, "")]
        details.append(f"deploy_map: {json.dumps(meta.get('deploy_map', {}))}")
        return "\n".join([progress_line(meta, job_progress(session, meta)), *details])
    found = system_status(session)
    lines = [format_status(found.system_info, found.client_jobs), "", format_jobs_table(found.jobs)]
    warnings = _warnings(found)
    return "\n".join(lines + ([""] + warnings if warnings else []))


def _warnings(found: SystemStatus) -> list[str]:
    warnings = [_stale_warning(job) for job in found.stale]
    if found.conflicts is None:
        warnings.append("note: identity-conflict check skipped: this admin may not run shell commands on the server "
                        "(grep of its log.txt); a project_admin can")
        return warnings
    return warnings + [_conflict_warning(site, e) for site, e in sorted(found.conflicts.items())]


def _conflict_warning(site: str, entry: dict[str, Any]) -> str:
    return (
        f"warning: identity conflict for {site}: the server refused {entry['refused']} heartbeat(s) of a {site} "
        f"process whose registration another process with {site}'s certificate took over (first {entry['first']}, "
        f"last {entry['last']}; {entry['relogins']} re-registration(s) of {site}). Two processes run {site}'s kit: "
        "a copy of the kit elsewhere, or the kit started twice. The last to register is the one connected; the "
        f"other is locked out until it restarts. Check with {site}'s IT which one is theirs; to revoke a copied kit "
        "see docs/DEPLOYMENT.md, 'One kit, one place'."
    )


def _stale_warning(job_id: str) -> str:
    return (
        f"warning: job {job_id} is RUNNING in the job store, but the server runs no process for it: it was "
        "interrupted by a server restart, and FLARE 2.9 neither resumes nor aborts it (abort answers 'is not "
        "running'). Continue with a new job and clear the stale entry: docs/DEPLOYMENT.md, section 8."
    )


def format_jobs_table(jobs: list[dict]) -> str:
    """Job id, name, status, submit time and duration, one job a line."""
    if not jobs:
        return "no jobs"
    columns = ("job_id", "job_name", "status", "submit_time", "duration")
    cells = [list(columns)] + [[str(job.get(name, "")) for name in columns] for job in jobs]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(" ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def format_status(system_info: Any, client_jobs: list[dict] | None) -> str:
    """Server status and start time, then one line per connected client with its job status."""
    server = system_info.server_info
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(server.start_time)) if server.start_time else "?"
    lines = [f"server: reachable, started {started}, engine {server.status}"]
    by_client: dict[str, list[str]] = {}
    for entry in client_jobs or []:
        by_client.setdefault(entry.get("client_name", "?"), []).append(_client_job_text(entry))
    if not system_info.client_info:
        lines.append("clients: none connected")
    for client in system_info.client_info:
        seen = time.strftime("%H:%M:%S", time.localtime(client.last_connect_time)) if client.last_connect_time else "?"
        jobs = ", ".join(by_client.get(client.name, [])) or "?"
        lines.append(f"client {client.name}: last seen {seen}, {jobs}")
    return "\n".join(lines)


def _client_job_text(entry: dict) -> str:
    if entry.get("job_id"):
        return f"job {entry['job_id']} {entry.get('status', '')}".strip()
    return str(entry.get("status", "?"))


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``omnifm-admin``."""
    parser = argparse.ArgumentParser(
        prog="omnifm-admin", description="Submit and watch OmniFM jobs over the FLARE API."
    )
    parser.add_argument(
        "--kit", type=Path, required=True, help="admin startup kit (folder holding startup/fed_admin.json)"
    )
    parser.add_argument("--user", help="admin user name (default: the common name of the kit's certificate)")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to reach the server (default 10)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("submit", help="submit a job folder; prints the job id").add_argument("job", type=Path)
    commands.add_parser("status", help="server, clients and jobs; or one job").add_argument("job_id", nargs="?")
    watch = commands.add_parser("monitor", help="follow a job until it ends; exit 0 only if it completed")
    watch.add_argument("job_id")
    watch.add_argument("--timeout", type=float, default=0.0, help="give up after S seconds (0: never; exit 3)")
    watch.add_argument("--poll", type=float, default=5.0, help="seconds between polls (default 5)")
    fetch = commands.add_parser("download", help="download a job's result")
    fetch.add_argument("job_id")
    fetch.add_argument("--out", type=Path, help="destination folder (default: the kit's transfer folder)")
    commands.add_parser("abort", help="abort a job").add_argument("job_id")
    return parser


def _run(session: Any, args: argparse.Namespace) -> int:
    if args.command == "submit":
        print(submit(session, args.job))
    elif args.command == "status":
        print(status(session, args.job_id))
    elif args.command == "monitor":
        return monitor(session, args.job_id, timeout=args.timeout, poll=args.poll, emit=lambda s: print(s, flush=True))
    elif args.command == "download":
        print(download(session, args.job_id, args.out))
    else:
        print(abort(session, args.job_id))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring for the exit codes."""
    args = build_parser().parse_args(argv)
    try:
        session = open_session(args.kit, args.user, args.connect_timeout)
    except AdminError as err:
        print(f"omnifm-admin: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run(session, args)
    except AdminError as err:
        print(f"omnifm-admin: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - FLARE API errors (JobNotFound, InvalidJobDefinition, ...)
        print(f"omnifm-admin {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        safe(session.close)


if __name__ == "__main__":
    sys.exit(main())
