"""The core never imports nvflare; only omnifm/fl does (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "custom" / "omnifm"
# omnifm-admin's FLARE API session lives in omnifm/fl (admin_session.py, monitor.py); tools/admin.py
# is argparse over it and is held to the core rule like every other tool.
CORE_FILES = sorted(p for p in PACKAGE.rglob("*.py") if "fl" not in p.relative_to(PACKAGE).parts[:1])


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_files_are_found():
    assert any(p.name == "bank.py" for p in CORE_FILES)
    assert not any(p.parent.name == "fl" for p in CORE_FILES)


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_does_not_import_nvflare(path: Path):
    offending = [m for m in _imported_modules(path) if m == "nvflare" or m.startswith("nvflare.")]
    assert not offending, f"{path.relative_to(PACKAGE)} imports {offending}; only omnifm/fl may"
