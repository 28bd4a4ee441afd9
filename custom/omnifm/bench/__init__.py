"""Benchmark harness: the algorithm x setting x seed grid, in-process, on the built-in phantom.

The in-process runner calls the same core code as the FLARE job (``SiteTrainer`` on the site
side, :func:`omnifm.algorithms.server_round` on the server side); only the transport differs.
``omnifm-bench --preset quick`` (or ``python -m omnifm.bench``) runs a small grid; see
``benchmarks/README.md`` for the full preset and its results.
"""

from omnifm.bench.settings import SETTINGS, DataConfig, load_federation

__all__ = ["SETTINGS", "DataConfig", "load_federation"]
