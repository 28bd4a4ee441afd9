"""The VQA network: the classification ResNet as image encoder, a GRU question encoder, FiLM fusion.

``x`` (B, 2, H, W) carries the slice and its questions' word ids
(:func:`~omnifm.tasks.vqa.dataset.write_questions`). Per sample

- the image encoder, the classification task's MONAI ResNet-18 topology without its pooling and
  head (:class:`~omnifm.tasks.classification.fusion.ResNetEncoder`), maps the slice to ``layer4``'s
  feature map: OmniFM's ``r``, tapped at ``features`` (the same place the classification ResNet
  is tapped);
- the question encoder, trained from scratch on the templates' vocabulary (nothing downloaded): a
  word embedding and a one-layer GRU; a question is its final hidden state ``q`` (width ``D``);
- fusion: ``r`` pooled to a ``head_grid`` grid (as the location-aware classification head: the
  hemisphere question needs where), modulated by the question (FiLM: ``relu(r * (1 + gamma(q)) +
  beta(q))``), flattened and concatenated with ``q``;
- the answer head ``fc`` (the personal head ``h_psi``): a two-layer MLP to logits over every answer
  of :data:`~omnifm.tasks.vqa.questions.ANSWERS` (no answer set is given away by the type).

Every question of a sample runs through the same weights independently (the output is
``(B, Q, answers)``): a question's position in the input carries nothing, the network has to read
it. The spectral encoder sees the slice only (:meth:`VQAAdapter.spectral_view`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omnifm.models.omnifm import OmniFM, OmniFMConfig
from omnifm.models.tap import BottleneckTap
from omnifm.tasks.base import model_args
from omnifm.tasks.classification.fusion import ResNetEncoder
from omnifm.tasks.classification.network import DEFAULT_CLS_MODEL, _checked, _resnet
from omnifm.tasks.vqa.dataset import read_questions
from omnifm.tasks.vqa.questions import ANSWERS, PAD, VOCABULARY

DEFAULT_VQA_MODEL: dict[str, Any] = {
    **{k: v for k, v in DEFAULT_CLS_MODEL.items() if k not in ("kind", "in_channels")},
    "out_channels": len(ANSWERS),
    "head_grid": 2,  # a 2x2 grid keeps left / right apart; the 4x4 of classification overfits 50 cases
    "embed_dim": 32,
    "hidden": 64,
}


class QuestionEncoder(nn.Module):
    """Word embedding + GRU: ``(N, L)`` word ids (``<pad>`` = 0 after the words) -> ``(N, dim)``."""

    def __init__(self, vocabulary: int, embed_dim: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, embed_dim, padding_idx=PAD)
        self.gru = nn.GRU(embed_dim, dim, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        lengths = (tokens != PAD).sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths, batch_first=True, enforce_sorted=False)
        _, hidden = self.gru(packed)
        return hidden[-1]


class VQANet(nn.Module):
    """Image encoder, question encoder, FiLM fusion, answer head (see the module docstring).

    Examples::

        >>> import numpy as np
        >>> from omnifm.tasks.vqa.dataset import write_questions
        >>> from omnifm.tasks.vqa.questions import MAX_WORDS, QUESTION_TYPES, tokenize
        >>> net = build_vqa_net({"block_inplanes": [4, 8, 8, 16]})
        >>> tokens = np.stack([tokenize("Is there a tumour in this slice?")] * len(QUESTION_TYPES))[None]
        >>> net(write_questions(torch.randn(1, 1, 32, 32), tokens)).shape
        torch.Size([1, 6, 14])
    """

    def __init__(self, encoder: nn.Module, dim: int, embed_dim: int, head_grid: int, hidden: int, answers: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.features = nn.Identity()  # OmniFM's tap: its output is r
        self.question = QuestionEncoder(len(VOCABULARY), embed_dim, dim)
        self.film = nn.Linear(dim, 2 * dim)
        self.pool = nn.AdaptiveAvgPool2d(head_grid)
        self.fc = nn.Sequential(nn.Linear(dim * head_grid * head_grid + dim, hidden), nn.ReLU(), nn.Linear(hidden, answers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = read_questions(x)  # (B, Q, L)
        batch, questions, _ = tokens.shape
        grid = self.pool(self.features(self.encoder(x[:, :1])))  # (B, D, g, g)
        q = self.question(tokens.flatten(0, 1)).view(batch, questions, -1)  # (B, Q, D)
        gamma, beta = self.film(q).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=2)
        fused = torch.relu(grid.unsqueeze(1) * (1 + gamma) + beta)  # (B, Q, D, g, g)
        return self.fc(torch.cat([fused.flatten(2), q], dim=2))  # (B, Q, answers)


class VQAAdapter:
    """OmniFM on the VQA network: ``r`` is the image encoder's ``layer4`` map, the head is ``fc``."""

    def install_tap(self, network: nn.Module) -> BottleneckTap:
        if not isinstance(network.features, BottleneckTap):
            network.features = BottleneckTap(network.features)
        return network.features

    def head_modules(self, network: nn.Module) -> list[nn.Module]:
        return [network.fc]

    @staticmethod
    def spectral_view(x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]  # the slice, not the question plane


def build_vqa_net(model: dict[str, Any] | None = None) -> VQANet:
    """The bare :class:`VQANet` of ``model`` (missing keys take :data:`DEFAULT_VQA_MODEL`)."""
    cfg = _checked(model_args(model, DEFAULT_VQA_MODEL))
    dim = cfg["block_inplanes"][-1]
    return VQANet(ResNetEncoder(_resnet(cfg, 1)), dim, cfg["embed_dim"], cfg["head_grid"], cfg["hidden"], cfg["out_channels"])


def build_vqa_model(model: dict[str, Any] | None = None, omnifm: dict[str, Any] | None = None) -> OmniFM:
    """:class:`VQANet` wrapped as :class:`OmniFM` (``omnifm``: :class:`OmniFMConfig` fields; ``value_classes`` from there).

    Args:
        model: the classification ResNet's keys (``layers``, ``block_inplanes``, ``norm``,
            ``stem_stride``, ``head_grid``) plus ``embed_dim`` (word embedding) and ``hidden``
            (answer MLP); ``out_channels`` is the number of answers.
        omnifm: :class:`OmniFMConfig` fields.
    """
    net = build_vqa_net(model)
    dim = net.film.in_features
    return OmniFM(net, VQAAdapter(), 2, 1, dim, OmniFMConfig.from_spec(omnifm))
