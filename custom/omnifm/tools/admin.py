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
The logic lives in small functions (job progress, per-site metric lines, error lines) that are
tested with a fake session; :func:`main` only wires them to a real ``Session``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AdminError",
    "MonitorState",
    "abort",
    "build_parser",
    "default_username",
    "download",
    "find_admin_kit",
    "format_jobs_table",
    "format_metrics_table",
    "format_status",
    "identity_conflicts",
    "main",
    "missing_sites_text",
    "monitor",
    "parse_rounds",
    "parse_site_metrics",
    "progress_line",
    "progress_text",
    "reason_lines",
    "stale_jobs",
    "submit",
]

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
COMPLETED = "FINISHED:COMPLETED"
ADMIN_CONFIG = "fed_admin.json"
_METRIC_LINE = re.compile(r"round (\d+) ([A-Za-z0-9][\w.@-]*): n=(\d+)((?: [\w.-]+=\S+)*)\s*$")
_ROUND_LINE = re.compile(r"Round (\d+) (started|finished)\.")
# ScatterAndGather's lines for a site's reply to round R: accepted/rejected, an ignored error reply, a fatal one.
_REPLY_LINES = (
    re.compile(r"Contribution from ([\w.@-]+) (?:ACCEPTED|REJECTED) by the aggregator at round (\d+)"),
    re.compile(r"Ignore the result from ([\w.@-]+) at round (\d+)"),
    re.compile(r"Result from ([\w.@-]+) is bad\b.*? at round (\d+)"),
)
# FLARE's client manager (server log) when two processes hold one site identity.
_CONFLICT = re.compile(r"Failed to re-activate the client:\s*([\w.@-]+): already registered with another token")
_RELOGIN = re.compile(r"Client: ([\w.@-]+) already registered\. Re-login the client with a new token")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)")
REPEAT_WAITING_S = 60.0
_RUNNER_DONE = "Server runner finished."
_REASON = re.compile(
    r"\bERROR\b|\bCRITICAL\b|panic|FATAL|Traceback|\w+(Error|Exception)\b:|rejected contribution"
    r"|asked to abort|Abort signal received"
)
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]?\d*\s*(-\s*)?")
_DETAIL_KEYS = ("job_id", "name", "status", "submitter_name", "submit_time_iso", "start_time", "duration")


class AdminError(Exception):
    """A problem the user fixes (kit, connection, arguments); ``main`` prints it and exits with 2."""


# ---------------------------------------------------------------- kit and session


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


# ---------------------------------------------------------------- pure helpers


def parse_site_metrics(log_text: str) -> dict[tuple[int, str], dict[str, float]]:
    """Per-(round, site) metrics from the aggregator's ``round R site: n=N key=value ...`` server log lines."""
    rows: dict[tuple[int, str], dict[str, float]] = {}
    for line in log_text.splitlines():
        match = _METRIC_LINE.search(line)
        if not match:
            continue
        values = {"n": float(match.group(3))}
        for pair in match.group(4).split():
            key, _, raw = pair.partition("=")
            try:
                values[key] = float(raw)
            except ValueError:
                continue
        rows[(int(match.group(1)), match.group(2))] = values
    return rows


def format_metrics_table(rows: dict[tuple[int, str], dict[str, float]]) -> str:
    """A fixed-width table, one line per (round, site), columns = the union of metric names."""
    if not rows:
        return ""
    keys = sorted({k for values in rows.values() for k in values if k != "n"})
    width = max(10, *(len(k) for k in keys)) if keys else 10
    site_width = max(8, *(len(site) for _, site in rows))
    header = f"{'round':>5}  {'site':<{site_width}} {'n':>5} " + " ".join(f"{k:>{width}}" for k in keys)
    lines = [header.rstrip()]
    for (rnd, site), values in sorted(rows.items()):
        cells = " ".join(f"{values[k]:>{width}.4f}" if k in values else f"{'-':>{width}}" for k in keys)
        lines.append(f"{rnd:>5}  {site:<{site_width}} {int(values.get('n', 0)):>5} {cells}".rstrip())
    return "\n".join(lines)


