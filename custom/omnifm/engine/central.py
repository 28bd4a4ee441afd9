"""The pooled ("central") reference: one trainer over every site's training data, not a federation.

It is the upper reference of the benchmark: what the plain network reaches when the data could
be pooled. It sees the same slices and the same number of epochs as a federation of
``rounds x local_epochs``, with the same per-round data-order seeding as a site.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from omnifm.algorithms import get_algorithm
from omnifm.engine.site import SiteTrainer, TrainConfig


def train_central(
    spec: dict[str, Any],
    config: TrainConfig,
    site_train_volumes: list[list[dict[str, np.ndarray]]],
    rounds: int,
    val_volumes: list[dict[str, np.ndarray]] | None = None,
    device: torch.device | None = None,
    logger: logging.Logger | None = None,
    on_round: Callable[[int, SiteTrainer], None] | None = None,
) -> SiteTrainer:
    """Train one model on the concatenation of the sites' training cases.

    Args:
        spec: a run spec whose algorithm is not federated (``central``).
        config: training settings (``local_epochs`` epochs per "round").
        site_train_volumes: each site's training cases, in site order.
        rounds: number of rounds; the model sees ``rounds * local_epochs`` epochs of the pooled data.
        val_volumes: cases :meth:`SiteTrainer.evaluate` uses (evaluate per site with
            :func:`omnifm.engine.evaluate_volumes` on ``trainer.model``).
        device: where to train.
        logger: progress logger.
        on_round: called as ``on_round(round_num, trainer)`` after every round (e.g. Dice-vs-round curves).

    Returns:
        The trained :class:`SiteTrainer`.

    Raises:
        ValueError: a federated algorithm, no site data, or ``rounds < 1``.
    """
    algo = get_algorithm(spec["algorithm"])
    if algo.federated:
        raise ValueError(f"train_central runs the pooled reference; algorithm {algo.name!r} is federated, use 'central'")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds!r}")
    pooled = [case for cases in site_train_volumes for case in cases]
    if not pooled:
        raise ValueError("site_train_volumes holds no training case")
    trainer = SiteTrainer(spec, config, pooled, list(val_volumes or []), device=device, logger=logger)
    for round_num in range(rounds):
        trainer.train_round(None, round_num, num_rounds=rounds)
        if on_round is not None:
            on_round(round_num, trainer)
    return trainer
