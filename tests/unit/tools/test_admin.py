"""``omnifm-admin`` and the FLARE API functions behind it (``omnifm.fl.admin_session``,
``omnifm.fl.monitor``, ``omnifm.fl.job_log``) with a fake FLARE session: no network, no server.

The log lines and ``show_stats`` replies below are copied from a real FLARE 2.9 POC run of
``jobs/omnifm_seg`` (2 sites, 2 rounds); the per-site metrics are the aggregator's record rows
(``omnifm.fl.metrics_record``) that the server publishes in ``show_stats`` and keeps in
``app_server/omnifm_metrics.jsonl``. The real TLS round trip is tests/deployment's job.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from omnifm.fl.admin_session import AdminError, default_username, find_admin_kit, stale_jobs, submit
from omnifm.fl.job_log import identity_conflicts, parse_rounds, reason_lines
from omnifm.fl.metrics_record import RECORD_FILE, STATS_GROUP, make_row
from omnifm.fl.monitor import format_metrics_table, missing_sites_text, monitor, progress_text
from omnifm.tools import admin
from omnifm.tools.admin import format_jobs_table

JOB = "83817756-318f-4498-87c9-c350a0ba82ee"
CTX = f"[identity=example_project, run={JOB}, wf=scatter_and_gather]"
SERVER_LOG_ROUND_0 = f"""\
2026-11-22 05:55:41,002 - ScatterAndGather - INFO - {CTX} - Round 0 started.
2026-11-22 05:56:10,440 - OmniFMAggregator - INFO - {CTX} - round 0: knowledge bank version 1, 8 prototypes
2026-11-22 05:56:10,441 - OmniFMAggregator - INFO - {CTX} - round 0 site-1: n=31 align_loss=0.0000 dice_global=0.0044 loss=2.4235
2026-11-22 05:56:10,441 - OmniFMAggregator - INFO - {CTX} - round 0 site-2: n=32 align_loss=0.0000 dice_global=0.0144 loss=2.4406
2026-11-22 05:56:10,500 - ScatterAndGather - INFO - {CTX} - Round 0 finished.
"""
SERVER_LOG_ROUND_1 = f"""\
2026-11-22 05:56:10,510 - ScatterAndGather - INFO - {CTX} - Round 1 started.
2026-11-22 05:56:40,441 - OmniFMAggregator - INFO - {CTX} - round 1 site-1: n=31 align_loss=0.0180 dice_global=0.0081 loss=2.2238
2026-11-22 05:56:40,441 - OmniFMAggregator - INFO - {CTX} - round 1 site-2: n=32 align_loss=0.0166 dice_global=0.0147 loss=2.2439
"""
RESUMED_LOG = SERVER_LOG_ROUND_0.replace("Round 0", "Round 2").replace("round 0", "round 2") + (
    f"2026-11-22 05:56:10,510 - ScatterAndGather - INFO - {CTX} - Round 3 started.\n"
)
FATAL = (
    f"2026-11-22 05:53:56,968 - ServerRunner - ERROR - {CTX} - Aborting current RUN due to FATAL_SYSTEM_ERROR "
    "received: Result from site-1 is bad, error code: BAD_TASK_DATA."
)
SITE_ERROR = (
    "2026-11-22 05:53:56,941 - OmniFMExecutor - ERROR - [identity=site-1] - cannot run 'train': this site has no "
    "omnifm_site.json in its local/ folder"
)


# The record rows of the log lines above (the aggregator writes both).
RECORD_ROUND_0 = [
    make_row(0, "site-1", 31, {"align_loss": 0.0, "dice_global": 0.0044, "loss": 2.4235}, now=1.0),
    make_row(0, "site-2", 32, {"align_loss": 0.0, "dice_global": 0.0144, "loss": 2.4406}, now=1.0),
]
RECORD_ROUND_1 = [
    make_row(1, "site-1", 31, {"align_loss": 0.018, "dice_global": 0.0081, "loss": 2.2238}, now=2.0),
    make_row(1, "site-2", 32, {"align_loss": 0.0166, "dice_global": 0.0147, "loss": 2.2439}, now=2.0),
]


def _stats(
    current: int, phase: str = "train", tasks: dict | None = None, workflow: str = "scatter_and_gather", rounds: int = 2,
    record: list | None = None,
) -> dict:
    return {
        "server": {
            "GlobalModelEval": {"tasks": {}},
            "ScatterAndGather": {"current_round": current, "num_rounds": rounds, "phase": phase, "tasks": tasks or {}},
            "ServerRunner": {"job_id": JOB, "status": "started", "workflow": workflow},
            STATS_GROUP: {"file": RECORD_FILE, "written": len(record or []), "rows": record or []},
        }
    }


class FakeSession:
    """The FLARE ``Session`` methods omnifm-admin uses, answering from a script of poll states."""

    def __init__(self, states: list[dict], logs_all: dict | None = None, components: dict | None = None,
                 record: list | None = None):
        self.states, self.index = states, -1
        self.logs_all, self.components, self.record = logs_all, components or {}, record
        self.submitted: list[tuple[str, list[str]]] = []
        self.download_dir: Path | None = None
        self.downloads = 0

    def _state(self) -> dict:
        return self.states[max(self.index, 0)]

    def get_job_meta(self, job_id: str) -> dict:
        self.index = min(self.index + 1, len(self.states) - 1)
        return {"job_id": job_id, "status": self._state()["status"], "duration": self._state().get("duration", "N/A")}

    def show_stats(self, job_id: str, target_type: str) -> dict:
        if self._state().get("stats") is None:
            raise RuntimeError("job is not running")
        return self._state()["stats"]

    def get_job_logs(self, job_id: str, target: str = "server") -> dict:
        if target == "all":
            if self.logs_all is None:
                raise RuntimeError("get_job_log not supported")
            return {"logs": self.logs_all}
        return {"logs": {"server": self._state().get("log", "")}}

    def list_job_components(self, job_id: str) -> list[str]:
        return sorted(self.components)

    def download_job_components(self, job_id: str) -> str:
        folder = self.download_dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in self.components.items():
            (folder / name).write_text(text)
        return str(folder)

    def download_job_result(self, job_id: str, destination: str | None = None) -> str:
        self.downloads += 1
        folder = Path(destination) / job_id / "workspace"
        folder.mkdir(parents=True)
        (folder / "log.txt").write_text(FATAL + "\n")
        if self.record is not None:
            (folder / "app_server").mkdir()
            (folder / "app_server" / RECORD_FILE).write_text("".join(json.dumps(r) + "\n" for r in self.record))
        return str(folder.parent)

    def submit_job(self, path: str) -> str:
        folder = Path(path)
        self.submitted.append((path, sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))))
        (folder / ".__nvfl_sig.json").write_text("{}")  # FLARE signs the submitted folder in place
        return JOB


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _run_monitor(session: FakeSession, timeout: float = 0.0) -> tuple[int, list[str]]:
    lines: list[str] = []
    clock = Clock()
    code = monitor(session, JOB, timeout=timeout, poll=5, emit=lines.append, sleep=clock.sleep, clock=clock)
    return code, lines


# ---------------------------------------------------------------- kit


def _admin_kit(root: Path, username: str = "") -> Path:
    (root / "startup").mkdir(parents=True)
    config = {"admin": {"username": username, "host": "fl-server.example", "port": 8002, "client_cert": "client.crt"}}
    (root / "startup" / "fed_admin.json").write_text(json.dumps(config))
    return root


def _self_signed(path: Path, common_name: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize("point_at", ["root", "startup"])
def test_find_admin_kit_accepts_the_kit_or_its_startup_folder(tmp_path, point_at):
    kit = _admin_kit(tmp_path / "admin@hospital-a.org")
    assert find_admin_kit(kit if point_at == "root" else kit / "startup") == kit.resolve()


@pytest.mark.parametrize(
    "layout, message",
    [("missing", "does not exist"), ("site", "not an admin startup kit"), ("empty", "not an admin startup kit")],
)
def test_find_admin_kit_names_the_fix(tmp_path, layout, message):
    kit = tmp_path / "kit"
    if layout == "site":
        (kit / "startup").mkdir(parents=True)
        (kit / "startup" / "fed_client.json").write_text("{}")
    elif layout == "empty":
        kit.mkdir()
    with pytest.raises(AdminError, match=message):
        find_admin_kit(kit)


def test_default_username_from_config_then_certificate_then_folder(tmp_path):
    assert default_username(_admin_kit(tmp_path / "a", username="lead@hospital-a.org")) == "lead@hospital-a.org"
    kit = _admin_kit(tmp_path / "b")
    _self_signed(kit / "startup" / "client.crt", "admin@hospital-b.org")
    assert default_username(kit) == "admin@hospital-b.org"
    assert default_username(_admin_kit(tmp_path / "org-admin@c.org")) == "org-admin@c.org"


def test_missing_kit_exits_2_with_the_fix(tmp_path, capsys):
    assert admin.main(["--kit", str(tmp_path / "nope"), "status"]) == 2
    assert "pass --kit" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error, message",
    [("NoConnection", "cannot reach the FLARE server at fl-server.example:8002"), ("AuthenticationError", "login as")],
)
def test_connection_problems_exit_2_with_the_fix(tmp_path, monkeypatch, capsys, error, message):
    from nvflare.fuel.flare_api import api_spec, flare_api

    def refuse(*args, **kwargs):
        raise getattr(api_spec, error)("cannot connect to server")

    monkeypatch.setattr(flare_api, "new_secure_session", refuse)
    kit = _admin_kit(tmp_path / "admin@x.org")
    assert admin.main(["--kit", str(kit), "--connect-timeout", "0.5", "status"]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- pure helpers


def test_metrics_table_has_one_row_per_round_and_site_and_marks_missing_values():
    table = format_metrics_table({(1, "site-2"): {"n": 3, "dice": 0.5}, (0, "site-1"): {"n": 4, "loss": 1.25}})
    header, first, second = table.splitlines()
    assert header.split() == ["round", "site", "n", "dice", "loss"]
    assert first.split() == ["0", "site-1", "4", "-", "1.2500"]
    assert second.split() == ["1", "site-2", "3", "0.5000", "-"]
    assert format_metrics_table({}) == ""


@pytest.mark.parametrize(
    "stats, log, expected",
    [
        (
            _stats(0, tasks={"train": ["site-2", "site-1"]}),
            SERVER_LOG_ROUND_0,
            "round 0 (rounds 0-1), train: site-2, site-1, workflow scatter_and_gather",
        ),
        (_stats(1), SERVER_LOG_ROUND_0, "round 1 (rounds 0-1), workflow scatter_and_gather"),
        (_stats(1), "", "round 1 (2 rounds in this job), workflow scatter_and_gather"),
        (_stats(2, "_finished_", workflow="final_evaluation"), SERVER_LOG_ROUND_0, "rounds 0-1 done, workflow final_evaluation"),
        ({"server": {}}, SERVER_LOG_ROUND_0, "round 0 finished"),
        (None, SERVER_LOG_ROUND_0 + SERVER_LOG_ROUND_1, "round 1 started"),
        (None, "", None),
        (None, SERVER_LOG_ROUND_0 + "... - ServerRunner - INFO - [...] - Server runner finished.\n",
         "the server's job process has ended; FLARE marks the job finished once every site reported its end "
         "(a site that died: once the server logs it out, heart_beat_timeout)"),
        # a resumed job (start_round 2, num_rounds 2): round 3 is its last round, not "done"
        (_stats(3), RESUMED_LOG, "round 3 (rounds 2-3), workflow scatter_and_gather"),
        (_stats(4, "_finished_", workflow="final_evaluation"), RESUMED_LOG, "rounds 2-3 done, workflow final_evaluation"),
    ],
)
def test_progress_text(stats, log, expected):
    """One numbering everywhere: round indices from 0, as in the log, the checkpoints and start_round."""
    assert progress_text(stats, log) == expected


def test_reason_lines_put_sites_first_and_drop_repeats():
    repeat = FATAL.replace("05:53:56,968", "05:54:01,001")
    logs = {"server": f"{FATAL}\nINFO fine\n{repeat}\nTraceback (most recent call last):", "site-1": SITE_ERROR}
    lines = reason_lines(logs)
    assert lines == [f"site-1: {SITE_ERROR}", f"server: {FATAL}", "server: Traceback (most recent call last):"]


def test_reason_lines_keep_the_first_and_last_when_there_are_many():
    logs = {"server": "\n".join(f"ERROR problem {i}" for i in range(100))}
    lines = reason_lines(logs, limit=10)
    assert lines[0] == "server: ERROR problem 0" and lines[-1] == "server: ERROR problem 99"
    assert "90 more error lines" in lines[5] and len(lines) == 11


def test_jobs_table_columns_fit_the_longest_value():
    jobs = [
        {"job_id": "a1", "job_name": "seg", "status": "FINISHED:EXECUTION_EXCEPTION", "submit_time": "t", "duration": 1},
        {"job_id": "b2", "job_name": "he", "status": "RUNNING", "submit_time": "t", "duration": "N/A"},
    ]
    header, first, second = format_jobs_table(jobs).splitlines()
    assert header.index("submit_time") == first.index(" t ") + 1 == second.index(" t ") + 1
    assert format_jobs_table([]) == "no jobs"


# ---------------------------------------------------------------- commands with a fake session


def test_submit_sends_a_clean_copy_and_leaves_the_source_unsigned(tmp_path):
    job = tmp_path / "omnifm_seg"
    (job / "app" / "config").mkdir(parents=True)
    (job / "meta.json").write_text("{}")
    (job / "app" / "config" / "config_fed_server.json").write_text("{}")
    (job / ".__nvfl_sig.json").write_text("stale signature from an in-place submit")
    session = FakeSession([{"status": "SUBMITTED"}])
    assert submit(session, job) == JOB
    path, files = session.submitted[0]
    assert Path(path).name == "omnifm_seg" and Path(path).parent != tmp_path
    assert files == ["app", "app/config", "app/config/config_fed_server.json", "meta.json"]
    assert not Path(path).exists(), "the temporary copy is removed"
    assert sorted(p.name for p in job.iterdir()) == [".__nvfl_sig.json", "app", "meta.json"]


def test_submit_refuses_a_folder_that_is_not_a_job(tmp_path):
    with pytest.raises(AdminError, match="omnifm-build-job"):
        submit(FakeSession([{"status": "SUBMITTED"}]), tmp_path)


def test_monitor_shows_rounds_and_each_site_metric_once_and_exits_0_on_completion():
    both = RECORD_ROUND_0 + RECORD_ROUND_1
    states = [
        {"status": "SUBMITTED"},
        {"status": "RUNNING", "stats": _stats(0, tasks={"train": ["site-1", "site-2"]})},
        {"status": "RUNNING", "stats": _stats(1, record=RECORD_ROUND_0), "log": SERVER_LOG_ROUND_0},
        {"status": "RUNNING", "stats": _stats(1, record=RECORD_ROUND_0), "log": SERVER_LOG_ROUND_0},
        {"status": "RUNNING", "stats": _stats(2, "_finished_", record=both), "log": SERVER_LOG_ROUND_0 + SERVER_LOG_ROUND_1},
        {"status": "FINISHED:COMPLETED", "duration": "0:01:10", "log": SERVER_LOG_ROUND_0 + SERVER_LOG_ROUND_1},
    ]
    session = FakeSession(states, record=both)
    code, lines = _run_monitor(session)
    assert code == 0
    text = "\n".join(lines)
    assert "round 0 (2 rounds in this job), train: site-1, site-2" in text
    assert "round 1 (rounds 0-1)" in text and "rounds 0-1 done" in text
    assert sum(line.startswith("job ") and "round 1 (" in line for line in lines) == 1, "unchanged status not repeated"
    rows = [line.split()[:3] for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert rows == [["0", "site-1", "31"], ["0", "site-2", "32"], ["1", "site-1", "31"], ["1", "site-2", "32"]]
    header = next(line for line in lines if line.startswith("round  site")).splitlines()[0]
    assert header.split() == ["round", "site", "n", "align_loss", "dice_global", "loss"]
    assert "0.0144" in text and session.downloads == 0, "every round was seen while running: nothing downloaded"
    assert lines[-1] == f"job {JOB} completed"


def test_monitor_reads_the_metrics_from_the_record_not_from_the_log_lines():
    """Log lines alone show no metrics; the record's rows do, NaN (null in the record) as nan."""
    nan_row = make_row(0, "site-1", 31, {"dice_global": float("nan"), "loss": 2.5}, now=1.0)
    states = [
        {"status": "RUNNING", "stats": _stats(1), "log": SERVER_LOG_ROUND_0},
        {"status": "RUNNING", "stats": _stats(1, record=[nan_row]), "log": SERVER_LOG_ROUND_0},
        {"status": "FINISHED:COMPLETED", "log": SERVER_LOG_ROUND_0},
    ]
    code, lines = _run_monitor(FakeSession(states, record=[nan_row]))
    assert code == 0
    tables = [line.splitlines() for line in lines if line.startswith("round  site")]
    assert len(tables) == 1 and tables[0][0].split() == ["round", "site", "n", "dice_global", "loss"]
    assert tables[0][1:] == [tables[0][1]] and tables[0][1].split() == ["0", "site-1", "31", "nan", "2.5000"]
    assert "2.4406" not in "\n".join(lines), "site-2's log line is not a metrics source"


