"""What FLARE's own server log lines say: round starts/ends and replies, identity conflicts, error lines.

These lines are FLARE's (ScatterAndGather, the client manager, the server runner), not OmniFM's:
per-site metrics are not read from the log but from the metrics record
(:mod:`omnifm.fl.metrics_record`). No nvflare import: the functions take the log text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RUNNER_DONE", "RoundLog", "identity_conflicts", "last_round_event", "parse_rounds", "reason_lines"]

RUNNER_DONE = "Server runner finished."
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
_REASON = re.compile(
    r"\bERROR\b|\bCRITICAL\b|panic|FATAL|Traceback|\w+(Error|Exception)\b:|rejected contribution"
    r"|asked to abort|Abort signal received"
)
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]?\d*\s*(-\s*)?")


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


def last_round_event(log_text: str) -> str | None:
    """``round 1 started`` / ``round 1 finished`` from the log's last ``Round N ...`` line, or None."""
    found = _ROUND_LINE.findall(log_text)
    if not found:
        return None
    number, event = found[-1]
    return f"round {int(number)} {event}"


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
