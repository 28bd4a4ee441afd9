"""End-to-end deployment over real mTLS on loopback (issue 4, items 6 and 7).

Provisions ``provisioning/project.yml`` (server renamed to ``localhost`` on a free port) into a
temporary folder, fills each site's ``local/`` like hospital IT would (``site_configs/resources.json``
+ an ``omnifm_site.json`` over a phantom written by ``omnifm-make-phantom``), starts the server
and two sites from their startup kits, builds jobs with ``omnifm-build-job`` and drives them with
``omnifm-admin``. Every process is stopped by PID in the fixtures' teardown.
"""

from __future__ import annotations

import json
import re
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import deploy_harness as H
from omnifm.fl.metrics_record import RECORD_FILE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SITES = ("site-1", "site-2")
JOB_TIMEOUT = 300
MODEL, BANK, ENCRYPTED = "FL_global_model.pt", "knowledge_bank.pt", "FL_global_model_encrypted.pt"


@dataclass
class Running:
    """A provisioned federation with its started kits (``procs`` by name; the test may replace one)."""

    fed: H.Federation
    procs: dict[str, H.Proc]
    logs: Path

    def all(self) -> list[H.Proc]:
        return list(self.procs.values())


def _federation(root: Path, project: Path) -> Running:
    fed = H.provision(project, root / "provision")
    H.prepare_server(fed.server, root / "server-storage")
    modalities = H.make_phantom(root / "phantom", len(SITES))
    for site in SITES:
        H.prepare_site(fed.sites[site], root / "phantom" / site, modalities[site])
    return Running(fed, {}, root / "logs")


def _start(running: Running) -> Running:
    running.procs["server"] = H.start(running.fed.server, "server", running.logs)
    for site in SITES:
        running.procs[site] = H.start(running.fed.sites[site], site, running.logs)
    H.wait_for(lambda: H.connected_clients(running.fed) >= set(SITES), 180, f"{SITES} to register", running.all())
    return running


def _stop_all(running: Running) -> None:
    errors = []
    for proc in running.procs.values():
        try:
            H.stop(proc)
        except Exception as err:  # noqa: BLE001 - stop every other process before failing
            errors.append(err)
    assert not errors, errors


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Running:
    running = _federation(tmp_path_factory.mktemp("plain"), H.REPO / "provisioning" / "project.yml")
    try:
        yield _start(running)
    finally:
        _stop_all(running)


def _run_job(running: Running, job: Path, out: Path, with_output: bool = False) -> tuple:
    """Submit with omnifm-admin, monitor to completion, download; returns (job id, download folder[, monitor output])."""
    job_id = H.submit(running.fed, job)
    done = H.monitor(running.fed, job_id, JOB_TIMEOUT)
    assert done.returncode == 0, f"job {job_id} did not complete:\n{done.stdout}\n{done.stderr}\n" + _log_tails(running)
    download = H.download(running.fed, job_id, out / "download")
    return (job_id, download, done.stdout) if with_output else (job_id, download)


def _log_tails(running: Running) -> str:
    return "\n".join(f"--- {p.name}\n{p.text()[-2000:]}" for p in running.all())


def server_file(download: Path, name: str) -> Path:
    """``app_server/<name>`` inside a downloaded job (extracting any zip the download holds)."""
    for _ in range(2):
        found = sorted(download.rglob(f"app_server/{name}"))
        if found:
            return found[0]
        for archive in [p for p in download.rglob("*") if p.is_file() and zipfile.is_zipfile(p)]:
            zipfile.ZipFile(archive).extractall(archive.parent / f"{archive.name}.unzipped")
    raise AssertionError(f"no app_server/{name} in the downloaded job {download}: {sorted(download.rglob('*'))[:40]}")


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_personal_state(running: Running, since: float) -> None:
    for site in SITES:
        files = [p for p in (running.fed.sites[site] / "omnifm_personal").glob("*.pt") if p.stat().st_mtime >= since]
        assert files, f"{site} kept no personal state (omnifm_personal/*.pt) from this job"
        assert _load(files[0]), f"{site}: empty personal state {files[0]}"


