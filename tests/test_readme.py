"""The README opens with the two commands that CI and a fresh machine actually run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _opening_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README must open with a bash code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_run_and_test_commands():
    run, test = _opening_commands()
    assert run.endswith("nvflare simulator jobs/omnifm_seg")
    assert "pytest" in test
    assert all(cmd.startswith("pip install torch==2.13.0 && ") for cmd in (run, test)), "CPU torch first"


def test_ci_runs_the_readme_test_command():
    _, test = _opening_commands()
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_job_the_readme_runs_exists():
    assert (ROOT / "jobs" / "omnifm_seg" / "meta.json").is_file()
