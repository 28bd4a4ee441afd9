"""The shipped job through FLARE 2.9's Python job API (``FedJob``) and its simulation environment.

FLARE 2.9 marks ``nvflare simulator <folder>`` as deprecated in favour of jobs built in Python and
run in an execution environment (``nvflare.recipe.SimEnv``, ``PocEnv``, ``ProdEnv``). This module
builds *the same job* as ``jobs/omnifm_seg`` (or ``_he``, ``_q8``) that way, from the job folder's
config files, so the JSON stays the one place settings live::

    python -m omnifm.fl.job_api                                   # = nvflare simulator jobs/omnifm_seg
    python -m omnifm.fl.job_api --job jobs/omnifm_seg --sites 3 --threads 3 --workspace /tmp/omnifm_sim
    python -m omnifm.fl.job_api --export /tmp/exported            # write the job folder FLARE generates

How: every ``{"path", "args"}`` entry of the job's configs becomes an object of that class which
carries exactly those args (:func:`config_object`; its ``__init__`` is not run, so ``"{num_rounds}"``
placeholders survive), added with ``FedJob.to_server`` / ``FedJob.to_clients``; the top-level
variables (``num_rounds``, ``algorithm``, ``min_clients``) are added as app parameters.
``FedJob.export_job`` then writes the configs FLARE generates from these objects, and
``SimEnv(...).deploy(job)`` runs them in FLARE's simulator (in this process's Python, like
``nvflare simulator``). ``tests/fl/test_job_api.py`` checks that the exported configs equal the
job folder's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["allow_omnifm", "build_job", "config_object", "main"]

DEFAULT_JOB = Path(__file__).resolve().parents[3] / "jobs" / "omnifm_seg"
DEFAULT_SITES = 3


def config_object(entry: dict[str, Any]) -> Any:
    """An instance of ``entry["path"]`` that FLARE's job API serializes back to exactly ``entry["args"]``.

    FLARE's job config generator writes, per component, the constructor parameters it finds as
    attributes of the object (``_always_serialize_args`` marks those written even when equal to
    the default). The object is made without running ``__init__``: it only carries the config.
    """
    module, _, name = entry["path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    obj = cls.__new__(cls)
    args = dict(entry.get("args") or {})
    obj.__dict__.update(args)
    obj._always_serialize_args = tuple(args)
    obj._omnifm_config_args = args  # what _exact_args writes (FLARE would drop args taken by **kwargs)
    from nvflare.apis.impl.controller import Controller

    if isinstance(obj, Controller):  # FedJob hands a controller its communicator, which reads this
        obj._task_check_period = args.get("task_check_period", _default(cls, "task_check_period", 0.2))
    return obj


def _default(cls: type, param: str, fallback: Any) -> Any:
    import inspect

    value = inspect.signature(cls.__init__).parameters.get(param)
    return fallback if value is None or value.default is inspect.Parameter.empty else value.default


def _exact_args(generate: Any) -> Any:
    """FLARE's per-component args writer, except that a :func:`config_object` gets its config's args.

    FLARE reads a component's args from its constructor signature and follows ``**kwargs`` into
    the base class only when the constructor also takes ``*args``; ``OmniFMHEPersistor(algorithm,
    source_dir, **kwargs)`` would lose its model, task and bank settings.
    """

    def get_args(component: Any, custom_dir: str) -> dict[str, Any]:
        config = getattr(component, "_omnifm_config_args", None)
        return json.loads(json.dumps(config)) if config is not None else generate(component, custom_dir)

    return get_args


def _read(job: Path, side: str) -> dict[str, Any]:
    return json.loads((job / "app" / "config" / f"config_fed_{side}.json").read_text())


def _params(config: dict[str, Any]) -> dict[str, Any]:
    """The config's top-level variables (``num_rounds``, ``algorithm``, ...), without the component lists."""
    lists = {"format_version", "workflows", "components", "executors", "task_data_filters", "task_result_filters"}
    return {k: v for k, v in config.items() if k not in lists}


def _add_filters(add: Any, config: dict[str, Any]) -> None:
    """Add a config's task filters with ``add`` (``job.to_server`` or ``job.to_clients``), in order."""
    from nvflare.job_config.defs import FilterType

    for key, kind in (("task_data_filters", FilterType.TASK_DATA), ("task_result_filters", FilterType.TASK_RESULT)):
        for group in config.get(key, []):
            for entry in group["filters"]:
                add(config_object(entry), filter_type=kind, tasks=group["tasks"])


