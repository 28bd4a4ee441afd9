"""The CT+MRI fusion classifier of seed 002 (section 4.1), with missing-modality masking.

Two encoders (one per input slot, the classification ResNet-18 topology without its pooling and
head) turn a CT slice and an MRI slice into token maps ``t_ct, t_mri`` (B, N, D). Cross-attention
fuses them as the seed does: CT tokens are the queries, MRI tokens the keys and values, and the
attended tokens are concatenated with the CT tokens and projected back to ``D``. Because a site may
hold only MRI, the fusion runs in both directions (MRI queries CT with its own projections) and the
fused map is the mean of the directions whose query modality is present.

**Missing modalities are masked, never zero-filled.** The input carries a presence plane per slot
after the image planes (``x``: (B, 2S, H, W), planes ``S + s`` all 1 where slot ``s`` holds an
image, 0 where it is absent; :func:`with_presence`). An absent slot's image plane is never read:

- its encoder runs only on the samples that have the slot (so an absent image cannot enter the
  batch-norm statistics either);
- a direction whose key modality is absent attends to nothing; the attended tokens are replaced by
  a learned *missing-modality* token (the model knows which modality it lacks);
- a direction whose query modality is absent is left out of the mean.

The output therefore does not depend on what an absent image plane contains (a test fills it with
noise), and a sample with no present slot is refused. OmniFM taps the fused token map (``r``,
(B, D, h, w)); the head is the classification task's location-aware grid head (``fc``).
"""

from __future__ import annotations

import torch
from torch import nn


def with_presence(image: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``(..., S, H, W)`` slot images and ``(S,)`` presence flags -> ``(..., 2S, H, W)`` model input.

    Examples::

        >>> x = with_presence(torch.ones(2, 3, 3), torch.tensor([1, 0]))
        >>> x.shape, x[2:, 0, 0].tolist()
        (torch.Size([4, 3, 3]), [1.0, 0.0])
    """
    flags = torch.as_tensor(present, dtype=image.dtype)
    planes = flags.view(*([1] * (image.dim() - 3)), -1, 1, 1).expand(*image.shape)
    return torch.cat([image * planes, planes], dim=-3)


def case_with_presence(case: dict) -> dict:
    """A slotted case ``{"image": (S, H, W, D), "present": (S,), ...}`` with its images followed by one
    presence plane per slot (``image`` ``(2S, H, W, D)``), the input a multi-input task's model reads."""
    import numpy as np

    image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(case["image"], -1, 0)))  # (D, S, H, W)
    planes = with_presence(image, torch.from_numpy(np.asarray(case["present"])))
    return {**case, "image": np.ascontiguousarray(np.moveaxis(planes.numpy(), 0, -1))}


def presence(x: torch.Tensor, slots: int) -> torch.Tensor:
    """``(B, S)`` bool: which slots of a ``(B, 2S, H, W)`` input hold an image.

    Raises:
        ValueError: a sample has no image at all.
    """
    present = x[:, slots:].mean(dim=(2, 3)) > 0.5
    if not bool(present.any(dim=1).all()):
        raise ValueError("a sample has no present modality (every presence plane is 0); the integrity gate "
                         "keeps only cases with at least one good modality")
    return present


class ResNetEncoder(nn.Module):
    """A MONAI ResNet's stem and four stages: (B, 1, H, W) -> (B, D, h, w)."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act = resnet.conv1, resnet.bn1, resnet.act
        self.layers = nn.Sequential(resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.act(self.bn1(self.conv1(x))))


class CrossAttentionFusion(nn.Module):
    """One direction of seed 002's fusion: ``query`` tokens attend to ``key`` tokens, concat, project.

    Args:
        dim: token width ``D``.
        heads: attention heads.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.missing = nn.Parameter(torch.zeros(dim))  # the learned token standing in for an absent key modality
        self.project = nn.Linear(2 * dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None, key_present: torch.Tensor) -> torch.Tensor:
        """``query`` (B, N, D); ``key`` (B, N, D) or None; ``key_present`` (B,) bool -> (B, N, D)."""
        attended = self.missing.expand_as(query).clone()
        rows = key_present.nonzero().flatten()
        if key is not None and rows.numel():
            out, _ = self.attention(query[rows], key[rows], key[rows], need_weights=False)
            attended = attended.index_put((rows,), out)
        return self.project(torch.cat([query, attended], dim=-1))


class FusionClassifier(nn.Module):
    """Two-slot cross-attention fusion classifier (see the module docstring).

    Args:
        encoders: one :class:`ResNetEncoder` per slot (CT, MRI), each (B, 1, H, W) -> (B, D, h, w).
        dim: token width ``D`` (the encoders' last stage width).
        heads: attention heads of each direction.
        head_grid: the head pools the fused map to ``head_grid x head_grid`` cells.
        classes: output classes.

    Input ``x`` (B, 4, H, W): CT, MRI, then their presence planes; output (B, classes) logits.
    """

    def __init__(self, encoders: list[nn.Module], dim: int, heads: int, head_grid: int, classes: int) -> None:
        super().__init__()
        if len(encoders) != 2:
            raise ValueError(f"the fusion classifier has two input slots (CT, MRI), got {len(encoders)} encoders")
        self.encoders = nn.ModuleList(encoders)
        self.fusions = nn.ModuleList([CrossAttentionFusion(dim, heads) for _ in encoders])
        self.fused = nn.Identity()  # OmniFM's tap: its output is r
        self.avgpool = nn.AdaptiveAvgPool2d(head_grid)
        self.fc = nn.Linear(dim * head_grid * head_grid, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slots = len(self.encoders)
        present = presence(x, slots)
        maps = [self._encode(s, x[:, s : s + 1], present[:, s]) for s in range(slots)]
        shape = next(m.shape for m in maps if m is not None)
        tokens = [None if m is None else m.flatten(2).transpose(1, 2) for m in maps]  # (B, N, D)
        fused = torch.zeros(shape[0], shape[2] * shape[3], shape[1], device=x.device, dtype=x.dtype)
        for s, other in ((0, 1), (1, 0)):
            if tokens[s] is None:
                continue
            direction = self.fusions[s](tokens[s], tokens[other], present[:, other])
            fused = fused + direction * present[:, s, None, None]
        fused = fused / present.sum(dim=1).view(-1, 1, 1)
        r = self.fused(fused.transpose(1, 2).reshape(shape))
        return self.fc(self.avgpool(r).flatten(1))

    def _encode(self, slot: int, image: torch.Tensor, present: torch.Tensor) -> torch.Tensor | None:
        """Slot ``slot``'s encoder on the samples that have it; absent rows of the map are zero (masked later)."""
        rows = present.nonzero().flatten()
        if rows.numel() == 0:
            return None
        features = self.encoders[slot](image[rows])
        out = features.new_zeros(image.shape[0], *features.shape[1:])
        return out.index_put((rows,), features)
