"""The data tools answer ``--help`` without importing torch, MONAI, SciPy or nibabel, and a reader that
closes the pipe early (``... | head``) ends them quietly (exit 141, no BrokenPipeError traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

TOOLS = ["make_phantom", "prepare_data", "verify_data", "he_context"]
HEAVY = ("torch", "monai", "scipy", "nibabel", "tenseal", "nvflare", "matplotlib")

PROBE = """
import json, sys, time
start = time.perf_counter()
from omnifm.tools.{tool} import main
try:
    main(["--help"])
except SystemExit:
    pass
sys.stderr.write(json.dumps({{"seconds": time.perf_counter() - start,
                              "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


@pytest.mark.parametrize("tool", TOOLS)
def test_help_imports_no_heavy_module(tool):
    done = subprocess.run([sys.executable, "-c", PROBE.format(tool=tool, heavy=HEAVY)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["heavy"] == [], f"omnifm.tools.{tool} --help imported {report['heavy']}"


def test_bench_subcommand_parsers_keep_the_modules_constants():
    from omnifm.bench import flare, premise
    from omnifm.bench.subcommands import premise_parser

    assert premise.FRACTIONS == tuple(premise_parser().parse_args(["--out", "x"]).fractions)
    assert flare.JOB.is_dir() and (flare.JOB / "meta.json").is_file()


def test_make_phantom_parser_constants_match_the_phantom_module():
    from omnifm.data import phantom
    from omnifm.tools import make_phantom

    assert make_phantom.FORMATS == phantom.FORMATS
    assert tuple(make_phantom.DEFAULT_SHAPE) == tuple(phantom.DEFAULT_SHAPE)
    assert tuple(make_phantom.SITE_MODALITIES) == tuple(phantom.SITE_MODALITIES)
    assert make_phantom.MANIFEST_NAME == phantom.MANIFEST_NAME


def _run_into_closed_pipe(args: list[str]) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` with stdout a pipe whose reader is already gone (what ``| head`` leaves)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", *args], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("tool", TOOLS)
def test_help_into_a_closed_pipe_ends_quietly(tool):
    done = _run_into_closed_pipe([f"omnifm.tools.{tool}", "--help"])
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode in (0, 141)  # argparse itself ignores a failed write of the help text


def test_a_real_run_into_a_closed_pipe_ends_quietly(tmp_path):
    start = time.perf_counter()
    done = _run_into_closed_pipe(["omnifm.tools.make_phantom", "--out", str(tmp_path), "--sites", "1",
                                  "--cases", "2", "--shape", "16", "16", "8"])
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 141
    assert time.perf_counter() - start < 300


def test_pipe_safe_passes_the_exit_code_through(capsys):
    from omnifm.tools._cli import pipe_safe

    @pipe_safe
    def main(code: int) -> int:
        print("out")
        return code

    assert main(3) == 3
    assert capsys.readouterr().out == "out\n"


def test_he_context_without_tenseal_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    from omnifm.tools import he_context

    monkeypatch.setitem(sys.modules, "tenseal", None)  # "import tenseal" now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "omnifm.fl.he", raising=False)
    assert he_context.main([str(tmp_path / "startup")]) == he_context.EXIT_NO_TENSEAL
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert '".[he]"' in err and "TenSEAL" in err
    assert not (tmp_path / "startup").exists()


BENCH_PROBE = """
import json, sys
from omnifm.bench.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
sys.stderr.write(json.dumps(sorted(m for m in {heavy!r} + ("numpy",) if m in sys.modules)))
"""


@pytest.mark.parametrize(
    "argv", [["--help"], ["report", "--help"], ["premise", "--help"], ["contrast", "--help"], ["flare-cost", "--help"]]
)
def test_bench_help_imports_no_heavy_module(argv):
    """Issue 13, item 23: ``omnifm-bench [subcommand] --help`` answers from torch-free names (names, subcommands)."""
    done = subprocess.run([sys.executable, "-c", BENCH_PROBE.format(argv=argv, heavy=HEAVY)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: omnifm-bench" in done.stdout
    assert json.loads(done.stderr.strip().splitlines()[-1]) == [], "omnifm-bench --help imported the stack"


def test_bench_names_match_the_modules_that_own_them():
    from omnifm.bench import names, presets, settings

    assert tuple(sorted(presets.PRESETS)) == tuple(sorted(names.PRESET_NAMES))
    assert settings.SETTINGS is names.SETTINGS and presets.GROUPS is names.GROUPS


def test_bench_help_into_a_closed_pipe_ends_quietly():
    done = _run_into_closed_pipe(["omnifm.bench", "--help"])
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode in (0, 141)