def test_monitor_reads_the_rows_it_missed_from_the_job_result_once_the_job_ended():
    """The last round aggregated between two polls: its rows come from the downloaded record."""
    log = SERVER_LOG_ROUND_0 + SERVER_LOG_ROUND_1 + f"... - ScatterAndGather - INFO - {CTX} - Round 1 finished.\n"
    log += _contribution("site-1", 0, 1) + "\n" + _contribution("site-1", 1, 2) + "\n"
    states = [
        {"status": "RUNNING", "stats": _stats(1, record=RECORD_ROUND_0), "log": SERVER_LOG_ROUND_0},
        {"status": "FINISHED:COMPLETED", "log": log},
    ]
    session = FakeSession(states, record=RECORD_ROUND_0 + RECORD_ROUND_1)
    code, lines = _run_monitor(session)
    assert code == 0 and session.downloads == 1
    rows = [row.split()[:2] for chunk in lines for row in chunk.splitlines() if row.strip()[:1].isdigit()]
    assert rows == [["0", "site-1"], ["0", "site-2"], ["1", "site-1"], ["1", "site-2"]], "each row once"


def test_monitor_prints_the_reason_and_exits_1_when_the_job_fails(tmp_path):
    states = [{"status": "RUNNING", "stats": _stats(0)}, {"status": "FINISHED:EXECUTION_EXCEPTION", "log": FATAL}]
    session = FakeSession(states, logs_all={"server": FATAL}, components={"ERRORLOG_site-1": SITE_ERROR})
    session.download_dir = tmp_path
    code, lines = _run_monitor(session)
    assert code == 1
    assert "ended FINISHED:EXECUTION_EXCEPTION" in lines[-3]
    assert lines[-2:] == [f"  site-1: {SITE_ERROR}", f"  server: {FATAL}"]


