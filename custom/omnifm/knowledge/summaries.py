"""What a site uploads to the key -> value bank: spectral keys with class-conditional feature values.

Per training slice the site has its spectral token ``s`` (the key space), the shared encoder's
bottleneck feature map ``r`` (``d`` channels on a coarse grid) and its label. The label, one-hot
and area-averaged onto the bottleneck grid, gives each grid cell a class mix; a slice's class
sums are ``sum_cells mix_c * r`` and its class mass ``sum_cells mix_c``. The tokens are clustered
(:func:`~omnifm.knowledge.prototypes.cluster_tokens`: k-means, clusters of fewer than
``min_count`` slices dropped, so no entry is one image's data), and every kept cluster becomes
one entry:

- key: the cluster's token centroid,
- value: for each class ``c`` the mean bottleneck feature of the cluster's cells of class ``c``
  (mass-weighted), followed by the cluster's class fractions. A class the cluster never shows
  gets the site-wide mean feature of that class (or 0) and fraction 0, so the model masks it
  and a server-side merge of entries does not drag real means towards 0.

The value layout ``[mean_0 | ... | mean_{C-1} | fraction_0 .. fraction_{C-1}]`` is the one
:class:`omnifm.models.OmniFM` reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from omnifm.knowledge.prototypes import cluster_tokens

__all__ = ["class_sums", "summarize_entries"]


def class_sums(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-slice class sums of bottleneck features and class masses.

    Args:
        features: ``(N, d, *grid)`` bottleneck feature maps.
        labels: ``(N, 1, *spatial)`` integer class maps (values in ``[0, num_classes)``).
        num_classes: ``C``.

    Returns:
        ``sums`` ``(N, C, d)`` and ``mass`` ``(N, C)`` (float32; mass in bottleneck cells).

    Examples::

        >>> feats = torch.ones(1, 2, 2, 2)
        >>> labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)
        >>> labels[..., :2, :2] = 1
        >>> sums, mass = class_sums(feats, labels, 2)
        >>> mass.tolist(), sums[0, 1].tolist()
        ([[3.0, 1.0]], [1.0, 1.0])
    """
    spatial_dims = features.ndim - 2
    onehot = F.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).float()
    pool = F.adaptive_avg_pool2d if spatial_dims == 2 else F.adaptive_avg_pool3d
    mix = pool(onehot, features.shape[2:]).flatten(2)  # (N, C, cells)
    sums = torch.einsum("ncl,ndl->ncd", mix, features.flatten(2).float())
    return sums, mix.sum(dim=2)


def summarize_entries(
    tokens: Tensor,
    sums: Tensor,
    mass: Tensor,
    num_prototypes: int,
    min_count: int,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Cluster a site's slices into bank entries (see the module docstring).

    Args:
        tokens: ``(N, d_s)`` spectral tokens.
        sums: ``(N, C, d)`` per-slice class sums from :func:`class_sums`.
        mass: ``(N, C)`` per-slice class masses.
        num_prototypes: at most this many entries.
        min_count: smallest cluster (slices) kept.
        seed: k-means seed.

    Returns:
        ``keys`` ``(P, d_s)``, ``values`` ``(P, C * (d + 1))`` and member ``counts`` ``(P,)``.
    """
    keys, counts, assignment = cluster_tokens(tokens, num_prototypes, min_count=min_count, seed=seed)
    classes, width = sums.shape[1], sums.shape[2]
    site_mean = sums.sum(dim=0) / mass.sum(dim=0).clamp_min(1e-6).unsqueeze(-1)  # (C, d)
    values = torch.zeros(keys.shape[0], classes * (width + 1))
    for entry in range(keys.shape[0]):
        members = assignment == entry
        entry_mass = mass[members].sum(dim=0)  # (C,)
        means = sums[members].sum(dim=0) / entry_mass.clamp_min(1e-6).unsqueeze(-1)
        means = torch.where(entry_mass.unsqueeze(-1) > 0, means, site_mean)
        values[entry] = torch.cat([means.flatten(), entry_mass / entry_mass.sum().clamp_min(1e-6)])
    return keys, values, counts
