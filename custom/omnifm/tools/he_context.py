"""``omnifm-he-context``: write TenSEAL CKKS context files for the HE job in the simulator or a POC.

Example::

    omnifm-he-context /tmp/ws/startup            # before: nvflare simulator jobs/omnifm_seg_he -w /tmp/ws
    omnifm-he-context /tmp/ws/startup --force    # new keys (old encrypted models become unreadable)

Writes ``server_context.tenseal`` (relinearisation keys, no secret key) and
``client_context.tenseal`` (with the secret key of the symmetric CKKS scheme) made by FLARE's provisioning ``HEBuilder`` with
the same parameters. The simulator copies ``<workspace>/startup`` into every participant's
``startup/`` folder, where FLARE's HE components look for them. Real deployments get these files
from provisioning (``provisioning/project_he.yml``), one client context per site kit and none with
the secret key on the server. A thin wrapper over :func:`omnifm.fl.he.write_contexts`.

Exit codes: 0 written, 2 the files exist (without ``--force``) or a parameter is bad, 3 TenSEAL is
not installed (the ``[he]`` extra: ``pip install -e ".[he]"``); errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omnifm.tools._cli import pipe_safe

__all__ = ["build_parser", "main"]

EXIT_WRITTEN, EXIT_BAD_ARGS, EXIT_NO_TENSEAL = 0, 2, 3
HE_EXTRA_HINT = 'TenSEAL is not installed: install the HE extra with  pip install -e ".[he]"  (or  pip install tenseal)'


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``omnifm-he-context``."""
    parser = argparse.ArgumentParser(
        prog="omnifm-he-context",
        description="Write server_context.tenseal and client_context.tenseal (CKKS) for simulation or POC.",
    )
    parser.add_argument("folder", type=Path, help="destination, e.g. <simulator workspace>/startup")
    parser.add_argument("--force", action="store_true", help="replace existing context files (new keys)")
    parser.add_argument("--poly-modulus-degree", type=int, default=8192, help="CKKS ring size (default 8192)")
    parser.add_argument(
        "--coeff-mod-bit-sizes", type=int, nargs="+", default=[60, 40, 40], help="coefficient moduli (default 60 40 40)"
    )
    parser.add_argument("--scale-bits", type=int, default=40, help="log2 of the CKKS scale (default 40)")
    return parser


@pipe_safe
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 on success, 2 when the files exist (without ``--force``) or a parameter is bad,
    3 without TenSEAL."""
    args = build_parser().parse_args(argv)
    try:
        from omnifm.fl.he import write_contexts  # tenseal + nvflare: loaded only when the command runs
    except ImportError as err:
        if err.name != "tenseal":
            raise
        print(f"omnifm-he-context: error: {HE_EXTRA_HINT}", file=sys.stderr)
        return EXIT_NO_TENSEAL

    try:
        paths = write_contexts(
            args.folder,
            force=args.force,
            poly_modulus_degree=args.poly_modulus_degree,
            coeff_mod_bit_sizes=args.coeff_mod_bit_sizes,
            scale_bits=args.scale_bits,
        )
    except ValueError as err:
        print(f"omnifm-he-context: {err}", file=sys.stderr)
        return EXIT_BAD_ARGS
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return EXIT_WRITTEN


if __name__ == "__main__":
    sys.exit(main())
