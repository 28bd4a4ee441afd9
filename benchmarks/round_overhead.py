"""The fixed cost of a provisioned round, with FLARE's default settings and with the ones the jobs ship.

Issue 13, item 24. A loopback federation is provisioned from ``provisioning/project.yml`` (server,
2 sites; the harness of ``tests/deployment``), and the same tiny job (1 local epoch, a 4-case
32x32x8 phantom) runs twice, one variant after the other on the same started kits:

- ``flare-defaults``: FLARE's settings (``task_request_interval`` 2 s, ``task_check_period`` 0.5 s,
  ``snapshot_every_n_rounds`` 1), i.e. the jobs as they were before these keys were shipped;
- ``shipped``: the jobs as shipped: ``"server": {"task_request_interval": 0.5}``,
  ``task_check_period`` 0.1 s for both workflows, ``snapshot_every_n_rounds`` 0
  (docs/DEPLOYMENT.md, section 12).

Per round: the server's ``Round N started.`` -> ``Round N finished.`` time minus the slowest site's
own work (its ``got task assignment: name=train`` -> the executor's ``round N site-K: received
model ...`` line, i.e. receiving, training, evaluating and the bank summaries). What is left is the
fixed part: waiting to ask for the task, transfers, aggregation, saves. Rounds 1.. are used (round 0
includes the job processes' start-up). Writes ``<out>/round_overhead.json`` and ``.md``::

    python benchmarks/round_overhead.py --rounds 6 --out benchmarks/results/round_overhead
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "deployment"))

import deploy_harness as H  # noqa: E402  (the deployment tests' harness)

from omnifm.bench.flare import round_times  # noqa: E402

SITES = ("site-1", "site-2")
STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3})")
FLARE_DEFAULTS = {"task_request_interval": 2.0, "task_check_period": 0.5, "snapshot_every_n_rounds": 1}


def _time(line: str) -> float:
    return datetime.strptime(STAMP.match(line).group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _lines(log: str, pattern: str) -> list[float]:
    return [_time(line) for line in log.splitlines() if STAMP.match(line) and re.search(pattern, line)]


def round_costs(server_log: str, site_logs: dict[str, str]) -> list[dict[str, float]]:
    """Per round: server round seconds (:func:`omnifm.bench.flare.round_times`), the slowest site's own
    seconds, and the difference."""
    rows = []
    for rnd, round_s in enumerate(round_times(server_log)):
        work = []
        for site, log in site_logs.items():
            got = _lines(log, r"got task assignment: name=train")
            done = _lines(log, rf"round {rnd} {site}: received model")
            if rnd < len(got) and done:
                work.append(done[0] - got[rnd])
        if work:
            rows.append({"round": rnd, "round_s": round_s, "site_s": max(work), "fixed_s": round_s - max(work)})
    return rows


def _variant_job(build: Path, variant: str, rounds: int) -> Path:
    sets = []
    if variant == "flare-defaults":
        sets = [f"server:scatter_and_gather.task_check_period={FLARE_DEFAULTS['task_check_period']}",
                f"server:final_evaluation.task_check_period={FLARE_DEFAULTS['task_check_period']}",
                f"server:scatter_and_gather.snapshot_every_n_rounds={FLARE_DEFAULTS['snapshot_every_n_rounds']}",
                f"server:server.task_request_interval={FLARE_DEFAULTS['task_request_interval']}"]
    return H.build_job(REPO / "jobs" / "omnifm_seg", build / variant, "installed", rounds, *sets,
                       name=f"overhead_{variant}", min_clients=len(SITES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("round_overhead"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"command": "python benchmarks/round_overhead.py " + " ".join(argv or sys.argv[1:]),
                                  "flare_defaults": FLARE_DEFAULTS, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="omnifm-overhead-") as tmp:
        root = Path(tmp)
        fed = H.provision(REPO / "provisioning" / "project.yml", root / "provision")
        H.prepare_server(fed.server, root / "server-storage")
        modalities = H.make_phantom(root / "phantom", len(SITES))
        for site in SITES:
            H.prepare_site(fed.sites[site], root / "phantom" / site, modalities[site])
        procs = [H.start(fed.server, "server", root / "logs")]
        procs += [H.start(fed.sites[s], s, root / "logs") for s in SITES]
        try:
            H.wait_for(lambda: H.connected_clients(fed) >= set(SITES), 180, "the sites to register", procs)
            for variant in ("flare-defaults", "shipped"):
                job = _variant_job(root / "build", variant, args.rounds)
                start = time.monotonic()
                job_id = H.submit(fed, job)
                done = H.monitor(fed, job_id, 1800)
                wall = time.monotonic() - start
                if done.returncode != 0:
                    raise SystemExit(f"{variant}: job {job_id} did not complete\n{done.stdout}\n{done.stderr}")
                download = H.download(fed, job_id, root / "download" / variant)
                server_log = next(download.rglob("log.txt")).read_text(errors="replace")
                site_logs = {s: H.job_log(fed.sites[s], job_id) for s in SITES}
                rows = round_costs(server_log, site_logs)
                later = [r["fixed_s"] for r in rows if r["round"] >= 1]
                results["variants"][variant] = {"job_id": job_id, "wall_s": wall, "rounds": rows,
                                                "fixed_s_median": statistics.median(later) if later else None}
                print(f"{variant}: fixed part per round (rounds 1..) median "
                      f"{results['variants'][variant]['fixed_s_median']:.2f} s; job {wall:.0f} s", flush=True)
        finally:
            for proc in procs:
                H.stop(proc)
    (args.out / "round_overhead.json").write_text(json.dumps(results, indent=2))
    lines = ["# Fixed cost of a provisioned round", "", f"Command: `{results['command']}`", "",
             "| variant | rounds | median round s | median slowest-site work s | median fixed s | job wall s |",
             "|---|---|---|---|---|---|"]
    for name, v in results["variants"].items():
        later = [r for r in v["rounds"] if r["round"] >= 1]
        lines.append(f"| {name} | {len(v['rounds'])} | {statistics.median(r['round_s'] for r in later):.2f} | "
                     f"{statistics.median(r['site_s'] for r in later):.2f} | {v['fixed_s_median']:.2f} | {v['wall_s']:.0f} |")
    (args.out / "round_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
