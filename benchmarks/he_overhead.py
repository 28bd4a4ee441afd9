"""Overhead of homomorphic encryption: the same shrunken job with and without CKKS, on this machine.

Two measurements:

1. **Bytes per client per round** (exact, no timing noise): the FOBS-serialized shareable a site
   sends (its round result) and receives (the next global model), for the job's real model spec,
   in plaintext (``jobs/omnifm_seg``) and after ``OmniFMHEModelEncryptor`` (FLARE's encryptor on
   the packed weights) (+ our ``SerializeCiphertexts``, and without it: FLARE's default wire
   format) / the encrypted aggregate (``jobs/omnifm_seg_he``, contexts from
   :func:`omnifm.fl.he.make_contexts`, i.e. FLARE's HEBuilder defaults); for comparison also one
   CKKS vector per tensor (FLARE's stock encryptor, the format before packing). Meta
   (prototypes, retrieval counts, metrics) is sized like a real upload (``num_prototypes`` x
   ``spectral_dim``).
2. **Round wall time**: both jobs shrunk like ``tests/integration/test_simulator.py`` (2 sites,
   32x32x8 phantom, 6 cases, 1 local epoch, ``--rounds`` rounds) run through ``nvflare simulator``
   one after the other; round time is "Round N started" -> "Round N finished" in the server log,
   plus the HE components' own timings (encryption, decryption, encrypted mean) from the logs.

Prints a markdown table and, with ``--out``, writes the numbers as JSON::

    python benchmarks/he_overhead.py [--rounds 2] [--repeats 1] [--out benchmarks/results/he_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.decomposers import common_decomposers
from nvflare.app_opt.he.model_encryptor import HEModelEncryptor
from nvflare.app_opt.he.model_shareable_generator import HEModelShareableGenerator
from nvflare.fuel.sec.security_content_service import SecurityContentService
from nvflare.fuel.utils import fobs

from omnifm.algorithms import initial_global
from omnifm.fl import he, wire
from omnifm.fl.he_filters import OmniFMHEModelEncryptor, SerializeCiphertexts
from omnifm.fl.persistor import OmniFMPersistor

ROOT = Path(__file__).resolve().parents[1]
JOBS = {"plain": ROOT / "jobs" / "omnifm_seg", "he": ROOT / "jobs" / "omnifm_seg_he"}
SITES = ["site-1", "site-2"]
STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"


def _persistor_args(job: Path) -> dict:
    server = json.loads((job / "app/config/config_fed_server.json").read_text())
    args = next(c["args"] for c in server["components"] if c["id"] == "persistor")
    return {**args, "algorithm": server["algorithm"]}


def _ctx(site: str) -> FLContext:
    ctx, peer = FLContext(), FLContext()
    ctx.set_prop(FLContextKey.SECURE_MODE, False, private=True, sticky=False)
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    ctx.set_peer_context(peer)
    return ctx


def _size(shareable) -> int:
    return len(fobs.dumps(shareable))


def _upload_meta(spec: dict, n_samples: int) -> dict:
    """Meta the size of a real OmniFM upload (values are irrelevant for the byte count)."""
    k, dim = spec["num_prototypes"], spec["omnifm"]["spectral_dim"]
    return {wire.PROTOTYPES: np.random.default_rng(0).normal(size=(k, dim)).tolist(), wire.PROTOTYPE_COUNTS: [9] * k,
            wire.RETRIEVAL_IDS: list(range(16)), wire.RETRIEVAL_COUNTS: [3] * 16,
            wire.METRICS: {f"metric_{i}": 0.5 for i in range(12)}, MetaKey.NUM_STEPS_CURRENT_ROUND: n_samples}


def payload_sizes(job: Path) -> dict[str, int]:
    """Serialized bytes of one site's result and of the global-model task, plaintext and HE."""
    common_decomposers.register()
    spec = OmniFMPersistor(**_persistor_args(job)).spec
    weights, global_meta = initial_global(spec)
    task_meta = {**global_meta, wire.SPEC: spec}
    plain_result = DXO(DataKind.WEIGHTS, data=weights, meta=_upload_meta(spec, 96)).to_shareable()
    plain_task = DXO(DataKind.WEIGHTS, data=weights, meta=task_meta).to_shareable()
    sizes = {"tensors": len(weights), "values": int(sum(v.size for v in weights.values())),
             "plain_result": _size(plain_result), "plain_task": _size(plain_task)}
    with tempfile.TemporaryDirectory() as folder:
        he.write_contexts(folder)
        SecurityContentService.security_content_manager = None
        SecurityContentService.initialize(content_folder=folder)
        encryptor = OmniFMHEModelEncryptor()
        encryptor.handle_event(EventType.START_RUN, _ctx("site-1"))
        he_result = _encrypted_upload(encryptor, weights, spec)
        sizes["he_result_with_context"] = _size(he_result)  # FLARE's CKKSVector decomposer: vector + context
        averaged = he.encrypted_mean([(dict(from_shareable(he_result).data), 96)])
        sizes["ciphertexts"] = sum(len(v.ciphertext()) for v in averaged.values())
        sizes["he_result"] = _size(SerializeCiphertexts().process(he_result, _ctx("site-1")))  # as the job sends
        sizes["he_task"] = _task_size(averaged, {he.PACKED: True}, {**task_meta, he.SHAPES: he.shapes_of(weights)})
        per_tensor = HEModelEncryptor(weigh_by_local_iter=False)  # before packing: one CKKS vector per tensor
        per_tensor.handle_event(EventType.START_RUN, _ctx("site-1"))
        old = _encrypted_upload(per_tensor, weights, spec)
        old_mean = he.encrypted_mean([(dict(from_shareable(old).data), 96)])
        sizes["ciphertexts_per_tensor"] = sum(len(v.ciphertext()) for v in old_mean.values())
        sizes["he_result_per_tensor"] = _size(SerializeCiphertexts().process(old, _ctx("site-1")))
        sizes["he_task_per_tensor"] = _task_size(old_mean, {k: True for k in weights},
                                                 {**task_meta, he.SHAPES: he.shapes_of(weights)})
    return sizes