def build_job(job_dir: str | Path = DEFAULT_JOB, sites: list[str] | None = None) -> Any:
    """A ``FedJob`` equal to the job folder ``job_dir`` (its meta.json's name, quorum and app configs).

    Args:
        job_dir: a job folder with ``meta.json`` and ``app/config/config_fed_{server,client}.json``.
        sites: the client names (default: the ``deploy_map``'s sites, or ``site-1..site-3`` for ``@ALL``).
    """
    from nvflare.job_config.api import FedJob

    job_dir = Path(job_dir)
    meta = json.loads((job_dir / "meta.json").read_text())
    server, client = _read(job_dir, "server"), _read(job_dir, "client")
    deployed = [s for s in meta.get("deploy_map", {}).get("app", []) if s not in ("server", "@ALL")]
    sites = list(sites or deployed or [f"site-{i + 1}" for i in range(DEFAULT_SITES)])
    job = FedJob(name=meta.get("name", job_dir.name), min_clients=int(meta.get("min_clients", 1)),
                 mandatory_clients=meta.get("mandatory_clients") or None)
    job.job._get_args = _exact_args(job.job._get_args)
    job.set_app_packages(["omnifm"])  # installed at the sites, like the repo's job folders (no app/custom)
    if _params(server):
        job.to_server(_params(server))
    for flow in server.get("workflows", []):
        job.to_server(config_object(flow), id=flow["id"])
    for comp in server.get("components", []):
        job.to_server(config_object(comp), id=comp["id"])
    if _params(client):
        job.to_clients(_params(client))
    for entry in client.get("executors", []):
        job.to_clients(config_object(entry["executor"]), id=entry["executor"].get("id"), tasks=entry["tasks"])
    for comp in client.get("components", []):
        job.to_clients(config_object(comp), id=comp["id"])
    _add_filters(job.to_server, server)
    _add_filters(job.to_clients, client)
    job.clients = sites
    return job


def allow_omnifm(workspace: Path) -> Path:
    """Put ``omnifm.`` into the simulation workspace's component allow-list (FLARE's default list + ours).

    ``SimEnv`` (unlike ``nvflare simulator``) installs FLARE's default ``class_allow_list`` into
    ``<workspace>/local/resources.json.default`` unless the file already has one, and that list
    refuses ``omnifm.fl.persistor.OmniFMPersistor``; a provisioned kit gets the same fix from
    ``provisioning/allow_omnifm.py``.
    """
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST
    from nvflare.app_common.widgets.component_path_authorizer import CLASS_ALLOW_LIST

    path = workspace / "local" / "resources.json.default"
    resources = json.loads(path.read_text()) if path.is_file() else {"format_version": 2}
    allowed = list(resources.get(CLASS_ALLOW_LIST, DEFAULT_CLASS_ALLOW_LIST))
    resources[CLASS_ALLOW_LIST] = allowed + ([] if "omnifm." in allowed else ["omnifm."])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(resources, indent=4))
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m omnifm.fl.job_api",
        description="Build a job folder's job with FLARE's Python job API (FedJob) and run it in FLARE's "
        "simulation environment (SimEnv), or export the generated configs.",
    )
    parser.add_argument("--job", type=Path, default=DEFAULT_JOB, help="job folder (default: jobs/omnifm_seg)")
    parser.add_argument("--sites", type=int, default=DEFAULT_SITES, help="number of simulated sites (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="simulator threads (default 1, like `nvflare simulator`: one site at a time)")
    parser.add_argument("--workspace", type=Path, default=Path("simulator_workspace"),
                        help="simulation workspace root (default ./simulator_workspace)")
    parser.add_argument("--export", type=Path, metavar="DIR", help="only write the generated job folder into DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Build the job; export it (``--export``) or run it in ``SimEnv``. Returns 0 on success."""
    args = build_parser().parse_args(argv)
    if args.sites < 1 or args.threads < 1:
        print("job_api: error: --sites and --threads must be >= 1", file=sys.stderr)
        return 2
    job = build_job(args.job, [f"site-{i + 1}" for i in range(args.sites)])
    if args.export is not None:
        job.export_job(str(args.export))
        print(f"exported {job.name} to {args.export / job.name}")
        return 0
    from nvflare.recipe import SimEnv

    allow_omnifm(args.workspace.resolve() / job.name)
    env = SimEnv(clients=job.clients, num_threads=args.threads, workspace_root=str(args.workspace.resolve()))
    try:
        env.deploy(job)
    except RuntimeError as err:
        print(f"job_api: error: {err}", file=sys.stderr)
        return 1
    print(f"done: {args.workspace.resolve() / job.name}/server/simulate_job (cross_site_val/, tb_events/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