def test_monitor_falls_back_to_the_downloaded_result_logs():
    code, lines = _run_monitor(FakeSession([{"status": "FINISHED:ABORTED"}], logs_all=None))
    assert code == 1
    assert lines[-1].endswith(FATAL) and "workspace/log.txt" in lines[-1]


def test_monitor_times_out_with_exit_3_and_says_the_job_keeps_running():
    code, lines = _run_monitor(FakeSession([{"status": "RUNNING", "stats": _stats(0)}]), timeout=12)
    assert code == 3
    assert lines[-1].startswith("timed out after 12 s") and f"omnifm-admin abort {JOB}" in lines[-1]


@pytest.mark.parametrize("timeout, poll", [(-1, 5), (0, 0)])
def test_monitor_rejects_bad_timing(timeout, poll):
    with pytest.raises(AdminError, match="--poll"):
        monitor(FakeSession([{"status": "RUNNING"}]), JOB, timeout=timeout, poll=poll)


def test_main_prints_only_the_job_id_for_submit_and_passes_monitor_exit_codes(tmp_path, monkeypatch, capsys):
    job = tmp_path / "omnifm_seg"
    job.mkdir()
    (job / "meta.json").write_text("{}")
    session = FakeSession([{"status": "FINISHED:ABORTED"}], logs_all={"server": FATAL})
    session.close = lambda: None
    monkeypatch.setattr(admin, "open_session", lambda kit, user, timeout: session)
    assert admin.main(["--kit", str(tmp_path), "submit", str(job)]) == 0
    assert capsys.readouterr().out == f"{JOB}\n"
    assert admin.main(["--kit", str(tmp_path), "monitor", JOB, "--poll", "0.01"]) == 1


