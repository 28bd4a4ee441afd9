"""``omnifm-verify-data``: check a site's data before it joins a federation.

Reads the site's ``omnifm_site.json``, loads every case of its datalist through the same
ingestion the FL client uses and prints one line per bad case (by index, never by name or path),
one per site-level problem, and a summary. Run it after ``omnifm-prepare-data``::

    omnifm-verify-data --site-config <startup kit>/local/omnifm_site.json \\
        --classes background necrotic edema enhancing

For a classifier trained on per-case classes (``labels: "case"``), ``--case-classes`` names the
job's classes in index order (default: the config's ``"case_classes"``, if it declares them): each
case's ``"class"`` is checked (missing, blank, unknown name, wrong type, index out of range: the case
is bad, by index and reason), label volumes become optional, and a site whose good cases cover one
class only is still usable with a ``site: note:`` line saying so::

    omnifm-verify-data --site-config <startup kit>/local/omnifm_site.json --case-classes benign malignant

Exit codes: 0 the site has usable cases, 1 it does not, 2 the config (or datalist) is invalid.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from omnifm.data.integrity import IntegrityReport, Loader, check_label_map, resolve_cases, verify_cases
from omnifm.data.site_config import SITE_CONFIG_NAME, SiteConfigError, check_classes, load_site_config
from omnifm.tools._cli import pipe_safe

__all__ = ["build_parser", "main", "verify_site"]

EXIT_USABLE, EXIT_UNUSABLE, EXIT_BAD_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``omnifm-verify-data``."""
    parser = argparse.ArgumentParser(
        prog="omnifm-verify-data",
        description="Check every case of a site's data; bad cases are reported by index only.",
        epilog="Exit codes: 0 usable cases remain, 1 none (or a site problem), 2 invalid config. "
        "Field reference: site_configs/README.md.",
    )
    parser.add_argument("--site-config", required=True, type=Path, help=f"the site's {SITE_CONFIG_NAME}")
    parser.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="the federation's class names in index order (default: the label_map's class names "
        "in ascending raw-value order)",
    )
    parser.add_argument(
        "--case-classes",
        nargs="+",
        metavar="NAME",
        help="check per-case classes (a classifier with labels \"case\"): the job's class names in index order "
        "(default: the config's \"case_classes\", if any; without either, no class is checked)",
    )
    return parser


def verify_site(
    site_config: str | Path, classes: Sequence[str] | None = None, loader: Loader | None = None,
    case_classes: Sequence[str] | None = None,
) -> IntegrityReport:
    """Load a site config, resolve its datalist and verify every case.

    Args:
        site_config: Path of the site's ``omnifm_site.json``.
        classes: The federation's class names; default: the config's class names.
        loader: Case loader (default ``omnifm.data.ingest.load_case``).
        case_classes: Check each case's ``"class"`` against these names (case mode); default: the
            config's ``case_classes`` (None there too: no class check).

    Raises:
        SiteConfigError: the config or the datalist is invalid (incl. ``DatalistError``), or
            ``case_classes`` differ from the config's.
        ValueError: ``classes`` is malformed.
    """
    config = load_site_config(site_config)
    if case_classes is not None:
        config.check_case_classes(check_classes(case_classes))
    case_classes = case_classes if case_classes is not None else config.case_classes
    check_label_map(config, case_classes is None)
    classes = check_classes(classes) if classes is not None else (config.class_names() or ["background"])
    config.label_values(classes)  # an unknown class is a config error: fail before loading anything
    return verify_cases(resolve_cases(config), config, classes, loader, case_classes=case_classes)


@pipe_safe
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``omnifm-verify-data``; returns the exit code (0 usable, 1 not usable, 2 bad config)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for option, value in (("--classes", args.classes), ("--case-classes", args.case_classes)):
        try:
            check_classes(value) if value is not None else None
        except ValueError as err:
            parser.error(f"{option}: {err}")
    try:
        report = verify_site(args.site_config, args.classes, case_classes=args.case_classes)
    except SiteConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    for line in report.lines():
        print(line)
    return EXIT_USABLE if report.usable else EXIT_UNUSABLE


if __name__ == "__main__":
    sys.exit(main())
