"""Suite-wide settings: GPU skips, a fixed seed, and the cores each parallel test process may use.

``python -m pytest`` runs the suite in parallel (``-n auto --dist loadfile`` in pyproject.toml,
pytest-xdist): one test process per core, at most :data:`MAX_WORKERS`. Most of the suite's wall
time is end-to-end runs (simulator, deployment) that keep under one core busy while FLARE starts
processes and polls (a ``-t 1`` simulator job: 288 s of CPU in 284 s of wall time on 2 cores), so
two test processes on two cores finish sooner than one (the full suite: 16 min against 27 min,
both beside other work on the machine). Each process gets its share of the cores for PyTorch
and for the processes it starts (``OMP_NUM_THREADS``), so they do not oversubscribe.

``loadfile`` keeps each test file in one process: the deployment tests never run two
federations at once, the simulator tests of one file never overlap, and a module's fixture (the
provisioned federation) is built once. (``loadgroup`` would be finer, but pytest-xdist 3.8 does
not group under pytest 9.2: pytest-xdist issue 1386.) ``-n 0`` runs everything in this process,
with PyTorch's default threads.
"""

from __future__ import annotations

import os

import pytest
import torch

MAX_WORKERS = 4  # each end-to-end test starts several processes of its own


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one test process per core, at most :data:`MAX_WORKERS`."""
    return max(1, min(_cores(), MAX_WORKERS))


def pytest_configure(config) -> None:
    """In a parallel test process: its share of the cores for PyTorch and for what it starts."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        share = max(1, _cores() // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