@pytest.mark.parametrize("mode", ["installed", "byoc"])
def test_job_runs_and_persists_state(plain: Running, tmp_path: Path, mode: str) -> None:
    job = H.build_job(H.REPO / "jobs" / "omnifm_seg", tmp_path / "build", mode, 2)
    assert (job / "app" / "custom" / "omnifm").is_dir() == (mode == "byoc")
    since = time.time()
    _, download, shown = _run_job(plain, job, tmp_path, with_output=True)
    model = _load(server_file(download, MODEL))
    assert model["round"] == 1 and model["model"], "the global model after the last of 2 rounds"
    record = [json.loads(line) for line in server_file(download, RECORD_FILE).read_text().splitlines()]
    assert sorted((r["round"], r["site"]) for r in record) == [(r, s) for r in (0, 1) for s in SITES], record
    assert all(r["n"] > 0 and r["metrics"] for r in record), record
    tables = [line.split()[:2] for line in shown.splitlines() if re.match(r"\s+[01]\s+site-", line)]
    assert sorted(tables) == [[str(r), s] for r in (0, 1) for s in SITES], "monitor shows each record row once\n" + shown
    assert all(torch.isfinite(t).all() for t in model["model"].values())
    bank = _load(server_file(download, BANK))
    assert bank["round"] == 1 and bank["bank"]
    _assert_personal_state(plain, since)


def test_kit_from_another_provisioning_is_refused(plain: Running, tmp_path: Path) -> None:
    rogue = H.provision(H.REPO / "provisioning" / "project.yml", tmp_path / "rogue", port=plain.fed.port)
    proc = H.start(rogue.sites["site-3"], "rogue-site-3", tmp_path / "logs")
    try:
        H.wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in proc.text(), 90, "the rogue site's TLS failure", [proc])
        time.sleep(5)  # a few more connection attempts
        assert "site-3" not in H.connected_clients(plain.fed)
        status = H.query(plain.fed, "client_status")
        assert "site-3" not in json.dumps(status), status
        assert "SSL site-3" not in plain.procs["server"].text(), "the server accepted a connection from the rogue kit"
    finally:
        H.stop(proc)


def test_next_job_resumes_from_last_checkpoint_after_server_restart(plain: Running, tmp_path: Path) -> None:
    job = H.build_job(H.REPO / "jobs" / "omnifm_seg", tmp_path / "build", "installed", 4)
    job_id = H.submit(plain.fed, job)
    app = plain.fed.server / job_id / "app_server"

    def checkpoint() -> dict | None:
        if not ((app / MODEL).is_file() and (app / BANK).is_file()):
            return None
        saved = _load(app / MODEL), _load(app / BANK)
        return saved if saved[0]["round"] == saved[1]["round"] else None

    model, bank = H.wait_for(checkpoint, JOB_TIMEOUT, "the first round's checkpoint", plain.all(), poll=0.5)
    H.stop(plain.procs["server"], grace=0)  # crash: SIGKILL the server and its job process
    assert model["round"] < 3, "the job finished before the server was killed; nothing left to resume"

    plain.procs["server"] = H.start(plain.fed.server, "server-restarted", plain.logs)
    H.wait_for(lambda: H.connected_clients(plain.fed) >= set(SITES), 180, "sites to re-register", plain.all())
    # FLARE 2.9 does not restore the interrupted run (its snapshot persistence is a no-op) and leaves
    # its status as it was in the job store ("RUNNING"); it never completes, and abort refuses it.
    assert H.job_status(plain.fed, job_id) == "RUNNING"
    assert f"warning: job {job_id} is RUNNING in the job store, but the server runs no process" in \
        H.admin(plain.fed, "status").stdout
    refused = H.admin(plain.fed, "abort", job_id)
    assert refused.returncode == 2 and "is not running" in refused.stderr and "clear_stale_job.py" in refused.stderr, (
        refused.stdout + refused.stderr
    )
    H.run([sys.executable, str(H.REPO / "provisioning" / "clear_stale_job.py"), str(plain.fed.server), job_id])
    assert H.job_status(plain.fed, job_id) == "FINISHED:ABORTED", "the stale entry is cleared"
    assert f"warning: job {job_id}" not in H.admin(plain.fed, "status").stdout

    start_round = model["round"] + 1  # continue the round count; 4 rounds in total
    resumed = H.build_job(
        H.REPO / "jobs" / "omnifm_seg", tmp_path / "build", "installed", 4 - start_round,
        f"server:persistor.source_dir={job_id}/app_server", f"server:scatter_and_gather.start_round={start_round}",
        name="omnifm_seg_resumed",
    )
    resumed_id, download, shown = _run_job(plain, resumed, tmp_path, with_output=True)
    print(shown)
    assert re.search(rf"round [{start_round}-3] \(rounds {start_round}-3\)", shown) and "rounds done" not in shown, (
        "monitor numbers rounds like the log and the checkpoints (from 0, continuing from start_round)\n" + shown
    )
    log = next(download.rglob("log.txt")).read_text(errors="replace")
    expected = (f"starting from the saved model and bank in .*{job_id}/app_server "
                f"\\(saved after round {model['round']}; bank: {_bank_size(bank)}\\)")
    assert re.search(expected, log), f"the resumed job did not start from {app}:\n" + "\n".join(
        line for line in log.splitlines() if "Persistor" in line
    )
    for site in SITES:
        site_log = (plain.fed.sites[site] / resumed_id / "log.txt").read_text(errors="replace")
        assert f"{site}: restored personal parameters saved after round" in site_log, f"{site} lost its personal state"
    final = _load(server_file(download, MODEL))
    assert final["round"] == 3, "the resumed job continues the round count to the 4th round (index 3)"