def _encrypted_upload(encryptor, weights: dict, spec: dict):
    upload = DXO(DataKind.WEIGHTS, data={k: v.copy() for k, v in weights.items()}, meta=_upload_meta(spec, 96))
    return encryptor.process(upload.to_shareable(), _ctx("site-1"))


def _task_size(averaged: dict, keys: dict, meta: dict) -> int:
    """Bytes of the global-model task the server's HEModelShareableGenerator sends for an encrypted mean."""
    meta = {**meta, MetaKey.PROCESSED_KEYS: keys, MetaKey.PROCESSED_ALGORITHM: "CKKS"}
    generator = HEModelShareableGenerator()
    generator.handle_event(EventType.START_RUN, _ctx("server"))
    return _size(generator.learnable_to_shareable(make_model_learnable(averaged, meta), _ctx("server")))


def shrink_job(job: Path, rounds: int) -> None:
    """The same overrides as tests/integration/test_simulator.py: 2 sites, 32x32x8, 6 cases, 1 epoch."""
    meta = json.loads((job / "meta.json").read_text())
    meta["deploy_map"] = {"app": ["server", *SITES]}
    (job / "meta.json").write_text(json.dumps(meta))
    server_path = job / "app/config/config_fed_server.json"
    server = json.loads(server_path.read_text())
    server.update({"num_rounds": rounds, "min_clients": len(SITES)})
    server_path.write_text(json.dumps(server))
    client_path = job / "app/config/config_fed_client.json"
    client = json.loads(client_path.read_text())
    client["executors"][0]["executor"]["args"].update({"local_epochs": 1, "phantom_cases": 6, "phantom_shape": [32, 32, 8]})
    client_path.write_text(json.dumps(client))


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_log(log: str) -> dict[str, list[float]]:
    """Round durations and the HE components' own timings (seconds) from a simulator log."""
    started = {int(r): _stamp(t) for t, r in re.findall(STAMP + r".*Round (\d+) started", log)}
    finished = {int(r): _stamp(t) for t, r in re.findall(STAMP + r".*Round (\d+) finished", log)}
    return {
        "round_s": [finished[r] - started[r] for r in sorted(finished) if r in started],
        "encrypt_s": [float(stock or ours) for stock, ours in re.findall(  # FLARE's line, or ours (quieter encryptor)
            r"(?:Encryption time for .*? ([\d.]+) seconds|as one packed CKKS vector in ([\d.]+) s)", log)],
        "decrypt_s": [float(x) for x in re.findall(r"Decryption time for .*? ([\d.]+) seconds", log)],
        "aggregate_s": [float(x) for x in re.findall(r"encrypted mean of \d+ sites in ([\d.]+) s", log)],
    }


