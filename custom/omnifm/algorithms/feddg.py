"""FedDG-style amplitude sharing (Liu et al., CVPR 2021), the whole rule: site part and server part.

Every round a site uploads group means of its training slices' centred low-frequency amplitude
windows (window ``amplitude_ratio`` of the slice size; groups of at least ``min_prototype_count``
slices, at most ``num_prototypes`` groups: never one image's spectrum). The server pools every
site's groups into the round's amplitude bank (algorithm state ``meta[STATE]["amplitudes"]``,
uploads combined in site order; the previous round's bank is replaced). In the next round each
site interpolates its training slices' low-frequency amplitudes towards randomly drawn bank
entries (:func:`omnifm.data.amplitude.interpolate_amplitude`), keeping their phase, and trains
as FedAvg. Round 0 has no bank and no augmentation.

Variant: the paper's episodic meta-learning with a boundary loss is not implemented; this is its
continuous frequency-space interpolation as data augmentation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from omnifm.algorithms.rule import RoundHooks, ServerRule, SiteRule

if TYPE_CHECKING:
    from omnifm.algorithms.server import Upload
    from omnifm.engine.site import SiteTrainer

AMPLITUDES = "amplitudes"
"""Key of the pooled amplitude bank in the algorithm state and of a site's upload in its extras."""


class FedDGSite(SiteRule):
    """FedDG's site part: augment towards the received amplitude bank; upload group-mean amplitudes."""

    prefix = "feddg"

    def __init__(self, spec: dict[str, Any], model: nn.Module, shared_names: list[str]) -> None:
        super().__init__(spec, model, shared_names)
        self._augment: Callable[[torch.Tensor], torch.Tensor] | None = None

    def augmenter(
        self, trainer: SiteTrainer, round_num: int, server_state: dict[str, Any]
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Interpolation towards the pooled amplitude bank (None in round 0: the bank is empty)."""
        from omnifm.data.amplitude import interpolate_amplitude
        from omnifm.engine.site import round_seed

        if not server_state.get(AMPLITUDES):
            return None
        bank = torch.as_tensor(np.asarray(server_state[AMPLITUDES], dtype=np.float32))
        trainer.logger.info("FedDG: interpolating low-frequency amplitudes towards %d pooled groups", bank.shape[0])
        generator = torch.Generator().manual_seed(round_seed(trainer.config.seed, round_num, 2))
        ratio = self.spec["amplitude_ratio"]
        return lambda images: interpolate_amplitude(images, bank, ratio, generator)

    def begin_round(self, trainer: SiteTrainer, round_num: int, server_state: dict[str, Any]) -> None:
        if trainer.task.input_slots is not None:  # the interpolation would also mix the presence planes
            raise ValueError("FedDG's amplitude interpolation is not defined for a multi-modality input (it would mix "
                             "one site's missing-modality masks with another's images); choose another algorithm")
        self._augment = self.augmenter(trainer, round_num, server_state)

    def start_round(
        self, model: nn.Module, anchor: dict[str, torch.Tensor], steps_per_epoch: int, local_epochs: int
    ) -> RoundHooks:
        return RoundHooks(augment=self._augment)

    def extras(self, trainer: SiteTrainer, round_num: int) -> dict[str, Any]:
        """Group-mean low-frequency amplitude windows of the training slices."""
        from omnifm.data.amplitude import group_mean_amplitudes
        from omnifm.engine.site import round_seed

        dataset = trainer.dataset
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        generator = torch.Generator().manual_seed(round_seed(trainer.config.seed, round_num, 3))
        amps = group_mean_amplitudes(
            images, self.spec["amplitude_ratio"], self.spec["num_prototypes"], trainer.config.min_prototype_count,
            generator,
        )
        return {AMPLITUDES: amps}


class FedDGServer(ServerRule):
    """FedDG's server part: the next round's amplitude bank is this round's uploads, pooled; the model is FedAvg."""

    def next_state(
        self, spec: dict[str, Any], global_weights: dict[str, np.ndarray], state: dict[str, Any], uploads: list[Upload]
    ) -> dict[str, Any]:
        return {**state, AMPLITUDES: pool_amplitudes(uploads)}


def pool_amplitudes(uploads: list[Upload]) -> list:
    """Every upload's group-mean amplitudes, concatenated in upload order (the caller sorts by site).

    Raises:
        ValueError: an upload's amplitudes are not finite ``(G, C, w, w)`` or differ in ``(C, w, w)``.
    """
    pooled, shape = [], None
    for u in uploads:
        amps = np.asarray(u.extras.get(AMPLITUDES) or [], dtype=np.float32)
        if amps.size == 0:
            continue
        if amps.ndim != 4 or (shape is not None and amps.shape[1:] != shape) or not np.isfinite(amps).all():
            raise ValueError(
                f"{u.site or 'a site'} uploaded amplitudes of shape {amps.shape} (expected finite (G, C, w, w)"
                f"{'' if shape is None else f' with (C, w, w) = {shape}'}); feddg needs equal slice sizes and channels"
            )
        shape = amps.shape[1:]
        pooled.append(amps)
    return np.concatenate(pooled).tolist() if pooled else []


SITE = FedDGSite
SERVER = FedDGServer()