def test_a_site_killed_mid_round_the_job_completes_with_the_others(plain: Running, tmp_path: Path) -> None:
    """Issue 13, item 13: a site's processes SIGKILLed mid-round; the round and the job finish without it.

    The job's quorum is 1 of the 2 sites; the round waits ``wait_time_after_min_received`` for the
    other after the quorum replied and at most ``train_timeout`` in all (the shipped 600 / 3600 s
    scaled down to CI size), and the final evaluation waits ``validation_timeout`` for it.
    """
    started = time.monotonic()
    job = H.build_job(
        H.REPO / "jobs" / "omnifm_seg", tmp_path / "build", "installed", 3,
        "server:scatter_and_gather.wait_time_after_min_received=10", "server:scatter_and_gather.train_timeout=120",
        "server:final_evaluation.validation_timeout=20", min_clients=1,
    )
    job_id = H.submit(plain.fed, job)
    victim = plain.procs["site-2"]

    def site_2_training_round_1() -> bool:
        return "Round 1 started." in H.job_log(plain.fed.server, job_id) and \
            H.job_log(plain.fed.sites["site-2"], job_id).count("got task assignment: name=train") >= 2

    H.wait_for(site_2_training_round_1, JOB_TIMEOUT, "site-2 to receive round 1's train task", plain.all(), poll=0.2)
    H.stop(victim, grace=0)  # the site's client and its job process, as if the machine died
    killed_at = time.monotonic()
    try:
        done = H.monitor(plain.fed, job_id, JOB_TIMEOUT)
        finished = time.monotonic()
        assert done.returncode == 0, f"the job did not complete without site-2:\n{done.stdout}\n{done.stderr}"
        # A round is a few seconds, so site-2 may have replied to round 1 just before the kill landed:
        # read its last reply from the monitor and expect every later round to close without it.
        waits = re.findall(r"waiting for site-2 \(missing \d+ s; last reply: round (\d+)\)", done.stdout)
        assert waits, done.stdout
        last = int(waits[-1])
        assert last in (0, 1), f"site-2 was killed in round 1, yet its last reply was round {last}:\n{done.stdout}"
        assert all(f"round {rnd} closed without site-2" in done.stdout for rnd in range(last + 1, 3)), done.stdout
        download = H.download(plain.fed, job_id, tmp_path / "download")
        log = next(download.rglob("log.txt")).read_text(errors="replace")  # the job's log moved to the job store
        for rnd in (1, 2):
            assert f"Contribution from site-1 ACCEPTED by the aggregator at round {rnd}." in log
            site_2 = f"Contribution from site-2 ACCEPTED by the aggregator at round {rnd}." in log
            assert site_2 == (rnd <= last), f"site-2's round-{rnd} contribution (last reply: round {last})"
        final = _load(server_file(download, MODEL))
        assert final["round"] == 2, "all three rounds were aggregated"
        print(f"kill-a-site: job done {finished - killed_at:.0f} s after the kill, test {finished - started:.0f} s")
        print(done.stdout)
    finally:
        plain.procs["site-2"] = H.start(plain.fed.sites["site-2"], "site-2-restarted", plain.logs)
        H.wait_for(lambda: H.connected_clients(plain.fed) >= set(SITES), 180, "site-2 to re-register", plain.all())