def test_main_turns_flare_errors_into_exit_2(tmp_path, monkeypatch, capsys):
    def missing(job_id, destination=None):
        raise LookupError(f"no such job: {job_id}")

    session = SimpleNamespace(download_job_result=missing, close=lambda: None)
    monkeypatch.setattr(admin, "open_session", lambda kit, user, timeout: session)
    assert admin.main(["--kit", str(tmp_path), "download", "nope"]) == 2
    assert "no such job: nope" in capsys.readouterr().err


def test_importing_the_tool_loads_no_nvflare():
    code = "import sys, omnifm.tools.admin; print(sorted(m for m in sys.modules if m.split('.')[0] == 'nvflare'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", "omnifm-admin must import nvflare inside functions (test_import_rules.py)"


# ---------------------------------------------------------------- a lost site, a stale job, a copied kit


def _contribution(site: str, rnd: int, second: int) -> str:
    return (f"2026-11-22 05:57:{second:02d},000 - ScatterAndGather - INFO - {CTX} - "
            f"Contribution from {site} ACCEPTED by the aggregator at round {rnd}.")


LOST_SITE_LOG = "\n".join([
    f"2026-11-22 05:57:00,000 - ScatterAndGather - INFO - {CTX} - Round 0 started.",
    _contribution("site-1", 0, 10), _contribution("site-2", 0, 12),
    f"2026-11-22 05:57:13,000 - ScatterAndGather - INFO - {CTX} - Round 0 finished.",
    f"2026-11-22 05:57:13,100 - ScatterAndGather - INFO - {CTX} - Round 1 started.",
    _contribution("site-1", 1, 25),
])
ROUND_1_CLOSED = LOST_SITE_LOG + f"\n2026-11-22 05:57:45,000 - ScatterAndGather - INFO - {CTX} - Round 1 finished.\n"


