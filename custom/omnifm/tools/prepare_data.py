"""``omnifm-prepare-data``: convert a site's DICOM or NIfTI export into anonymous NIfTI cases.

A thin wrapper over :func:`omnifm.data.ingest.prepare_dataset`::

    omnifm-prepare-data --input /data/export --output /data/omnifm [--format dicom|nifti]
        [--spacing 1 1 1] [--modality t1|t1ce|t2|flair|ct|pet|spect] [--quiet]

    omnifm-prepare-data --paired --input /data/export --output /data/omnifm [--spacing 1 1 1]

    omnifm-prepare-data --input /data/export --output /data/omnifm --classes labels.csv
        [--class-names benign malignant]

Writes ``images/case_000.nii.gz``, ``labels/case_000.nii.gz`` and ``datalist.json`` into
``--output``, prints one line per case (index, anonymous id, outcome) and then a summary table.
With ``--paired`` each case folder holds one image per modality named by it (``ct.nii.gz``,
``t1ce.nii.gz``, or a DICOM series folder ``ct/``) and ``label.nii.gz``, all on one grid; the
output is ``images/<modality>/case_000.nii.gz`` and paired datalist entries
(:mod:`omnifm.data.ingest.paired`).
With ``--classes`` (either form) each converted case's datalist entry gets ``"class"`` from a CSV
of ``case,class`` rows, the case named as in the input folder (a classifier with per-case labels,
``labels: "case"``); ``--class-names`` lists the allowed classes (recommended: catches typos). Rows
naming no case, blank or unknown classes are reported by CSV line and ignored; a case no row names
is converted without a class and reported by index and anonymous id (details:
:mod:`omnifm.data.ingest.case_classes`).
Nothing printed contains a path, file name, patient name or DICOM tag value (nor a CSV cell).

Exit codes: 0 at least one case was converted (with ``--classes``: and at least one converted case
has a class), 1 none was (with ``--classes``: or no converted case has a class), 2 invalid arguments
(including an ``--output`` that is a file or cannot be written, and a ``--classes`` CSV that is
missing, not UTF-8, has no header, fewer than two columns or no row) or output that could not be
written; errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from omnifm.data.modalities import MODALITIES
from omnifm.tools._cli import pipe_safe

__all__ = ["build_parser", "main"]

EXIT_CONVERTED, EXIT_NOTHING, EXIT_BAD_ARGS = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``omnifm-prepare-data``."""
    parser = argparse.ArgumentParser(
        prog="omnifm-prepare-data",
        description="Convert DICOM series or NIfTI volumes into anonymous, RAS-oriented NIfTI cases "
        "plus a datalist.json. Bad cases are skipped and reported by index and anonymous id.",
        epilog="Exit codes: 0 at least one case converted (with --classes: one with a class), 1 none, 2 invalid "
        "arguments (incl. an unusable --classes CSV) or output not writable. Layouts: see omnifm.data.ingest.",
    )
    parser.add_argument("--input", required=True, type=Path, help="folder with the site's export")
    parser.add_argument("--output", required=True, type=Path, help="output folder (not inside --input)")
    parser.add_argument("--format", choices=("dicom", "nifti"), default=None, help="default: look for both")
    parser.add_argument(
        "--spacing", nargs=3, type=float, metavar=("X", "Y", "Z"), default=None, help="resample to this spacing (mm)"
    )
    parser.add_argument(
        "--modality",
        choices=MODALITIES,
        default=None,
        help="force the modality of every case (default: from DICOM; NIfTI cases are assumed t1)",
    )
    parser.add_argument(
        "--paired", action="store_true",
        help="paired cases: each case folder holds <modality>.nii.gz images (or <modality>/ DICOM series) and "
        "label.nii.gz on one grid; the datalist lists each case's images by modality (no --format/--modality)",
    )
    parser.add_argument(
        "--classes", type=Path, default=None, metavar="CSV",
        help="per-case classes: a CSV with a header and rows 'case,class' (columns headed case/class, else the "
        "first two), the case named as in the input folder; each converted case's datalist entry gets \"class\"",
    )
    parser.add_argument(
        "--class-names", nargs="+", default=None, metavar="NAME",
        help="with --classes: the allowed class names (the job's classes); a row with another class is reported",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-case progress lines")
    return parser


@pipe_safe
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``omnifm-prepare-data``; returns the exit code (0 converted, 1 nothing, 2 bad arguments or unwritable output)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.paired and (args.format or args.modality):
        parser.error("--paired reads each image's modality from its file name: drop --format and --modality")
    if args.class_names is not None and args.classes is None:
        parser.error("--class-names checks the classes of a --classes CSV: give --classes too")
    from omnifm.data.ingest import prepare_dataset  # MONAI + torch: seconds, so not for --help
    from omnifm.data.ingest.paired import prepare_paired

    spacing = None if args.spacing is None else tuple(args.spacing)
    try:
        table = _class_table(args.classes, args.class_names)
        if args.paired:
            summary = prepare_paired(args.input, args.output, spacing=spacing, progress=not args.quiet,
                                     class_table=table)
        else:
            summary = prepare_dataset(args.input, args.output, fmt=args.format, spacing=spacing,
                                      modality=args.modality, progress=not args.quiet, class_table=table)
    except ValueError as err:
        print(f"omnifm-prepare-data: error: {err}", file=sys.stderr)
        return EXIT_BAD_ARGS
    except OSError as err:  # e.g. the disk filled up while writing
        reason = err.strerror or type(err).__name__
        print(f"omnifm-prepare-data: error: writing to --output failed ({reason}); free space or fix its permissions "
              "and run again", file=sys.stderr)
        return EXIT_BAD_ARGS
    print(summary.table())
    usable = summary.converted and (args.classes is None or summary.classed)
    return EXIT_CONVERTED if usable else EXIT_NOTHING


def _class_table(path: Path | None, names: list[str] | None) -> object:
    """The parsed ``--classes`` CSV, or None; a bad CSV or ``--class-names`` is a ``ValueError``."""
    if path is None:
        return None
    from omnifm.data.ingest.case_classes import read_class_csv
    from omnifm.data.site_config import check_classes

    if names is not None:
        try:
            check_classes(names)
        except ValueError as err:
            raise ValueError(f"--class-names: {err}") from None
    return read_class_csv(path, names)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