@dataclass
class RoundLog:
    """What the server's job log says about rounds: started / finished indices and who replied to which."""

    started: list[int] = field(default_factory=list)
    finished: set[int] = field(default_factory=set)
    replies: dict[int, set[str]] = field(default_factory=dict)

    @property
    def start(self) -> int | None:
        """The job's first round index (its ``start_round``), once the log shows it."""
        return self.started[0] if self.started else None

    @property
    def sites(self) -> set[str]:
        """Every site that replied to any round."""
        return set().union(*self.replies.values()) if self.replies else set()

    def last_reply(self, site: str) -> int | None:
        """The last round ``site`` replied to, or None."""
        return max((r for r, names in self.replies.items() if site in names), default=None)


def parse_rounds(log_text: str) -> RoundLog:
    """Rounds and per-round replies from ScatterAndGather's server log lines."""
    rounds = RoundLog()
    for line in log_text.splitlines():
        for number, event in _ROUND_LINE.findall(line):
            if event == "started" and int(number) not in rounds.started:
                rounds.started.append(int(number))
            elif event == "finished":
                rounds.finished.add(int(number))
        for pattern in _REPLY_LINES:
            match = pattern.search(line)
            if match:
                rounds.replies.setdefault(int(match.group(2)), set()).add(match.group(1))
                break
    return rounds


def _round_text(group: dict, start: int | None) -> str:
    """Round indices from 0, as in the server log, the checkpoints' ``round``, the metrics table and ``start_round``."""
    current, total, phase = int(group["current_round"]), group.get("num_rounds"), str(group.get("phase", ""))
    if start is None or not total:
        span = f"{total} rounds in this job" if total else ""
        done = "finished" in phase
        return f"{span} done" if done and span else f"round {current}" + (f" ({span})" if span else "")
    span = f"rounds {start}-{start + total - 1}"
    if "finished" in phase or current >= start + total:
        return f"{span} done"
    return f"round {current} ({span})"


def progress_text(stats: dict | None, log_text: str = "") -> str | None:
    """Round progress from ``show_stats`` (server): round, outstanding tasks and workflow; else from the log.

    ``stats`` is ``Session.show_stats(job_id, "server")``: ScatterAndGather reports ``current_round``,
    ``num_rounds`` and ``phase``, every controller its tasks and the sites they were sent to, and the
    ServerRunner the running workflow. The job's first round (its ``start_round``, not in the stats)
    comes from the log's first ``Round N started.`` line; rounds are numbered from 0 like everywhere else.
    """
    groups = (stats or {}).get("server") or {}
    start = parse_rounds(log_text).start
    trained = [g for g in groups.values() if isinstance(g, dict) and g.get("current_round") is not None]
    rounds = [_round_text(g, start) for g in trained]
    tasks = [
        f"{task}: {', '.join(sites)}"
        for g in groups.values()
        if isinstance(g, dict)
        for task, sites in (g.get("tasks") or {}).items()
        if sites
    ]
    workflow = (groups.get("ServerRunner") or {}).get("workflow")
    parts = rounds[:1] + tasks + ([f"workflow {workflow}"] if workflow else [])
    if parts:
        return ", ".join(parts)
    if _RUNNER_DONE in log_text:
        return ("the server's job process has ended; FLARE marks the job finished once every site reported its "
                "end (a site that died: once the server logs it out, heart_beat_timeout)")
    found = _ROUND_LINE.findall(log_text)
    if found:
        number, event = found[-1]
        return f"round {int(number)} {event}"
    return None


def _seconds(value: float) -> str:
    value = int(round(value))
    return f"{value // 60} min {value % 60} s" if value >= 60 else f"{value} s"


