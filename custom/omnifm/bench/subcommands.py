"""The command lines of ``omnifm-bench premise``, ``contrast`` and ``flare-cost``, without their work.

Their modules import torch, the phantom and the engine at the top; these parsers import nothing
heavy, so ``omnifm-bench <subcommand> --help`` and a bad argument answer in well under a second
(:func:`omnifm.bench.cli.main` parses with them before importing the subcommand).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omnifm.data.modalities import MODALITIES

PREMISE_FRACTIONS = (0.05, 0.1, 0.25, 0.5)
SEG_JOB = Path(__file__).resolve().parents[3] / "jobs" / "omnifm_seg"


def premise_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnifm-bench premise",
        description="The paper's premise, measured on the phantom: is the low-frequency spectrum shared across modalities?",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for premise.json and premise.md")
    parser.add_argument("--cases", type=int, default=6, help="anatomies (default 6)")
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 48, 16], help="phantom volume H W D")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(PREMISE_FRACTIONS), help="low-pass fractions")
    parser.add_argument("--modalities", nargs="+", default=None, choices=MODALITIES,
                        help="default: the phantom's site modalities (omnifm.data.phantom.SITE_MODALITIES)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def contrast_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnifm-bench contrast",
        description="How visible the tumour is in each phantom modality after the sites' normalisation.",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for contrast.json and contrast.md")
    parser.add_argument("--cases", type=int, default=8, help="tumour cases per modality (default 8)")
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 48, 16], help="phantom volume H W D")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--site", type=int, default=0, help="site index of the acquisitions")
    return parser


def flare_cost_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnifm-bench flare-cost",
        description="The same configuration through ``nvflare simulator`` and in-process: parity and system cost.",
    )
    parser.add_argument("--algorithm", default="omnifm")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 32, 16])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/system_cost"))
    parser.add_argument("--job", type=Path, default=SEG_JOB)
    parser.add_argument("--threads", type=int, help="simulator -t (default: the simulator's 1, a fresh process per task)")
    return parser


PARSERS = {"premise": premise_parser, "contrast": contrast_parser, "flare-cost": flare_cost_parser}