def test_parse_rounds_reads_replies_of_every_kind():
    log = "\n".join([
        LOST_SITE_LOG,
        f"... - ScatterAndGather - WARNING - {CTX} - Ignore the result from site-3 at round 1. Result error code: "
        "EXECUTION_EXCEPTION. Remaining good clients (2) >= min_responses (2).",
    ])
    rounds = parse_rounds(log)
    assert rounds.start == 0 and rounds.started == [0, 1] and rounds.finished == {0}
    assert rounds.replies == {0: {"site-1", "site-2"}, 1: {"site-1", "site-3"}}
    assert rounds.last_reply("site-2") == 0 and rounds.last_reply("site-9") is None


def test_missing_sites_text_names_the_site_and_how_long_it_has_been_missing():
    rounds, since = parse_rounds(LOST_SITE_LOG), {}
    expected = {"site-1", "site-2"}
    assert missing_sites_text(parse_rounds(LOST_SITE_LOG.split("Round 1 started")[0]), 0, expected, since, 0) == ""
    first = missing_sites_text(rounds, 1, expected, since, 100.0)
    assert first == "replied: site-1; waiting for site-2 (missing 0 s; last reply: round 0)"
    later = missing_sites_text(rounds, 1, expected, since, 175.0)
    assert later == "replied: site-1; waiting for site-2 (missing 1 min 15 s; last reply: round 0)"
    assert missing_sites_text(parse_rounds(LOST_SITE_LOG + "\n" + _contribution("site-2", 1, 50)), 1, expected,
                              since, 180.0) == ""
    assert since == {}, "a site that replies is no longer missing"