def missing_sites_text(rounds: RoundLog, current: int, expected: set[str], since: dict[str, float], now: float) -> str:
    """``waiting for site-2 (missing 45 s; last reply: round 0)`` while others already replied to ``current``.

    ``since`` maps a site to (round, monitor clock) of when it was first seen missing; it is kept
    across rounds until the site replies to that round or a later one, and updated here. Empty text
    when nobody or everybody replied.
    """
    for site, (first_round, _) in list(since.items()):
        if (rounds.last_reply(site) if rounds.last_reply(site) is not None else -1) >= first_round:
            del since[site]
    replied = rounds.replies.get(current, set())
    missing = sorted(expected - replied) if replied else []
    parts = []
    for site in missing:
        last = rounds.last_reply(site)
        seen = now - since.setdefault(site, (current, now))[1]
        parts.append(f"{site} (missing {_seconds(seen)}; last reply: {'none' if last is None else f'round {last}'})")
    return f"replied: {', '.join(sorted(replied))}; waiting for {', '.join(parts)}" if parts else ""


def stale_jobs(jobs: list[dict], system_info: Any) -> list[str]:
    """Jobs the job store lists as RUNNING although the server runs no process for them (a server restart)."""
    running = {str(getattr(j, "job_id", "")) for j in (getattr(system_info, "job_info", None) or [])}
    return [str(j.get("job_id")) for j in jobs if j.get("status") == "RUNNING" and str(j.get("job_id")) not in running]


def identity_conflicts(log_text: str) -> dict[str, dict[str, Any]]:
    """Per site: heartbeats the server refused because another process re-registered the same identity.

    FLARE's client manager logs (INFO) ``Client: X already registered. Re-login the client with a new
    token.`` when a process registers as ``X`` while ``X`` is registered, and then ``Failed to
    re-activate the client:X: already registered with another token.`` for every heartbeat of the
    process that lost its registration. The second line means two live processes use ``X``'s kit.
    """
    found: dict[str, dict[str, Any]] = {}
    relogins: dict[str, int] = {}
    for line in log_text.splitlines():
        stamp = _STAMP.match(line)
        when = stamp.group(1) if stamp else "?"
        relogin = _RELOGIN.search(line)
        if relogin:
            relogins[relogin.group(1)] = relogins.get(relogin.group(1), 0) + 1
        conflict = _CONFLICT.search(line)
        if conflict:
            entry = found.setdefault(conflict.group(1), {"refused": 0, "first": when, "last": when})
            entry["refused"] += 1
            entry["last"] = when
    for site, entry in found.items():
        entry["relogins"] = relogins.get(site, 0)
    return found


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


def progress_line(job_meta: dict, progress: str | None = None) -> str:
    """One status line: job id, status, run time and (while running) the progress text."""
    text = f"job {job_meta.get('job_id', '?')}: {job_meta.get('status', '?')}"
    if job_meta.get("duration") not in (None, "", "N/A"):
        verb = "running for" if job_meta.get("status") == "RUNNING" else "ran for"
        text += f", {verb} {job_meta['duration']}"
    return f"{text}, {progress}" if progress else text


def _message(line: str) -> str:
    """A log line without its leading timestamp, so repeats of one error count once."""
    return _TIMESTAMP.sub("", line.strip())


