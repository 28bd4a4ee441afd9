"""``omnifm-build-job``: build a deployable copy of a job folder (package installed on sites, or BYOC).

Example::

    omnifm-build-job jobs/omnifm_seg --out build --mode installed --sites @ALL
    omnifm-build-job jobs/omnifm_seg --out build --mode byoc --name omnifm_seg_byoc \\
        --sites hospital-a,hospital-b --min-clients 2 --num-rounds 10 --set client:executor.local_epochs=2
    omnifm-build-job jobs/omnifm_seg --out build --mode installed --compress int8

``installed``: the job carries no ``app/custom``; every site has the ``omnifm`` package installed
(pip or the Docker image) and allow-lists ``omnifm.`` in ``<site>/local/resources.json``.
``byoc``: ``app/custom/omnifm`` holds a copy of the imported ``omnifm`` package (no ``__pycache__``),
so a site without the package runs the job; the submitter needs FLARE's BYOC right, and the site
still needs torch, MONAI and the other dependencies.
``--compress int8`` adds the blockwise int8 filter pair (``omnifm.fl.quantize``) in both directions
(``docs/COMPRESSION.md``); it is refused for a job that uses homomorphic encryption.

The source folder is never modified; the copy holds real files only (FLARE's job signing refuses
symlinks) and no leftover signature files. Nothing built is committed (``build/`` is git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import omnifm

__all__ = ["COMPRESSIONS", "MODES", "BuildSpec", "add_compression", "build_job", "build_parser", "main",
           "parse_assignment", "parse_sites"]

MODES = ("installed", "byoc")
ALL_SITES = "@ALL"
SERVER = "server"
SIGNATURE_FILES = (".__nvfl_sig.json", ".__nvfl_submitter.crt")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMPONENT_SECTIONS = ("components", "workflows")
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", *SIGNATURE_FILES)
COMPRESSIONS = ("int8",)
_QUANTIZE = "omnifm.fl.quantize.QuantizeWeights"
_DEQUANTIZE = "omnifm.fl.quantize.DequantizeWeights"
_HE_PATHS = ("omnifm.fl.he_", "nvflare.app_opt.he.")
_GUARD = "omnifm.fl.job_guard.JobGuard"
_SAG = "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather"
_SAGS = (_SAG, "omnifm.fl.sampling.SampledScatterAndGather")  # the round workflows (same arguments)
_EVAL = "nvflare.app_common.workflows.global_model_eval.GlobalModelEval"


@dataclass
class BuildSpec:
    """What to build: mode, optional deploy map / min_clients / num_rounds and ``--set`` overrides."""

    mode: str = "installed"
    name: str | None = None
    sites: list[str] | None = None
    min_clients: int | None = None
    num_rounds: int | None = None
    overrides: list[tuple[str, str, Any]] = field(default_factory=list)
    compress: str | None = None


def parse_sites(text: str) -> list[str]:
    """``"@ALL"`` or a comma-separated list of site names; raises ``ValueError`` naming a bad name."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if names == [ALL_SITES]:
        return names
    if not names:
        raise ValueError(f"--sites {text!r} names no site: use @ALL or site-a,site-b")
    for name in names:
        if name == ALL_SITES or name == SERVER or not _NAME.match(name):
            raise ValueError(f"--sites: {name!r} is not a site name (letters, digits, . _ -; @ALL alone)")
    if len(set(names)) != len(names):
        raise ValueError(f"--sites {text!r} lists a site twice")
    return names


