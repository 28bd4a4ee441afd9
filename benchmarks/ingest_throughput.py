"""Throughput of DICOM ingestion against plain pydicom decoding of the same files.

Builds an uncompressed int16 DICOM series (``--size`` x ``--size`` x ``--slices``, shuffled file
names, RescaleSlope/Intercept) in a temporary folder, then times, in the same run:

- ``pydicom``: ``dcmread`` + ``pixel_array`` for every file (the floor: decoding only);
- ``load_case``: :func:`omnifm.data.ingest.load_case` without normalisation (MONAI reader,
  position sort, rescale, stacking, RAS orientation; in memory);
- ``prepare_dataset``: :func:`omnifm.data.ingest.prepare_dataset` end to end (discovery header
  pass, the above, and writing a gzip-compressed NIfTI plus the datalist).

Each is run ``--repeats`` times after one untimed warm-up (so every method reads from the page
cache) and the median is reported as slices/s and MB/s of DICOM bytes, with the ratio to plain
pydicom. Prints a markdown table and, with ``--out``, writes the same numbers as JSON::

    python benchmarks/ingest_throughput.py --slices 200 [--size 256] [--repeats 3] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import monai
import numpy as np
import pydicom

from omnifm.data.dicom_series import write_dicom_series
from omnifm.data.ingest import load_case, prepare_dataset
from omnifm.validation import check_int


def write_series(folder: Path, slices: int, size: int, seed: int = 0) -> list[Path]:
    """An axial int16 series with 1 x 1 mm pixels, 2 mm apart, written in shuffled order."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = (1000 * np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (0.1 * size**2))).astype(np.int16)
    order = rng.permutation(slices)
    stored = np.empty((slices, size, size), dtype=np.int16)
    for k in order:  # noise drawn in write order
        stored[k] = base + rng.integers(0, 50, size=(size, size), dtype=np.int16)
    return write_dicom_series(
        folder,
        stored,
        (1.0, 1.0, 2.0),
        "MR",
        patient_name="BENCH^MARK",
        series_description="AX T1",
        file_order=order,
        file_name="slice_{count:05d}.dcm",
    )


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _plain_pydicom(files: list[Path]) -> None:
    for path in files:
        pydicom.dcmread(path).pixel_array  # noqa: B018 - decoding is the point


def run(slices: int, size: int, repeats: int) -> dict:
    """Build the series, time the three methods and return the results as a dict."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_series(root / "input" / "series", slices, size)
        n_bytes = sum(f.stat().st_size for f in files)
        case = {"image": str(root / "input" / "series"), "modality": "t1"}
        counter = iter(range(10**6))
        methods: dict[str, Callable[[], object]] = {
            "pydicom dcmread + pixel_array": lambda: _plain_pydicom(files),
            "load_case (MONAI read + RAS, in memory)": lambda: load_case(case, normalize=False),
            "prepare_dataset (discover + convert + NIfTI.gz)": lambda: prepare_dataset(
                root / "input", root / f"out{next(counter)}", progress=False
            ),
        }
        for method in methods.values():  # warm-up: page cache, lazy imports, MONAI reader setup
            method()
        seconds = {name: _median_seconds(method, repeats) for name, method in methods.items()}
    baseline = seconds["pydicom dcmread + pixel_array"]
    rows = [
        {
            "method": name,
            "seconds": round(s, 4),
            "slices_per_s": round(slices / s, 1),
            "mb_per_s": round(n_bytes / 1e6 / s, 1),
            "ratio_vs_pydicom": round(baseline / s, 3),
        }
        for name, s in seconds.items()
    ]
    return {
        "series": {"slices": slices, "size": size, "dtype": "int16", "dicom_mb": round(n_bytes / 1e6, 2)},
        "repeats": repeats,
        "machine": {
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "pydicom": pydicom.__version__,
            "monai": monai.__version__,
            "numpy": np.__version__,
        },
        "results": rows,
    }


def markdown(result: dict) -> str:
    """The results as a markdown table with a one-line header about the data and the machine."""
    series, machine = result["series"], result["machine"]
    lines = [
        f"DICOM series {series['size']}x{series['size']}x{series['slices']} {series['dtype']} "
        f"({series['dicom_mb']} MB), median of {result['repeats']} runs; machine: {machine['cpu_count']} CPUs "
        f"{machine['machine']}, Python {machine['python']}, pydicom {machine['pydicom']}, MONAI {machine['monai']}",
        "",
        "| method | seconds | slices/s | MB/s | ratio vs pydicom |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['method']} | {r['seconds']:.3f} | {r['slices_per_s']:.1f} | {r['mb_per_s']:.1f} | "
        f"{r['ratio_vs_pydicom']:.3f} |"
        for r in result["results"]
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the table and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=200, help="number of slices (default 200)")
    parser.add_argument("--size", type=int, default=256, help="rows = columns (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        slices, size = check_int("slices", args.slices, 2), check_int("size", args.size, 8)
        repeats = check_int("repeats", args.repeats)
    except ValueError as err:
        parser.error(str(err))
    result = run(slices, size, repeats)
    table = markdown(result)
    print(table)
    if args.out is not None:
        args.out.write_text(json.dumps({**result, "markdown": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