def reason_lines(logs: dict[str, str], limit: int = 30) -> list[str]:
    """The error / panic / traceback lines (``source: line``), sites before the server, repeats once.

    More than ``limit`` lines keep the first and the last ``limit // 2`` (the final fatal error is
    usually last) with a count of those left out.
    """
    picked: list[str] = []
    seen: set[str] = set()
    for source in sorted(logs, key=lambda name: (name == "server", name)):
        for line in (logs[source] or "").splitlines():
            key = f"{source}: {_message(line)}"
            if _REASON.search(line) and key not in seen:
                seen.add(key)
                picked.append(f"{source}: {line.strip()}")
    if len(picked) <= limit:
        return picked
    half = max(limit // 2, 1)
    return [*picked[:half], f"... {len(picked) - 2 * half} more error lines ...", *picked[-half:]]


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


# ---------------------------------------------------------------- commands


def submit(session: Any, job: Path) -> str:
    """Submit a copy of ``job`` (FLARE signs the submitted folder in place) and return the job id."""
    job = Path(job)
    if not (job / "meta.json").is_file():
        raise AdminError(f"{job} is not a job folder (no meta.json): build one with omnifm-build-job")
    with tempfile.TemporaryDirectory(prefix="omnifm-submit-") as tmp:
        copy = Path(tmp) / job.resolve().name
        shutil.copytree(job, copy, symlinks=False, ignore=shutil.ignore_patterns("__pycache__", ".__nvfl_*"))
        return str(session.submit_job(str(copy)))


def status(session: Any, job_id: str | None = None) -> str:
    """System status and the jobs table, or one job's details and round progress."""
    if job_id:
        meta = session.get_job_meta(job_id)
        details = [f"{key}: {meta[key]}" for key in _DETAIL_KEYS if meta.get(key) not in (None, "")]
        details.append(f"deploy_map: {json.dumps(meta.get('deploy_map', {}))}")
        return "\n".join([progress_line(meta, _progress(session, meta)), *details])
    system_info, jobs = session.get_system_info(), session.list_jobs()
    lines = [format_status(system_info, _safe(session.get_client_job_status)), "", format_jobs_table(jobs)]
    warnings = [_stale_warning(job) for job in stale_jobs(jobs, system_info)]
    server_log = _safe(session.grep_target, "server", pattern="registered", file="log.txt")
    if server_log is None:
        warnings.append("note: identity-conflict check skipped: this admin may not run shell commands on the server "
                        "(grep of its log.txt); a project_admin can")
    warnings += [_conflict_warning(site, e) for site, e in sorted(identity_conflicts(server_log or "").items())]
    return "\n".join(lines + ([""] + warnings if warnings else []))


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


def _safe(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Optional information (stats, logs): a failure returns ``None`` instead of stopping the command."""
    try:
        return call(*args, **kwargs)
    except Exception:  # noqa: BLE001 - FLARE raises many types; the caller falls back and says so
        return None


def _server_log(session: Any, job_id: str) -> str:
    reply = _safe(session.get_job_logs, job_id, target="server") or {}
    return (reply.get("logs") or {}).get("server") or ""


def _progress(session: Any, meta: dict) -> str | None:
    if meta.get("status") != "RUNNING":
        return None
    stats = _safe(session.show_stats, meta.get("job_id", ""), "server")
    return progress_text(stats, "" if stats else _server_log(session, meta.get("job_id", "")))


def _without_duration(line: str) -> str:
    return re.sub(r", (running|ran) for [^,]*", "", line)


@dataclass
class MonitorState:
    """What ``monitor`` has already shown, and since when (its clock) each site has been missing."""

    last_line: str = ""
    last_emit: float = 0.0
    shown: set = field(default_factory=set)
    missing_since: dict = field(default_factory=dict)
    closed: set = field(default_factory=set)


def _training(stats: dict | None) -> dict | None:
    groups = (stats or {}).get("server") or {}
    for group in groups.values():
        if isinstance(group, dict) and group.get("current_round") is not None and group.get("phase") == "train":
            return group
    return None


def _expected_sites(meta: dict, stats: dict | None, rounds: RoundLog) -> set[str]:
    named = {s for members in (meta.get("deploy_map") or {}).values() for s in members if s not in ("server", "@ALL")}
    groups = (stats or {}).get("server") or {}
    tasks = [g.get("tasks") or {} for g in groups.values() if isinstance(g, dict)]
    sent = {site for task in tasks for sites in task.values() for site in sites}
    return named | sent | rounds.sites


def _waiting(meta: dict, stats: dict | None, rounds: RoundLog, state: MonitorState, now: float) -> str:
    group = _training(stats)
    if group is None or int(group["current_round"]) in rounds.finished:
        return ""
    expected = _expected_sites(meta, stats, rounds)
    return missing_sites_text(rounds, int(group["current_round"]), expected, state.missing_since, now)


def _closed_without(meta: dict, stats: dict | None, rounds: RoundLog, state: MonitorState) -> list[str]:
    lines = []
    expected = _expected_sites(meta, stats, rounds)
    for number in sorted(rounds.finished - state.closed):
        state.closed.add(number)
        absent = sorted(expected - rounds.replies.get(number, set()))
        if absent:
            lines.append(f"round {number} closed without {', '.join(absent)} (no reply within the round's wait)")
    return lines


def _key(line: str) -> str:
    """A status line without its changing durations, to decide whether it is news."""
    return re.sub(r"\(missing [^;]*;", "(missing;", _without_duration(line))


def _poll(session: Any, job_id: str, state: MonitorState, emit: Callable[[str], None], now: float = 0.0) -> dict:
    meta = session.get_job_meta(job_id)
    log_text = _server_log(session, job_id) if meta.get("status") != "SUBMITTED" else ""
    stats = _safe(session.show_stats, job_id, "server") if meta.get("status") == "RUNNING" else None
    progress = progress_text(stats, log_text) if meta.get("status") == "RUNNING" else None
    rounds = parse_rounds(log_text)
    waiting = _waiting(meta, stats, rounds, state, now) if meta.get("status") == "RUNNING" else ""
    line = progress_line(meta, ", ".join(p for p in (progress, waiting) if p) or None)
    if _key(line) != _key(state.last_line) or (waiting and now - state.last_emit >= REPEAT_WAITING_S):
        emit(line)
        state.last_emit = now
    state.last_line = line
    for closed in _closed_without(meta, stats, rounds, state):
        emit(closed)
    rows = {k: v for k, v in parse_site_metrics(log_text).items() if k not in state.shown}
    if rows:
        emit(format_metrics_table(rows))
        state.shown.update(rows)
    return meta


def _error_log_components(session: Any, job_id: str) -> dict[str, str]:
    """Sites' streamed error logs (job components ``ERRORLOG_<site>``), when the sites allow log streaming."""
    names = [n for n in (_safe(session.list_job_components, job_id) or []) if str(n).startswith("ERRORLOG_")]
    folder = _safe(session.download_job_components, job_id) if names else None
    if not folder:
        return {}
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.name in names]
    return {p.name.removeprefix("ERRORLOG_"): p.read_text(errors="replace") for p in files}


def _result_logs(session: Any, job_id: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory(prefix="omnifm-result-") as tmp:
        folder = _safe(session.download_job_result, job_id, tmp)
        if not folder:
            return {}
        return {str(p.relative_to(folder)): p.read_text(errors="replace") for p in Path(folder).rglob("log*.txt")}


def failure_logs(session: Any, job_id: str) -> dict[str, str]:
    """The job's logs: server log store (all sites) + sites' error logs, else the downloaded result's logs."""
    reply = _safe(session.get_job_logs, job_id, target="all") or {}
    logs = {site: text for site, text in (reply.get("logs") or {}).items() if text}
    logs.update(_error_log_components(session, job_id))
    return logs or _result_logs(session, job_id)


def monitor(
    session: Any,
    job_id: str,
    timeout: float = 0.0,
    poll: float = 5.0,
    emit: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Show round progress and new per-site metrics until the job ends; return the exit code.

    0 when the job finished completed; 1 when it ended otherwise (its error lines are emitted);
    3 when ``timeout`` seconds (0 = no limit) passed first - the job keeps running.
    """
    if poll <= 0 or timeout < 0:
        raise AdminError(f"--poll {poll} must be > 0 and --timeout {timeout} >= 0")
    state, start = MonitorState(), clock()
    while True:
        meta = _poll(session, job_id, state, emit, clock())
        status_text = str(meta.get("status", ""))
        if status_text.startswith("FINISHED"):
            return _finish(session, job_id, status_text, emit)
        if timeout and clock() - start >= timeout:
            emit(f"timed out after {timeout:g} s; job {job_id} is still {status_text} "
                 f"(abort: omnifm-admin abort {job_id})")
            return EXIT_TIMEOUT
        sleep(poll)


def _finish(session: Any, job_id: str, status_text: str, emit: Callable[[str], None]) -> int:
    if status_text == COMPLETED:
        emit(f"job {job_id} completed")
        return EXIT_OK
    emit(f"job {job_id} ended {status_text}; reason from the job logs:")
    lines = reason_lines(failure_logs(session, job_id))
    for line in lines or ["(no error lines found; omnifm-admin download " + job_id + " and read the logs)"]:
        emit(f"  {line}")
    return EXIT_JOB_FAILED


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
        _safe(session.close)


if __name__ == "__main__":
    sys.exit(main())
