"""Measurements that would show OmniFM's mechanism doing nothing (reported every round, per site).

The project's first OmniFM was inert and every test passed: the spectral token was the same for
every image and a random bank changed predictions by ~1e-4. These numbers make that visible in
the product (site log, TensorBoard, the metrics sent to the server, benchmark JSONs):

- ``token_cos_within``: mean pairwise cosine of the round's spectral tokens at the site (1.0 =
  the tokenizer maps every image to one token).
- ``retrieval_own_share``: fraction of retrieved entries whose owner is this site (1.0 = the bank
  only hands a site back its own knowledge).
- ``retrieved_age_rounds``: mean age of the retrieved entries (rounds since the uploads that made them).
- ``placebo_dice_delta`` (``placebo_<headline>_delta`` for other tasks) / ``placebo_logit_rel``:
  the validation headline metric with the real retrieval minus the same with the retrieved content replaced by noise (:func:`omnifm.engine.retrieval.placebo`), and
  the mean absolute logit change relative to the mean absolute logit. ~0 = the model ignores
  what it retrieves.
- ``ablate_<name>_<headline>_delta`` (every algorithm, for tasks with :meth:`Task.ablations`): the
  validation headline metric minus the same with one input removed, over the cases that have
  something to remove (the fusion classifier: ``ablate_without_ct_accuracy_delta`` on the paired
  cases, the CT masked as if the case had none). ~0 = the model does not use that input.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from omnifm.engine.evaluate import case_logits
from omnifm.engine.retrieval import Retriever
from omnifm.knowledge import KnowledgeBank
from omnifm.tasks import Task

__all__ = ["ablation_effect", "mean_pairwise_cosine", "placebo_effect", "retrieval_stats"]


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


def placebo_effect(
    model: nn.Module,
    volumes: list[dict[str, np.ndarray]],
    device: torch.device,
    real: Retriever,
    fake: Retriever,
    task: Task,
) -> dict[str, float]:
    """``placebo_<headline>_delta`` and ``placebo_logit_rel`` of ``model`` on ``volumes`` ({} without volumes).

    One pass per retriever over each case's inputs gives both the logits and the task's predictions
    (segmentation: ``placebo_dice_delta``).
    """
    if not volumes:
        return {}
    model.eval()
    preds: tuple[list, list] = ([], [])
    diff = size = 0.0
    for case in volumes:
        x = task.case_inputs(model, case)
        if x.shape[0] == 0:  # nothing of this case is scored (e.g. no labelled slice)
            for out in preds:
                out.append(task.reduce(model, case_logits(model, x, device, real), case))
            continue
        logits = [case_logits(model, x, device, retriever, batch_size=len(x)) for retriever in (real, fake)]
        diff += float((logits[0] - logits[1]).abs().mean())
        size += float(logits[0].abs().mean())
        for out, value in zip(preds, logits):
            out.append(task.reduce(model, value, case))
    score_real, score_fake = (task.score(p, volumes)[task.headline] for p in preds)
    return {f"placebo_{task.headline}_delta": score_real - score_fake, "placebo_logit_rel": diff / max(size, 1e-12)}


def ablation_effect(
    model: nn.Module, volumes: list[dict[str, np.ndarray]], device: torch.device, retriever: Retriever | None, task: Task
) -> dict[str, float]:
    """``ablate_<name>_<headline>_delta`` for each of the task's ablations (see the module docstring).

    Both scores are taken on the same cases: those the ablation applies to (it returns a case, not None).
    Each case's unablated prediction is computed once, whatever the number of ablations.
    """
    from omnifm.engine.evaluate import predict_case

    ablations = task.ablations()
    if not volumes or not ablations:
        return {}
    model.eval()
    full: dict[int, object] = {}
    out = {}
    for name, ablate in ablations.items():
        pairs = [(i, ablated) for i, case in enumerate(volumes) if (ablated := ablate(case)) is not None]
        if not pairs:
            continue
        for i, _ in pairs:
            if i not in full:
                full[i] = predict_case(model, volumes[i], device, retriever, task)
        cases, ablated = [volumes[i] for i, _ in pairs], [a for _, a in pairs]
        score_full = task.score([full[i] for i, _ in pairs], cases)[task.headline]
        score_less = task.score([predict_case(model, c, device, retriever, task) for c in ablated], ablated)[task.headline]
        out[f"ablate_{name}_{task.headline}_delta"] = float(score_full - score_less)
    return out