def test_a_site_that_replied_late_in_one_round_starts_a_new_count_in_the_next():
    since, expected = {}, {"site-1", "site-2"}
    assert "site-2 (missing 0 s" in missing_sites_text(parse_rounds(LOST_SITE_LOG), 1, expected, since, 10.0)
    both_then_round_2 = "\n".join([LOST_SITE_LOG, _contribution("site-2", 1, 40),
                                   _contribution("site-1", 2, 55)])
    text = missing_sites_text(parse_rounds(both_then_round_2), 2, expected, since, 60.0)
    assert text == "replied: site-1; waiting for site-2 (missing 0 s; last reply: round 1)"


def test_monitor_says_which_site_is_missing_for_how_long_and_that_the_round_closed_without_it():
    train = {"train": ["site-1", "site-2"]}
    states = [
        {"status": "RUNNING", "stats": _stats(1, tasks=train, rounds=3), "log": LOST_SITE_LOG},
        *[{"status": "RUNNING", "stats": _stats(1, tasks=train, rounds=3), "log": LOST_SITE_LOG}] * 13,
        {"status": "RUNNING", "stats": _stats(2, tasks={"train": ["site-1"]}, rounds=3), "log": ROUND_1_CLOSED},
        {"status": "FINISHED:COMPLETED", "duration": "0:02:00", "log": ROUND_1_CLOSED},
    ]
    code, lines = _run_monitor(FakeSession(states))
    assert code == 0
    waiting = [line for line in lines if "waiting for" in line]
    assert "round 1 (rounds 0-2)" in waiting[0] and "waiting for site-2 (missing 0 s; last reply: round 0)" in waiting[0]
    assert len(waiting) == 2 and "missing 1 min 0 s" in waiting[1], "repeated once a minute, not every poll"
    assert "round 1 closed without site-2 (no reply within the round's wait)" in lines
    assert "round 0 closed without" not in "\n".join(lines)