def parse_assignment(text: str) -> tuple[str, str, Any]:
    """``[server:|client:]key=value`` -> (config side, dotted key, value parsed as JSON or kept as text).

    A plain ``key`` is a top-level variable of the config (``num_rounds``); ``component.arg`` is an
    argument of the component with that id (``executor.local_epochs``). The side defaults to server.
    """
    key, sep, raw = text.partition("=")
    side, colon, key = key.rpartition(":") if ":" in key else ("server", "", key)
    if not sep or not key or side not in ("server", "client") or key.count(".") > 1:
        raise ValueError(f"--set {text!r}: expected [server:|client:]key=value or [server:|client:]component.arg=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return side, key, value


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _check_source(source: Path) -> dict:
    if not (source / "meta.json").is_file():
        raise ValueError(f"{source} is not a FLARE job folder (no meta.json): pass e.g. jobs/omnifm_seg")
    meta = _read_json(source / "meta.json")
    if not isinstance(meta.get("deploy_map"), dict) or not meta["deploy_map"]:
        raise ValueError(f"{source}/meta.json has no deploy_map")
    return meta


def _check_spec(spec: BuildSpec, name: str) -> None:
    if spec.mode not in MODES:
        raise ValueError(f"mode {spec.mode!r} is not one of {MODES}")
    if not _NAME.match(name):
        raise ValueError(f"job name {name!r}: use letters, digits, '.', '_' and '-' only (FLARE's job name rule)")
    for option, value in (("--min-clients", spec.min_clients), ("--num-rounds", spec.num_rounds)):
        if value is not None and value < 1:
            raise ValueError(f"{option} {value} must be at least 1")
    named = spec.sites and spec.sites != [ALL_SITES]
    if named and spec.min_clients is not None and spec.min_clients > len(spec.sites):
        raise ValueError(f"--min-clients {spec.min_clients} exceeds the {len(spec.sites)} sites in --sites")


def _check_out(target: Path, source: Path, force: bool) -> None:
    if target.resolve() == source.resolve() or source.resolve() in target.resolve().parents:
        raise ValueError(f"--out {target} is the source job or inside it: choose e.g. build/")
    if (target.exists() or target.is_symlink()) and not force:
        raise ValueError(f"{target} exists: pass --force to replace it, or choose another --out/--name")


def _replace(target: Path, built: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    built.rename(target)


def _copy_tree(source: Path, target: Path) -> None:
    """Copy files, following symlinks so the result holds real files only."""
    shutil.copytree(source, target, symlinks=False, ignore=_IGNORED)


def _apps(job: Path, meta: dict) -> list[Path]:
    return [job / app for app in meta["deploy_map"] if (job / app / "config").is_dir()]


def _set_custom(app: Path, mode: str) -> None:
    custom = app / "custom"
    if custom.exists():
        shutil.rmtree(custom)
    if mode == "byoc":
        _copy_tree(Path(omnifm.__file__).resolve().parent, custom / "omnifm")


def _deploy_map(meta: dict, sites: list[str]) -> dict:
    apps = list(meta["deploy_map"])
    if len(apps) != 1:
        raise ValueError(f"--sites needs a job with one app, but deploy_map has {apps}: edit meta.json by hand")
    members = [ALL_SITES] if sites == [ALL_SITES] else [SERVER, *sites]
    return {apps[0]: members}


def _components(config: dict):
    for section in _COMPONENT_SECTIONS:
        yield from config.get(section, [])
    for executor in config.get("executors", []):
        yield executor.get("executor", {})
    for section in ("task_result_filters", "task_data_filters"):
        for entry in config.get(section, []):
            yield from entry.get("filters", [])


def _apply(config: dict, key: str, value: Any, where: str) -> str:
    if "." not in key:
        if key not in config or isinstance(config[key], (dict, list)):
            known = sorted(k for k, v in config.items() if not isinstance(v, (dict, list)))
            raise ValueError(f"--set {key}: {where} has no top-level variable {key!r} (has {known})")
        config[key] = value
        return f"{where}: {key} = {json.dumps(value)}"
    comp_id, arg = key.split(".")
    target = config.get(comp_id)  # a top-level section, e.g. server.task_request_interval, or a component
    if not isinstance(target, dict):
        matches = [c for c in _components(config) if c.get("id") == comp_id]
        if not matches:
            ids = sorted(c.get("id", "?") for c in _components(config))
            raise ValueError(f"--set {key}: {where} has no component {comp_id!r} (has {ids})")
        target = matches[0].setdefault("args", {})
    target[arg] = value
    return f"{where}: {comp_id}.{arg} = {json.dumps(value)}"


def add_compression(config: dict, side: str, kind: str = "int8") -> list[str]:
    """Add the int8 filter pair to one side's config (``server`` or ``client``) in place; returns what changed.

    Sent weights are quantized last (server: ``task_data_filters`` of ``train`` and ``validate``;
    site: ``task_result_filters`` of ``train``); received weights are dequantized first (site:
    ``task_data_filters``; server: ``task_result_filters``).

    Raises:
        ValueError: an unknown ``kind``, a config that already quantizes, or one that uses HE.
    """
    if kind not in COMPRESSIONS:
        raise ValueError(f"--compress {kind!r} is not one of {COMPRESSIONS}")
    paths = [c.get("path", "") for c in _components(config)]
    if any(p.startswith(_HE_PATHS) for p in paths):
        raise ValueError("--compress int8 cannot be added to a job with homomorphic encryption: CKKS ciphertexts "
                         "cannot be int8-quantized (docs/COMPRESSION.md)")
    if any(p in (_QUANTIZE, _DEQUANTIZE) for p in paths):
        raise ValueError(f"the {side} config already has the int8 filters")
    send = {"tasks": ["train", "validate"] if side == "server" else ["train"],
            "filters": [{"path": _QUANTIZE, "args": {"block_size": 256}}]}
    receive = {"tasks": ["train"] if side == "server" else ["train", "validate"],
               "filters": [{"path": _DEQUANTIZE, "args": {}}]}
    outgoing, incoming = "task_data_filters", "task_result_filters"  # the server sends tasks, receives results
    sent, received = (outgoing, incoming) if side == "server" else (incoming, outgoing)
    config[sent] = [*config.get(sent, []), send]
    config[received] = [receive, *config.get(received, [])]
    return [f"config_fed_{side}.json: {sent} += QuantizeWeights, {received} = DequantizeWeights + ..."]


def _compress(app: Path, kind: str) -> list[str]:
    changes = []
    for side in ("server", "client"):
        path = app / "config" / f"config_fed_{side}.json"
        config = _read_json(path)
        changes += [f"{app.name}/config/{c}" for c in add_compression(config, side, kind)]
        _write_json(path, config)
    return changes


def _server_settings(spec: BuildSpec) -> list[tuple[str, str, Any]]:
    settings = [("server", "min_clients", spec.min_clients), ("server", "num_rounds", spec.num_rounds)]
    return [s for s in settings if s[2] is not None] + list(spec.overrides)


def _rewrite_configs(app: Path, spec: BuildSpec) -> list[str]:
    changes = []
    for side, key, value in _server_settings(spec):
        path = app / "config" / f"config_fed_{side}.json"
        if not path.is_file():
            raise ValueError(f"--set {side}:{key}: {path} does not exist")
        config = _read_json(path)
        changes.append(_apply(config, key, value, f"{app.name}/config/{path.name}"))
        _write_json(path, config)
    return changes


def _rewrite_meta(job: Path, meta: dict, spec: BuildSpec, name: str) -> list[str]:
    meta["name"] = name
    changes = [f"meta.json: name = {name}"]
    if spec.sites:
        meta["deploy_map"] = _deploy_map(meta, spec.sites)
        changes.append(f"meta.json: deploy_map = {json.dumps(meta['deploy_map'])}")
    if spec.min_clients is not None:
        meta["min_clients"] = spec.min_clients
        changes.append(f"meta.json: min_clients = {spec.min_clients}")
    _write_json(job / "meta.json", meta)
    return changes


def _default_quorum(spec: BuildSpec, meta: dict) -> BuildSpec:
    """With named ``--sites`` and no ``--min-clients``: a quorum that lets one site be lost.

    The source's ``min_clients`` is kept unless it would need every named site (or more); then it
    becomes ``len(sites) - 1`` (at least 1), so a round can close without a dead site.
    """
    named = spec.sites and spec.sites != [ALL_SITES]
    source = meta.get("min_clients")
    if not named or spec.min_clients is not None or not isinstance(source, int):
        return spec
    return dataclasses.replace(spec, min_clients=min(source, max(1, len(spec.sites) - 1)))


def _pin_guard(app: Path, spec: BuildSpec) -> list[str]:
    """Write ``--sites`` into the signed app config's ``job_guard`` (it compares them with meta.json)."""
    path = app / "config" / "config_fed_server.json"
    if not spec.sites or not path.is_file():
        return []
    config = _read_json(path)
    guards = [c for c in _components(config) if c.get("path") == _GUARD]
    value = ALL_SITES if spec.sites == [ALL_SITES] else list(spec.sites)
    for guard in guards:
        guard.setdefault("args", {})["sites"] = value
    _write_json(path, config)
    return [f"{app.name}/config/{path.name}: {g.get('id')}.sites = {json.dumps(value)}" for g in guards]


def _resolved_int(config: dict, value: Any) -> Any:
    match = re.fullmatch(r"\{(\w+)\}", value) if isinstance(value, str) else None
    return config.get(match.group(1)) if match else value


def _round_policy(app: Path, sites: list[str] | None) -> list[str]:
    """Refuse timeouts that wait forever; warn about a quorum that tolerates no lost site or waits for no one.

    Raises:
        ValueError: ``train_timeout`` or ``validation_timeout`` is 0 (FLARE waits forever for a dead site).
    """
    path = app / "config" / "config_fed_server.json"
    config = _read_json(path) if path.is_file() else {}
    where, warnings = f"{app.name}/config/config_fed_server.json", []
    named = len(sites) if sites and sites != [ALL_SITES] else None
    for comp in _components(config):
        args = {k: _resolved_int(config, v) for k, v in (comp.get("args") or {}).items()}
        for key in ("train_timeout", "validation_timeout"):
            if comp.get("path") in (*_SAGS, _EVAL) and args.get(key, 1) == 0:
                raise ValueError(f"{where}: {comp.get('id')}.{key} is 0, which waits forever for a site that died: "
                                 "set a finite number of seconds (the shipped jobs use 3600 / 1800)")
        if comp.get("path") not in _SAGS:
            continue
        quorum, wait = args.get("min_clients"), args.get("wait_time_after_min_received")
        if named and quorum == named:
            warnings.append(f"warning: min_clients {quorum} = every site: no site may be lost (a dead site stops "
                            "the job once FLARE notices it)")
        if wait == 0 and (named is None or (isinstance(quorum, int) and quorum < named)):
            warnings.append(f"warning: {comp.get('id')}.wait_time_after_min_received is 0: a round closes as soon "
                            "as min_clients sites replied (error replies count) and never waits for the others")
    return warnings


def _symlinks(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_symlink()]


def build_job(source: Path, out: Path, spec: BuildSpec, force: bool = False) -> tuple[Path, list[str]]:
    """Write ``<out>/<name>`` from the job folder ``source``; return the folder and what changed.

    Args:
        source: a FLARE job folder (``meta.json`` + ``<app>/config``); never modified.
        out: parent folder of the built job (e.g. ``build``).
        spec: mode, deploy map, min_clients, num_rounds and ``--set`` overrides.
        force: replace an existing ``<out>/<name>``.

    Raises:
        ValueError: the source is not a job, an option is bad, or the target exists without ``force``.
    """
    source = Path(source)
    meta = _check_source(source)
    name = spec.name or source.resolve().name
    spec = _default_quorum(spec, meta)
    _check_spec(spec, name)
    target = Path(out) / name
    _check_out(target, source, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        built = staging / name
        _copy_tree(source, built)
        changes = _rewrite_meta(built, meta, spec, name)
        for app in _apps(built, meta):
            _set_custom(app, spec.mode)
            changes += _rewrite_configs(app, spec)
            changes += _pin_guard(app, spec)
            if spec.compress:
                changes += _compress(app, spec.compress)
            changes += _round_policy(app, spec.sites)
        if _symlinks(built):
            raise ValueError(f"{source} yields symlinks {_symlinks(built)}; FLARE's job signing refuses them")
        _replace(target, built)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, changes


def _custom_summary(job: Path) -> str:
    customs = sorted(job.glob("*/custom"))
    if not customs:
        return "no app/custom: sites must have omnifm installed and allow-list 'omnifm.' in local/resources.json"
    files = sum(1 for c in customs for p in c.rglob("*") if p.is_file())
    names = ", ".join(str(c.relative_to(job)) for c in customs)
    return f"{names}: {files} files (BYOC: submitter needs the byoc right)"


def _argument(parse):
    """An argparse ``type`` that shows our ``ValueError`` message instead of argparse's generic one."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    convert.__name__ = parse.__name__
    return convert


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``omnifm-build-job``."""
    parser = argparse.ArgumentParser(
        prog="omnifm-build-job",
        description="Build a deployable copy of a FLARE job: package installed on sites, or BYOC with the code.",
    )
    parser.add_argument("job", type=Path, help="source job folder, e.g. jobs/omnifm_seg (left untouched)")
    parser.add_argument("--out", type=Path, required=True, help="parent folder of the built job, e.g. build")
    parser.add_argument(
        "--mode", choices=MODES, required=True, help="installed: no app/custom; byoc: code in app/custom"
    )
    parser.add_argument("--name", help="job folder and meta.json name (default: the source folder's name)")
    parser.add_argument(
        "--sites", type=_argument(parse_sites), help="deploy_map: @ALL or site-a,site-b (default: as in the source)"
    )
    parser.add_argument("--min-clients", type=int, help="min_clients in meta.json and config_fed_server.json")
    parser.add_argument("--num-rounds", type=int, help="num_rounds in config_fed_server.json")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=_argument(parse_assignment),
        metavar="[server:|client:]KEY=VALUE",
        help="set a top-level variable (num_rounds=3) or component arg (client:executor.local_epochs=1); repeatable",
    )
    parser.add_argument("--compress", choices=COMPRESSIONS,
                        help="add blockwise int8 compression of the weights in both directions (docs/COMPRESSION.md)")
    parser.add_argument("--force", action="store_true", help="replace an existing built job")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 on success, 2 on a bad option, source or existing target."""
    args = build_parser().parse_args(argv)
    spec = BuildSpec(args.mode, args.name, args.sites, args.min_clients, args.num_rounds, args.overrides,
                     args.compress)
    try:
        target, changes = build_job(args.job, args.out, spec, force=args.force)
    except ValueError as err:
        print(f"omnifm-build-job: {err}", file=sys.stderr)
        return 2
    print(f"wrote {target} (mode {args.mode})")
    for change in changes:
        print(f"  {change}")
    print(f"  {_custom_summary(target)}")
    print(f"submit with: omnifm-admin --kit <admin startup kit> submit {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
