"""Where a site's cases come from.

Until site data configuration lands (``omnifm_site.json``), a site without configured data uses
the built-in synthetic phantom: written to disk as NIfTI and read back through MONAI, the same
path real data takes. Each simulated site images a different modality.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from omnifm.data.loading import load_volumes, split_cases
from omnifm.data.phantom import modality_for_site, write_phantom_site


@dataclass
class SiteData:
    """A site's loaded cases and a description that is safe to log (no paths, no names)."""

    train: list[dict[str, np.ndarray]]
    val: list[dict[str, np.ndarray]]
    description: str
    synthetic: bool


def site_index(site_name: str) -> int:
    """``site-3`` -> 2; other names map to a stable number (so each site gets its own modality)."""
    match = re.search(r"(\d+)$", site_name)
    return int(match.group(1)) - 1 if match else zlib.crc32(site_name.encode()) % 1000


@lru_cache(maxsize=8)
def phantom_site_data(
    root: str | Path,
    site_name: str,
    num_cases: int = 20,
    shape: tuple[int, int, int] = (64, 64, 24),
    val_fraction: float = 0.25,
    seed: int = 0,
) -> SiteData:
    """Generate (or reuse) this site's phantom under ``root`` and load it through MONAI.

    Cached per process: the simulator rebuilds a site's executor for every task, and the phantom
    is deterministic, so it is read from disk once per site and process.
    """
    index = site_index(site_name)
    modality = modality_for_site(index)
    datalist = write_phantom_site(Path(root), modality, num_cases, seed=seed + 1000 * index, shape=tuple(shape))
    volumes = load_volumes(datalist)
    train_idx, val_idx = split_cases(len(volumes), val_fraction, seed)
    return SiteData(
        train=[volumes[i] for i in train_idx],
        val=[volumes[i] for i in val_idx],
        description=f"SYNTHETIC phantom, modality {modality}, {len(train_idx)} train / {len(val_idx)} val cases",
        synthetic=True,
    )
