"""Measurements that would show OmniFM's mechanism doing nothing (reported every round, per site).

The project's first OmniFM was inert and every test passed: the spectral token was the same for
every image and a random bank changed predictions by ~1e-4. These numbers make that visible in
the product (site log, TensorBoard, the metrics sent to the server, benchmark JSONs):

- ``token_cos_within``: mean pairwise cosine of the round's spectral tokens at the site (1.0 =
  the tokenizer maps every image to one token).
- ``retrieval_own_share``: fraction of retrieved entries whose owner is this site (1.0 = the bank
  only hands a site back its own knowledge).
- ``retrieved_age_rounds``: mean age of the retrieved entries (rounds since the uploads that made them).
- ``placebo_dice_delta`` / ``placebo_logit_rel``: validation Dice with the real retrieval minus
  Dice with the retrieved content replaced by noise (:func:`omnifm.engine.retrieval.placebo`), and
  the mean absolute logit change relative to the mean absolute logit. ~0 = the model ignores
  what it retrieves.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from omnifm.data import volume_slices
from omnifm.engine.evaluate import region_dice
from omnifm.engine.retrieval import Retriever
from omnifm.knowledge import KnowledgeBank
from omnifm.task import SegTask

__all__ = ["mean_pairwise_cosine", "placebo_effect", "retrieval_stats"]


def mean_pairwise_cosine(tokens: torch.Tensor) -> float:
    """Mean cosine over all pairs of distinct rows of ``(N, d)`` tokens (NaN for N < 2).

    Examples::

        >>> mean_pairwise_cosine(torch.eye(3))
        0.0
    """
    if tokens.shape[0] < 2:
        return math.nan
    unit = torch.nn.functional.normalize(tokens.double(), dim=1)
    cos = unit @ unit.T
    n = tokens.shape[0]
    return float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))


def retrieval_stats(bank: KnowledgeBank | None, retrieved_ids: list[torch.Tensor], site: str) -> dict[str, float]:
    """``retrieval_own_share`` and ``retrieved_age_rounds`` of a round's training retrievals ({} without any)."""
    if bank is None or not retrieved_ids:
        return {}
    owners, ages = bank.entry_info(torch.cat([ids.reshape(-1) for ids in retrieved_ids]))
    if not owners:
        return {}
    own = sum(owner == site for owner in owners) / len(owners)
    return {"retrieval_own_share": float(own), "retrieved_age_rounds": float(ages.double().mean())}


@torch.no_grad()
def placebo_effect(
    model: nn.Module,
    volumes: list[dict[str, np.ndarray]],
    device: torch.device,
    real: Retriever,
    fake: Retriever,
    task: SegTask,
) -> dict[str, float]:
    """``placebo_dice_delta`` and ``placebo_logit_rel`` of ``model`` on ``volumes`` ({} without volumes).

    One pass per retriever over each case's slices gives both the logits and the Dice predictions.
    """
    if not volumes:
        return {}
    model.eval()
    preds: tuple[list, list] = ([], [])
    diff = size = 0.0
    for case in volumes:
        x = _inputs(model, case["image"]).to(device)
        token = model.spectral_token(x)
        logits = [_logits(model, x, token, retriever) for retriever in (real, fake)]
        diff += float((logits[0] - logits[1]).abs().mean())
        size += float(logits[0].abs().mean())
        for out, value in zip(preds, logits):
            out.append(_label_map(model, value))
    labels = [case["label"] for case in volumes]
    dice_real, dice_fake = (region_dice(p, labels, task)["dice"] for p in preds)
    return {"placebo_dice_delta": dice_real - dice_fake, "placebo_logit_rel": diff / max(size, 1e-12)}


def _inputs(model: nn.Module, image: np.ndarray) -> torch.Tensor:
    """A case as the model's batch: its axial slices (2D models) or the volume (3D)."""
    return volume_slices(image) if model.network.dimensions == 2 else torch.as_tensor(image)[None]


def _label_map(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """(D, classes, H, W) slice logits or (1, classes, H, W, D) -> the (1, H, W, D) label map."""
    labels = logits.argmax(dim=1, keepdim=True).cpu()
    return labels.permute(1, 2, 3, 0) if model.network.dimensions == 2 else labels[0]


def _logits(model: nn.Module, x: torch.Tensor, token: torch.Tensor, retriever: Retriever) -> torch.Tensor:
    got = retriever(token)
    return model(x, prototypes=got.prototypes, spectral_token=token, values=got.values).logits
