"""Watching a job over the FLARE API: round progress, missing sites and per-site metrics until it ends.

Every poll reads the job's status (``get_job_meta``), the server's stats while it runs
(``show_stats``: ScatterAndGather's round, the tasks in flight, the running workflow, and the
aggregator's metrics record, :mod:`omnifm.fl.metrics_record`) and the server's job log
(``get_job_logs``: FLARE's ``Round N started/finished.`` and per-reply lines,
:mod:`omnifm.fl.job_log`). Per-site metrics come from the record only: the rows published in the
stats while the job runs, and, once it ended, the record file in the job result (downloaded once,
only when a finished round's rows were not seen yet). :func:`monitor` returns the exit code.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omnifm.fl.admin_session import AdminError, failure_logs, safe, server_log
from omnifm.fl.job_log import RUNNER_DONE, RoundLog, last_round_event, parse_rounds, reason_lines
from omnifm.fl.metrics_record import Rows, rows_from_result, rows_from_stats

__all__ = [
    "COMPLETED",
    "EXIT_JOB_FAILED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "MonitorState",
    "format_metrics_table",
    "job_progress",
    "missing_sites_text",
    "monitor",
    "progress_line",
    "progress_text",
]

EXIT_OK, EXIT_JOB_FAILED, EXIT_TIMEOUT = 0, 1, 3
COMPLETED = "FINISHED:COMPLETED"
REPEAT_WAITING_S = 60.0


def format_metrics_table(rows: Rows) -> str:
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


def progress_line(job_meta: dict, progress: str | None = None) -> str:
    """One status line: job id, status, run time and (while running) the progress text."""
    text = f"job {job_meta.get('job_id', '?')}: {job_meta.get('status', '?')}"
    if job_meta.get("duration") not in (None, "", "N/A"):
        verb = "running for" if job_meta.get("status") == "RUNNING" else "ran for"
        text += f", {verb} {job_meta['duration']}"
    return f"{text}, {progress}" if progress else text


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
    if RUNNER_DONE in log_text:
        return ("the server's job process has ended; FLARE marks the job finished once every site reported its "
                "end (a site that died: once the server logs it out, heart_beat_timeout)")
    return last_round_event(log_text)


def job_progress(session: Any, meta: dict) -> str | None:
    """Round progress of a running job (stats, else its log); None when it does not run."""
    if meta.get("status") != "RUNNING":
        return None
    stats = safe(session.show_stats, meta.get("job_id", ""), "server")
    return progress_text(stats, "" if stats else server_log(session, meta.get("job_id", "")))


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
    return re.sub(r"\(missing [^;]*;", "(missing;", re.sub(r", (running|ran) for [^,]*", "", line))


def _result_rows(session: Any, job_id: str) -> Rows:
    with tempfile.TemporaryDirectory(prefix="omnifm-record-") as tmp:
        folder = safe(session.download_job_result, job_id, tmp)
        return rows_from_result(folder) if folder else {}


def _record_rows(session: Any, job_id: str, status: str, stats: dict | None, rounds: RoundLog, state: MonitorState) -> Rows:
    """The record's rows: published in the stats while running; from the job result once ended, if some are unseen."""
    if status == "RUNNING":
        return rows_from_stats(stats)
    seen = {rnd for rnd, _ in state.shown}
    if status.startswith("FINISHED") and {r for r in rounds.finished if rounds.replies.get(r)} - seen:
        return _result_rows(session, job_id)
    return {}


def _poll(session: Any, job_id: str, state: MonitorState, emit: Callable[[str], None], now: float = 0.0) -> dict:
    meta = session.get_job_meta(job_id)
    status = str(meta.get("status", ""))
    log_text = server_log(session, job_id) if status != "SUBMITTED" else ""
    stats = safe(session.show_stats, job_id, "server") if status == "RUNNING" else None
    progress = progress_text(stats, log_text) if status == "RUNNING" else None
    rounds = parse_rounds(log_text)
    waiting = _waiting(meta, stats, rounds, state, now) if status == "RUNNING" else ""
    line = progress_line(meta, ", ".join(p for p in (progress, waiting) if p) or None)
    if _key(line) != _key(state.last_line) or (waiting and now - state.last_emit >= REPEAT_WAITING_S):
        emit(line)
        state.last_emit = now
    state.last_line = line
    for closed in _closed_without(meta, stats, rounds, state):
        emit(closed)
    rows = {k: v for k, v in _record_rows(session, job_id, status, stats, rounds, state).items() if k not in state.shown}
    if rows:
        emit(format_metrics_table(rows))
        state.shown.update(rows)
    return meta


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