def run_job(kind: str, rounds: int, tmp: Path) -> dict:
    """Run one shrunken job in the simulator; returns wall time and the parsed timings."""
    job = tmp / JOBS[kind].name
    shutil.rmtree(job, ignore_errors=True)
    shutil.copytree(JOBS[kind], job)
    shrink_job(job, rounds)
    workspace = tmp / f"ws_{kind}"
    shutil.rmtree(workspace, ignore_errors=True)
    if kind == "he":
        he.write_contexts(workspace / "startup")
    cmd = [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(workspace)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=1800, env=dict(os.environ))
    wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} job failed (exit {proc.returncode}):\n{log[-3000:]}")
    return {"wall_s": wall, **parse_log(log)}


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text()) if cpuinfo.exists() else []
    return names[0].strip() if names else platform.processor() or platform.machine()


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(sizes: dict[str, int], runs: dict[str, list[dict]]) -> str:
    """Markdown table: plain vs HE, with the HE/plain ratio (round 0 includes each site's data/model setup)."""
    def med(kind: str, key: str, first: int = 0) -> float:
        return _median([x for run in runs[kind] for x in (run[key][first:] if isinstance(run[key], list) else [run[key]])])

    def spread(kind: str, key: str, first: int = 0) -> str:
        values = [x for run in runs[kind] for x in run[key][first:]]
        return f"{min(values):.2f}-{max(values):.2f}" if values else "-"

    rows = [
        (f"site -> server bytes per round (result, as the job sends it: packed, {sizes['ciphertexts']} ciphertexts)",
         sizes["plain_result"], sizes["he_result"]),
        ("... with FLARE's default CKKSVector wire format (+ context)", sizes["plain_result"],
         sizes["he_result_with_context"]),
        (f"... one CKKS vector per tensor (before packing, {sizes['ciphertexts_per_tensor']} ciphertexts)",
         sizes["plain_result"], sizes["he_result_per_tensor"]),
        ("server -> site bytes per round (global model, packed)", sizes["plain_task"], sizes["he_task"]),
        ("... one CKKS vector per tensor (before packing)", sizes["plain_task"], sizes["he_task_per_tensor"]),
        ("round 0 wall time, s (median; includes site setup)",
         _median([r["round_s"][0] for r in runs["plain"]]), _median([r["round_s"][0] for r in runs["he"]])),
        ("later rounds' wall time, s (median)", med("plain", "round_s", 1), med("he", "round_s", 1)),
        ("simulator wall time, s (median)", med("plain", "wall_s"), med("he", "wall_s")),
    ]
    lines = ["| quantity | plain | HE (CKKS) | HE / plain |", "|---|---:|---:|---:|"]
    for name, plain, enc in rows:
        shown = [f"{v:,}" if isinstance(v, int) else f"{v:.1f}" for v in (plain, enc)]
        lines.append(f"| {name} | {shown[0]} | {shown[1]} | {enc / plain:.1f}x |")
    for name, key in (("HE encryption per site and round, s", "encrypt_s"),
                      ("HE decryption per site and task, s", "decrypt_s"), ("encrypted mean on the server, s", "aggregate_s")):
        lines.append(f"| {name} (median, range) | - | {med('he', key):.2f} ({spread('he', key)}) | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds per simulator run (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="simulator runs per job (default 1)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    parser.add_argument("--table-from", type=Path, help="only print the table of a JSON written by --out")
    args = parser.parse_args(argv)
    if args.table_from:
        saved = json.loads(args.table_from.read_text())
        print(f"setup: {saved['setup']}\n")
        print(table(saved["sizes"], saved["runs"]))
        return 0
    sizes = payload_sizes(JOBS["plain"])
    runs: dict[str, list[dict]] = {"plain": [], "he": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for kind in ("plain", "he"):
                runs[kind].append(run_job(kind, args.rounds, Path(tmp)))
    setup = {"machine": f"{_cpu_name()}, {os.cpu_count()} CPUs, no GPU, load average {os.getloadavg()[0]:.1f} at the end",
             "python": platform.python_version(), "rounds": args.rounds, "repeats": args.repeats,
             "job": "2 sites, phantom 6 cases 32x32x8, 1 local epoch", **{k: sizes[k] for k in ("tensors", "values")}}
    print(f"setup: {setup}\n")
    print(table(sizes, runs))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"setup": setup, "sizes": sizes, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
