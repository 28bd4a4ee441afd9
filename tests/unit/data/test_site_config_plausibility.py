"""Implausible values in omnifm_site.json are refused at load time, naming the field (issue 13, item 4).

Before, ``"spacing": [0.001, 0.001, 0.001]`` passed the config check and surfaced per case as
"unreadable (RuntimeError)" when resampling tried to allocate terabytes.
"""

from __future__ import annotations

import pytest

from omnifm.data.site_config import PHANTOM_MAX_CASES, PHANTOM_MAX_SIDE, SiteConfigError, parse_site_config

BASE = {"format": "phantom", "modalities": ["t1"], "label_map": {"0": "background", "1": "tumour"}}


@pytest.mark.parametrize(
    ("fields", "field", "shown"),
    [
        ({"spacing": [0.001, 0.001, 0.001]}, '"spacing[0]"', "got 0.001"),
        ({"spacing": [1.0, 1.0, 500.0]}, '"spacing[2]"', "got 500.0"),
        ({"phantom": {"shape": [100000, 64, 24]}}, '"phantom.shape"', "[100000, 64, 24]"),
        ({"phantom": {"cases": 10**7}}, '"phantom.cases"', "got 10000000"),
        ({"phantom": {"cases": 1000, "shape": [512, 512, 64]}}, '"phantom.cases" x "phantom.shape"', "GiB"),
    ],
    ids=["spacing-tiny", "spacing-huge", "phantom-side", "phantom-cases", "phantom-voxels"],
)
def test_implausible_values_name_the_field(tmp_path, fields, field, shown) -> None:
    with pytest.raises(SiteConfigError) as err:
        parse_site_config({**BASE, **fields}, tmp_path)
    assert field in str(err.value) and shown in str(err.value)


@pytest.mark.parametrize(
    "fields",
    [{"spacing": [0.5, 0.5, 5.0]}, {"spacing": [0.05, 0.05, 20.0]},
     {"phantom": {"cases": PHANTOM_MAX_CASES, "shape": [64, 64, 16]}},
     {"phantom": {"cases": 2, "shape": [PHANTOM_MAX_SIDE, 64, 8]}}],
)
def test_plausible_values_at_the_bounds_still_pass(tmp_path, fields) -> None:
    parse_site_config({**BASE, **fields}, tmp_path)
