"""Allow the ``omnifm.`` package in a provisioned kit's component allow-list.

FLARE 2.9 checks the component classes of a job without ``app/custom`` against the
``class_allow_list`` in ``<kit>/local/resources.json`` (falling back to
``resources.json.default``). This writes ``resources.json`` = the provisioned default + ``"omnifm."``
and leaves everything else of the default as provisioning made it (job store, snapshot
persistor, resource manager, ...), except, in a server kit, ``heart_beat_timeout``: FLARE's 600 s
becomes 120 s, so that a site that died is logged out - and a running job stops waiting for it
and can finish ``COMPLETED`` - within about 2 minutes instead of 10 (docs/DEPLOYMENT.md, "Losing a
site"). Use it for the **server** kit; sites may use it too or copy
``site_configs/resources.json`` (docs/DEPLOYMENT.md, step 3).

Usage::

    python provisioning/allow_omnifm.py <prod_NN>/fl-server.hospital-network.example [--force]

Only the standard library is needed (runs on the server without the package installed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PREFIX = "omnifm."
HEART_BEAT_TIMEOUT = 120.0


def allow_omnifm(kit: Path, force: bool = False, heart_beat_timeout: float = HEART_BEAT_TIMEOUT) -> Path:
    """Write ``<kit>/local/resources.json`` with ``"omnifm."`` in the class allow-list.

    Args:
        kit: A startup kit folder (holds ``startup/`` and ``local/``).
        force: Replace an existing ``resources.json`` (it is re-read and kept otherwise).
        heart_beat_timeout: seconds without a heartbeat (sites send one every 10 s) after which the
            server logs a site out; server kits only.

    Returns:
        The path written.

    Raises:
        ValueError: If ``kit`` is not a server/site kit or ``resources.json`` exists without ``force``.
    """
    local = kit / "local"
    default = local / "resources.json.default"
    target = local / "resources.json"
    if not any((kit / "startup" / name).is_file() for name in ("fed_server.json", "fed_client.json")):
        raise ValueError(f"{str(kit)!r} is not a server or site kit (no startup/fed_server.json or fed_client.json)")
    if not default.is_file():
        raise ValueError(f"kit {str(kit)!r} has no local/resources.json.default: re-copy it from provisioning")
    if target.exists() and not force:
        raise ValueError(f"{str(target)!r} exists: edit it by hand or pass --force to regenerate it")
    config = json.loads(default.read_text())
    allow = config.get("class_allow_list")
    if not isinstance(allow, list):
        raise ValueError(f"{str(default)!r} has no class_allow_list list; is this a FLARE 2.9 kit?")
    if PREFIX not in allow:
        allow.append(PREFIX)
    if heart_beat_timeout < 30:
        raise ValueError(f"heart_beat_timeout {heart_beat_timeout:g} s is shorter than three of a site's 10 s heartbeats")
    for server in config.get("servers", []):
        server["heart_beat_timeout"] = heart_beat_timeout
    target.write_text(json.dumps(config, indent=2) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kit", type=Path, help="startup kit folder (contains startup/ and local/)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing local/resources.json")
    parser.add_argument("--heart-beat-timeout", type=float, default=HEART_BEAT_TIMEOUT,
                        help=f"server: log a silent site out after S seconds (default {HEART_BEAT_TIMEOUT:g}; FLARE: 600)")
    args = parser.parse_args(argv)
    try:
        path = allow_omnifm(args.kit, force=args.force, heart_beat_timeout=args.heart_beat_timeout)
    except ValueError as err:
        print(f"allow_omnifm: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} (class_allow_list + {PREFIX!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
