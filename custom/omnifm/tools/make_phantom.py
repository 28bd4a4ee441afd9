"""``omnifm-make-phantom``: write a multi-site brain-tumour phantom federation to disk.

Example::

    omnifm-make-phantom --out /data/phantom --sites 3 --cases 24 --seed 0
    omnifm-make-phantom --out /data/phantom_dicom --sites 2 --cases 4 --format dicom --modalities t1 ct
    omnifm-make-phantom --out /data/phantom_spect --sites 2 --cases 4 --modalities t1 spect

Each site folder (``site-1/``, ``site-2/``, ...) gets ``images/``, ``labels/``,
``datalist.json`` and ``phantom_manifest.json``; an identical request reuses existing files.
A thin wrapper over :func:`omnifm.data.phantom.make_phantom_federation`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from omnifm.data.modalities import MODALITIES
from omnifm.tools._cli import pipe_safe

__all__ = ["build_parser", "main", "summary_table"]

# The parser's choices and defaults, here so that ``--help`` does not import the phantom module
# (nibabel, SciPy: seconds on a busy machine); tests/unit/tools/test_cli_startup.py checks that
# they equal omnifm.data.phantom's FORMATS, DEFAULT_SHAPE and SITE_MODALITIES.
FORMATS = ("nifti", "dicom")
DEFAULT_SHAPE = (64, 64, 24)
SITE_MODALITIES = ("t1ce", "ct", "t2", "pet", "flair", "t1")
MANIFEST_NAME = "phantom_manifest.json"


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``omnifm-make-phantom``."""
    parser = argparse.ArgumentParser(
        prog="omnifm-make-phantom",
        description="Write a synthetic multi-site brain-tumour phantom (NIfTI or DICOM) with datalists.",
    )
    parser.add_argument("--out", required=True, type=Path, help="root folder; sites go to <out>/site-N")
    parser.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    parser.add_argument("--cases", type=int, default=24, help="cases per site (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--modalities",
        nargs="+",
        choices=MODALITIES,
        help=f"modality per site, cycled (default: {' '.join(SITE_MODALITIES)}; spect only when named)",
    )
    parser.add_argument("--format", choices=FORMATS, default="nifti", help="image format (default nifti)")
    parser.add_argument(
        "--shape", nargs=3, type=int, default=list(DEFAULT_SHAPE), metavar=("H", "W", "D"), help="volume shape"
    )
    return parser


def summary_table(out: Path, names: list[str], seconds: dict[str, float]) -> str:
    """One line per site: modality, cases, tumour-free cases, voxel spacing and seconds taken."""
    from omnifm.data.phantom import read_phantom_manifest

    lines = [f"{'site':<10} {'modality':<8} {'cases':>5} {'tumour-free':>11} {'spacing (mm)':<20} {'seconds':>7}"]
    for name in names:
        manifest = read_phantom_manifest(out / name) or {}
        cases = manifest.get("cases", [])
        free = sum(bool(case.get("tumour_free")) for case in cases)
        spacing = "x".join(f"{s:.2f}" for s in manifest.get("spacing", []))
        modality = manifest.get("request", {}).get("modality", "?")
        lines.append(f"{name:<10} {modality:<8} {len(cases):>5} {free:>11} {spacing:<20} {seconds[name]:>7.1f}")
    return "\n".join(lines)


def _manifest_mtime(site_dir: Path) -> int | None:
    """Modification time (ns) of a site's manifest, ``None`` if there is none."""
    try:
        return (site_dir / MANIFEST_NAME).stat().st_mtime_ns
    except OSError:
        return None


class _Progress:
    """``on_site`` callback: prints one line per finished site and remembers its seconds."""

    def __init__(self, out: Path, sites: int) -> None:
        self.out, self.sites = out, sites
        self.seconds: dict[str, float] = {}
        self._before = {name: _manifest_mtime(out / name) for name in (f"site-{i + 1}" for i in range(max(sites, 0)))}

    def __call__(self, name: str, entries: list[dict[str, str]], elapsed: float) -> None:
        self.seconds[name] = elapsed
        modality = entries[0]["modality"] if entries else "?"
        previous = self._before.get(name)
        reused = previous is not None and _manifest_mtime(self.out / name) == previous
        note = " (reused)" if reused else ""
        line = f"[{len(self.seconds)}/{self.sites}] {name}: {modality}, {len(entries)} cases, {elapsed:.1f} s{note}"
        print(line, flush=True)


@pipe_safe
def main(argv: list[str] | None = None) -> int:
    """Run ``omnifm-make-phantom``; returns the exit code (0 on success, 2 on bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage and the message
        return int(exc.code or 0)
    from omnifm.data.phantom import make_phantom_federation  # torch-free, but nibabel + SciPy: not for --help

    progress = _Progress(args.out, args.sites)
    start = time.perf_counter()
    try:
        make_phantom_federation(
            args.out, args.sites, args.cases, args.seed, args.modalities, args.format, tuple(args.shape), progress
        )
    except ValueError as exc:
        print(f"omnifm-make-phantom: error: {exc}", file=sys.stderr)
        return 2
    print(summary_table(args.out, list(progress.seconds), progress.seconds))
    print(f"total {time.perf_counter() - start:.1f} s -> {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
