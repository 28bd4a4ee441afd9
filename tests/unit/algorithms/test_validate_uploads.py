"""The core round rule validates its uploads (issue 13, item 12).

The FLARE aggregator is the gate for untrusted uploads (tests/fl/test_aggregator.py); this is the
same protection for every other driver of ``server_round`` (the benchmark, tests, a new workflow).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnifm.algorithms import Upload, make_run_spec, server_round
from omnifm.algorithms.server import validate_uploads

SPEC = make_run_spec("fedavg", model={"channels": [8, 16, 32], "strides": [2, 2]})
GLOBAL = {"w": np.zeros((2, 3), np.float32)}


def _up(site: str, value=1.0, n=10, shape=(2, 3), **kwargs) -> Upload:
    return Upload({"w": np.full(shape, value, np.float32)}, n, site=site, **kwargs)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (_up("site-bad", shape=(1, 3)), r"site-bad: weights\['w'\] must be finite floats of shape \(2, 3\), got float32 \(1, 3\)"),
        (_up("site-bad", value=np.nan), r"site-bad: weights\['w'\] must be finite"),
        (Upload({"w": np.ones((2, 3), np.int64)}, 10, site="site-bad"), r"site-bad: weights\['w'\] must be finite floats"),
        (Upload({}, 10, site="site-bad"), "site-bad: weights must have the global weights' names"),
        (Upload({"w": np.ones((2, 3), np.float32), "v": np.ones(1, np.float32)}, 10, site="site-bad"), r"differing: \['v'\]"),
        (_up("site-bad", n=-5), r"site-bad: n_samples must be an int in \[1, 1000000000\], got -5"),
        (_up("site-bad", n=0), "site-bad: n_samples"),
        (_up("site-bad", n=True), "site-bad: n_samples"),
        (_up("site-bad", n=10**400), "site-bad: n_samples"),
        (_up("site-bad", prototypes=torch.full((1, 4), float("nan"))), r"site-bad: prototypes must be a finite \(P, d\)"),
        (_up("site-bad", prototypes=torch.zeros(4)), "site-bad: prototypes"),
        (_up("site-bad", retrievals={0: -1}), "site-bad: retrievals"),
        (_up("site-bad", retrievals={"a": 1}), "site-bad: retrievals"),
    ],
)
def test_server_round_refuses_a_bad_upload_naming_the_site(bad, match):
    """Before, a broadcastable shape was averaged in, a negative count extrapolated, NaN spread silently."""
    with pytest.raises(ValueError, match=match):
        server_round(SPEC, GLOBAL, {"omnifm_bank": None, "omnifm_state": {}}, [_up("site-good"), bad])


def test_good_uploads_pass_and_are_averaged():
    validate_uploads(GLOBAL, [_up("a"), _up("b", prototypes=torch.zeros(2, 4), retrievals={1: 3})])
    weights, _ = server_round(SPEC, GLOBAL, {"omnifm_bank": None, "omnifm_state": {}}, [_up("a", 1.0, 1), _up("b", 3.0, 3)])
    np.testing.assert_allclose(weights["w"], 2.5)