def test_a_copied_site_kit_is_reported_as_an_identity_conflict(plain: Running, tmp_path: Path) -> None:
    """Issue 13, item 16: a copy of site-1's kit takes over the identity; omnifm-admin status says so."""
    copy = H.copy_kit(plain.fed.sites["site-1"], tmp_path / "elsewhere" / "site-1")
    rogue = H.start(copy, "copied-site-1", tmp_path / "logs")
    server_log = plain.fed.server / "log.txt"
    try:
        H.wait_for(lambda: "Failed to re-activate the client:site-1" in server_log.read_text(errors="replace"),
                   90, "the genuine site-1 to be refused", [rogue])
        status = H.admin(plain.fed, "status")
        assert "warning: identity conflict for site-1: the server refused" in status.stdout, status.stdout
        assert "identity conflict for site-2" not in status.stdout
        print(status.stdout)
    finally:
        H.stop(rogue)
        H.stop(plain.procs["site-1"])  # locked out until it restarts
        plain.procs["site-1"] = H.start(plain.fed.sites["site-1"], "site-1-restarted", plain.logs)
        H.wait_for(lambda: H.connected_clients(plain.fed) >= set(SITES), 180, "site-1 to re-register", plain.all())


def _bank_size(bank: dict) -> int:
    from omnifm.knowledge import KnowledgeBank

    return len(KnowledgeBank.from_state_dict(bank["bank"]))



@pytest.fixture(scope="module")
def he_federation(tmp_path_factory) -> Running:
    pytest.importorskip("tenseal", reason="HE needs TenSEAL: pip install 'omnifm-flare[he]'")
    running = _federation(tmp_path_factory.mktemp("he"), H.REPO / "provisioning" / "project_he.yml")
    try:
        yield _start(running)
    finally:
        _stop_all(running)


@pytest.mark.he
def test_he_job_runs_and_persists_encrypted_state(he_federation: Running, tmp_path: Path) -> None:
    assert (he_federation.fed.server / "startup" / "server_context.tenseal").is_file()
    job = H.build_job(H.REPO / "jobs" / "omnifm_seg_he", tmp_path / "build", "installed", 2)
    since = time.time()
    _, download = _run_job(he_federation, job, tmp_path)
    assert not list(download.rglob(f"app_server/{MODEL}")), "an HE job must not keep a plaintext global model"
    encrypted = _load(server_file(download, ENCRYPTED))
    assert encrypted["round"] == 1 and encrypted["encrypted"]
    _assert_only_sites_decrypt(he_federation.fed, encrypted)
    bank = _load(server_file(download, BANK))
    assert bank["round"] == 1 and bank["bank"]
    _assert_personal_state(he_federation, since)


def _assert_only_sites_decrypt(fed: H.Federation, encrypted: dict) -> None:
    """The server's provisioned context has no secret key; a site's context decrypts the saved model."""
    import tenseal as ts

    server = ts.context_from((fed.server / "startup" / "server_context.tenseal").read_bytes())
    assert not server.has_secret_key(), "the server's HE context must not hold the secret key"
    site = ts.context_from((fed.sites["site-1"] / "startup" / "client_context.tenseal").read_bytes())
    assert site.has_secret_key()
    from omnifm.fl import he

    assert set(encrypted["encrypted"]) == {he.PACKED}, "all shared weights packed into one CKKS vector"
    values = torch.tensor(ts.ckks_vector_from(site, encrypted["encrypted"][he.PACKED].numpy().tobytes()).decrypt())
    assert values.numel() == sum(int(torch.tensor(shape).prod()) for shape in encrypted["shapes"].values())
    assert torch.isfinite(values).all()