def test_stale_jobs_are_running_in_the_store_without_a_server_process():
    jobs = [{"job_id": "a", "status": "RUNNING"}, {"job_id": "b", "status": "RUNNING"},
            {"job_id": "c", "status": "FINISHED:COMPLETED"}]
    info = SimpleNamespace(job_info=[SimpleNamespace(job_id="b", app_name="app")])
    assert stale_jobs(jobs, info) == ["a"]


CONFLICT_LOG = """\
2026-11-22 06:10:01,100 - ClientManager - INFO - Client: site-1 already registered. Re-login the client with a new token.
2026-11-22 06:10:04,000 - ClientManager - INFO - Failed to re-activate the client:site-1: already registered with another token.
2026-11-22 06:10:19,000 - ClientManager - INFO - Failed to re-activate the client:site-1: already registered with another token.
2026-11-22 06:11:00,000 - ClientManager - INFO - Client: site-2 already registered. Re-login the client with a new token.
"""


def test_identity_conflicts_count_refused_heartbeats_per_site():
    found = identity_conflicts(CONFLICT_LOG)
    assert found == {"site-1": {"refused": 2, "first": "2026-11-22 06:10:04", "last": "2026-11-22 06:10:19",
                                "relogins": 1}}, "a re-login alone (site-2 restarted) is not a conflict"


def _system(job_ids=()):
    server = SimpleNamespace(start_time=0, status="started")
    clients = [SimpleNamespace(name="site-1", last_connect_time=0)]
    return SimpleNamespace(server_info=server, client_info=clients,
                           job_info=[SimpleNamespace(job_id=j, app_name="app") for j in job_ids])


def test_status_warns_about_stale_jobs_and_identity_conflicts():
    session = SimpleNamespace(
        get_system_info=lambda: _system(), get_client_job_status=lambda: [],
        list_jobs=lambda: [{"job_id": JOB, "job_name": "omnifm_seg", "status": "RUNNING"}],
        grep_target=lambda target, pattern, file: CONFLICT_LOG,
    )
    text = admin.status(session)
    assert f"warning: job {JOB} is RUNNING in the job store, but the server runs no process for it" in text
    assert "warning: identity conflict for site-1: the server refused 2 heartbeat(s)" in text
    assert "site-2" not in text.split("identity conflict")[1]


def test_status_says_when_it_cannot_check_identities():
    def refused(target, pattern, file):
        raise PermissionError("not authorized for shell commands")

    session = SimpleNamespace(get_system_info=lambda: _system([JOB]), get_client_job_status=lambda: [],
                              list_jobs=lambda: [{"job_id": JOB, "status": "RUNNING"}], grep_target=refused)
    text = admin.status(session)
    assert "identity-conflict check skipped" in text and "warning" not in text


def test_abort_of_a_stale_job_names_the_fix():
    def refuse(job_id):
        raise RuntimeError(f"Job {job_id} is not running.")

    with pytest.raises(AdminError, match="clear_stale_job.py <server kit> " + JOB):
        admin.abort(SimpleNamespace(abort_job=refuse), JOB)
    with pytest.raises(LookupError):
        admin.abort(SimpleNamespace(abort_job=lambda job_id: (_ for _ in ()).throw(LookupError("no such job"))), JOB)
    assert admin.abort(SimpleNamespace(abort_job=lambda job_id: "Abort signal has been sent"), JOB) == \
        "Abort signal has been sent"
