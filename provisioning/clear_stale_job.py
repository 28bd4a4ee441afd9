"""Mark a job that a server restart left ``RUNNING`` as ``FINISHED:ABORTED`` in the server's job store.

FLARE 2.9 does not restore a running job after the server restarts, yet its job store keeps the
job's status ``RUNNING``: it is listed as running forever, ``abort_job`` answers "Job ... is not
running." and ``delete_job`` refuses a running job. ``omnifm-admin status`` reports such a job as
stale. This script, run **on the server host**, sets the stored status to ``FINISHED:ABORTED`` (the
status an abort would have left); the job's checkpoints in the server workspace are untouched,
and ``delete_job`` / ``list_jobs`` then behave as for any aborted job.

Usage::

    python provisioning/clear_stale_job.py <server kit or workspace> <job-id>
    python provisioning/clear_stale_job.py --jobs-storage /var/lib/omnifm/jobs-storage <job-id>

The job store is ``uri_root`` of the ``job_manager`` in ``<kit>/local/resources.json`` (else
``resources.json.default``). The old meta is kept next to it as ``meta.before-clear``. Only the
standard library is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

STALE = ("RUNNING", "DISPATCHED")
ABORTED = "FINISHED:ABORTED"


def jobs_storage(kit: Path) -> Path:
    """The job store folder (``job_manager``'s ``uri_root``) named by a server kit's ``local/resources.json``."""
    for name in ("resources.json", "resources.json.default"):
        path = kit / "local" / name
        if path.is_file():
            config = json.loads(path.read_text())
            for comp in config.get("components", []):
                if comp.get("id") == "job_manager" and comp.get("args", {}).get("uri_root"):
                    return Path(comp["args"]["uri_root"])
            raise ValueError(f"{path} has no job_manager component with a uri_root: pass --jobs-storage")
    raise ValueError(f"{kit} has no local/resources.json(.default): pass the server kit, or --jobs-storage")


def clear_stale_job(storage: Path, job_id: str) -> str:
    """Set the stored status of ``job_id`` to ``FINISHED:ABORTED``; returns the status it had.

    Raises:
        ValueError: no such job in ``storage``, or the job is not ``RUNNING``/``DISPATCHED``.
    """
    meta_path = Path(storage) / job_id / "meta"
    if not meta_path.is_file():
        raise ValueError(f"no job {job_id} in the job store {storage} (no {meta_path})")
    text = meta_path.read_text()
    meta = json.loads(text)
    status = str(meta.get("status"))
    if status not in STALE:
        raise ValueError(f"job {job_id} is {status}, not {' or '.join(STALE)}: nothing to clear")
    (meta_path.parent / "meta.before-clear").write_text(text)
    meta["status"] = ABORTED
    tmp = meta_path.with_name("meta.tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, meta_path)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kit", nargs="?", type=Path, help="the server's startup kit / workspace")
    parser.add_argument("job_id")
    parser.add_argument("--jobs-storage", type=Path, help="the job store folder (instead of reading it from the kit)")
    args = parser.parse_args(argv)
    try:
        if not args.jobs_storage and not args.kit:
            raise ValueError("pass the server kit or --jobs-storage")
        storage = args.jobs_storage or jobs_storage(args.kit)
        before = clear_stale_job(storage, args.job_id)
    except (ValueError, OSError, json.JSONDecodeError) as err:
        print(f"clear_stale_job: {err}", file=sys.stderr)
        return 2
    print(f"job {args.job_id}: {before} -> {ABORTED} in {storage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
