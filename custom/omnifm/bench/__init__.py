"""Benchmark harness: the algorithm x setting x seed grid, in-process, on the built-in phantom.

The in-process runner calls the same core code as the FLARE job (``SiteTrainer`` on the site
side, :func:`omnifm.algorithms.server_round` on the server side); only the transport differs.
``omnifm-bench --preset quick`` (or ``python -m omnifm.bench``) runs a small grid; see
``benchmarks/README.md`` for the full preset and its results.

The names below are imported on first use (PEP 562), so ``omnifm-bench --help`` does not pay for
torch, MONAI and SciPy.
"""

from __future__ import annotations

from omnifm.lazy import lazy_attributes

_LAZY = {
    "SETTINGS": "omnifm.bench.names",
    "DataConfig": "omnifm.bench.settings",
    "load_federation": "omnifm.bench.settings",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
