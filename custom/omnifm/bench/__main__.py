"""``python -m omnifm.bench``: same as the ``omnifm-bench`` console script."""

from omnifm.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
