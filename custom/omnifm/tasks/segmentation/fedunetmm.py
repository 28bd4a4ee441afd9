"""FedUNetMM (seed 004, section 2): multi-sequence MR segmentation with cross-sequence attention fusion.

The network reads S co-registered MR sequences of one axial slice (T1, T1CE, T2, FLAIR), any subset
of them present (``x``: (B, 2S, H, W), the S image planes then their presence planes,
:func:`~omnifm.tasks.classification.fusion.with_presence`).

- **Shared encoder** (section 2.2): one 2D ResNet-18-style encoder (MONAI's ``ResNet``, basic blocks,
  3x3 stride-2 stem, max pooling) applied to each sequence. Its stem output (H/2) and its four stages
  (H/4 ... H/32) are the levels ``l = 0..4`` (the paper's en2, en4, en5, en6, en7).
- **Positional embeddings** (eq. 7, Table 4): optional 2D sinusoidal embeddings added to every
  sequence's features at the last level (``positional: "last"``, the paper's best) or at all levels.
- **Primary-auxiliary cross-attention** (section 2.3, eq. 8): at each level ``l >= 1`` every present
  sequence is in turn the primary; its tokens attend to each present auxiliary's tokens (one
  attention per primary, applied per auxiliary), the attended maps are concatenated, mixed by a 1x1
  projection, added to the primary (the skip) and passed through dropout and an MLP -> ``F^O``.
  ``kv_grid`` > 0 average-pools the auxiliaries' maps to at most ``kv_grid x kv_grid`` key tokens
  (spatial-reduction attention, for CPU budgets; 0, the default, attends to every position as the paper).
- **Multi-modal correlation attention** (section 2.4.1, eqs. 9-11): the ``F^O`` of all sequences are
  concatenated, a squeeze-excitation gate (avg-pool, 1x1 conv, LeakyReLU, 1x1 conv, sigmoid)
  re-weights the channels and a 1x1 convolution gives the fused map ``G_l``. At level 0 the encoder
  features are concatenated without cross-attention, as the paper does for memory.
- **Decoder** (section 2.4.2, eqs. 12-13): ``D_l = BN(ReLU(Conv1x1(Concat(G_l, up(D_{l+1})))))``
  from ``D_4 = G_4``; OmniFM taps ``G_4`` (``r``, the fused bottleneck) and the decoder is the head.
- **Deep supervision** (sections 2.4.3, 2.5, eq. 16): a head ``Conv3(BN(ReLU(Conv2(BN(ReLU(Conv1))))))``
  (3x3 convolutions) on each of ``D_0 .. D_3``; the final prediction is a classifier over the
  concatenation of the up-sampled decoder output and every head's prediction. In training mode the
  network returns ``(B, 1 + K, classes, H, W)``: the final logits then the K heads' logits
  up-sampled to ``H x W`` (MONAI DynUNet's convention); the task's loss
  (:class:`DeepSupervisedDiceCE`) sums Dice + CE over them with the paper's weights
  ``lambda_d = H_d / H`` (1 for the final output). In eval mode it returns the final logits only.

**Missing sequences are masked, never zero-filled.** An absent sequence's image plane is never read:

- the shared encoder runs only on the (sample, sequence) pairs that are present, so an absent plane
  enters neither the features nor the batch-norm statistics, and gets no gradient;
- an absent auxiliary is left out of the primary's attention (its term of the 1x1 projection is
  dropped and the present ones rescaled by ``(S - 1) / present auxiliaries``); a primary with no
  present auxiliary keeps its own features (the skip);
- an absent sequence is left out of the correlation fusion: its gate is 0, the gate sees the
  presence flags, and the fused projection is rescaled by ``S / present sequences``.

Only per-sample operations (layer norm, attention, 1x1 projections) touch the per-sequence maps
after the encoder; batch norm appears again only in the decoder, which sees the fused maps. The
output therefore does not depend on what an absent plane holds, and a sample with no present
sequence is refused (:func:`~omnifm.tasks.classification.fusion.presence`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.networks.nets import ResNet
from torch import nn

from omnifm.models.tap import BottleneckTap
from omnifm.tasks.classification.fusion import presence

FEDUNETMM = "fedunetmm"
POSITIONAL = ("none", "last", "all")
DEFAULT_FEDUNETMM_MODEL: dict[str, Any] = {
    "kind": FEDUNETMM,
    "out_channels": 4,
    "layers": [2, 2, 2, 2],
    "block_inplanes": [8, 16, 32, 64],
    "heads": 2,
    "positional": "last",
    "dropout": 0.0,
    "deep_supervision": True,
    "kv_grid": 0,
}


def sinusoidal_2d(channels: int, height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """The 2D sinusoidal positional embedding ``(channels, height, width)``: half the channels encode
    the row, half the column, each as sin/cos pairs of geometrically spaced frequencies.

    Examples::

        >>> pe = sinusoidal_2d(8, 4, 4)
        >>> pe.shape, bool(pe[:, 0, 0].eq(pe[:, 0, 1]).all()), bool(pe[:4, 0, 0].eq(pe[:4, 0, 1]).all())
        (torch.Size([8, 4, 4]), False, True)
    """
    if channels % 4:
        raise ValueError(f"a 2D sinusoidal embedding needs channels divisible by 4, got {channels}")
    quarter = channels // 4
    freq = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freq  # (H, q)
    cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freq  # (W, q)
    pe_rows = torch.cat([rows.sin(), rows.cos()], dim=1).T[:, :, None].expand(-1, height, width)
    pe_cols = torch.cat([cols.sin(), cols.cos()], dim=1).T[:, None, :].expand(-1, height, width)
    return torch.cat([pe_rows, pe_cols], dim=0).to(dtype or torch.float32)


class SharedEncoder(nn.Module):
    """A MONAI ResNet's stem and four stages, returning the five levels ``[H/2, H/4, H/8, H/16, H/32]``."""

    def __init__(self, layers: list[int], widths: list[int]) -> None:
        super().__init__()
        net = ResNet("basic", list(layers), list(widths), spatial_dims=2, n_input_channels=1, conv1_t_size=3,
                     conv1_t_stride=2, no_max_pool=False, num_classes=1)
        self.conv1, self.bn1, self.act, self.maxpool = net.conv1, net.bn1, net.act, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.act(self.bn1(self.conv1(x)))
        out = [stem]
        h = self.maxpool(stem)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            h = layer(h)
            out.append(h)
        return out


class PrimaryAuxiliaryAttention(nn.Module):
    """Section 2.3 for one primary sequence at one level (see the module docstring).

    Args:
        dim: channels ``C`` of the level.
        auxiliaries: number of auxiliary sequences (``S - 1``).
        heads: attention heads.
        dropout: dropout before the MLP.
    """

    def __init__(self, dim: int, auxiliaries: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.auxiliaries = auxiliaries
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.select = nn.Linear(auxiliaries * dim, dim)  # the 1x1 convolution over the concatenated auxiliaries
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, primary: torch.Tensor, aux: list[torch.Tensor], aux_present: torch.Tensor) -> torch.Tensor:
        """``primary`` (n, N, C) tokens; ``aux``: S-1 token maps (n, M, C) (rows of absent ones are never read);
        ``aux_present`` (n, S-1) bool -> ``F^O`` (n, N, C)."""
        n, tokens, dim = primary.shape
        query = self.norm_q(primary)
        pairs = aux_present.nonzero(as_tuple=True)  # (row, auxiliary) of every present auxiliary: one attention call
        attended = primary.new_zeros(n, self.auxiliaries, tokens, dim)
        if pairs[0].numel():
            key = self.norm_kv(torch.stack(aux, dim=1)[pairs])  # (pairs, N, C): only present auxiliaries are read
            out, _ = self.attention(query[pairs[0]], key, key, need_weights=False)
            attended = attended.index_put(pairs, out)
        attended = attended.transpose(1, 2).reshape(n, tokens, self.auxiliaries * dim)  # absent blocks zero, dropped below
        count = aux_present.sum(dim=1).to(primary.dtype)
        scale = torch.where(count > 0, self.auxiliaries / count.clamp(min=1), torch.zeros_like(count))
        has_aux = (count > 0).to(primary.dtype).view(-1, 1, 1)
        mixed = F.linear(attended, self.select.weight) * scale.view(-1, 1, 1) + self.select.bias * has_aux
        fused = primary + mixed  # F'_P: the auxiliaries' embedding added to the primary (the skip)
        return fused + self.mlp(self.dropout(fused))


class CorrelationFusion(nn.Module):
    """Section 2.4.1: SE-style correlation gate over the concatenated sequences, masked, then a 1x1 projection.

    Args:
        dim: channels per sequence ``C``.
        sequences: ``S``.
        out_dim: channels of ``G``.
    """

    def __init__(self, dim: int, sequences: int, out_dim: int) -> None:
        super().__init__()
        self.dim, self.sequences = dim, sequences
        joint = dim * sequences
        hidden = max(joint // 4, 4)
        self.conv1 = nn.Conv2d(joint + sequences, hidden, 1)  # sees the presence flags beside the pooled features
        self.act = nn.LeakyReLU(0.1)
        self.conv2 = nn.Conv2d(hidden, joint, 1)
        self.project = nn.Conv2d(joint, out_dim, 1)

    def forward(self, maps: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``maps`` (B, S*C, h, w) with absent sequences' channels zero; ``present`` (B, S) bool -> ``G`` (B, out, h, w)."""
        flags = present.to(maps.dtype)
        channel_mask = flags.repeat_interleave(self.dim, dim=1)[:, :, None, None]  # (B, S*C, 1, 1)
        pooled = F.adaptive_avg_pool2d(maps, 1)
        gate = torch.sigmoid(self.conv2(self.act(self.conv1(torch.cat([pooled, flags[:, :, None, None]], dim=1)))))
        weighted = maps * gate * channel_mask
        scale = self.sequences / flags.sum(dim=1)
        return F.conv2d(weighted, self.project.weight) * scale.view(-1, 1, 1, 1) + self.project.bias.view(1, -1, 1, 1)


def seg_head(in_dim: int, hidden: int, classes: int) -> nn.Sequential:
    """Eq. 15: ``Conv3(BN(ReLU(Conv2(BN(ReLU(Conv1(.)))))))``, all 3x3."""
    return nn.Sequential(
        nn.Conv2d(in_dim, hidden, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(hidden),
        nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(hidden),
        nn.Conv2d(hidden, classes, 3, padding=1),
    )


class FedUNetMM(nn.Module):
    """The FedUNetMM network (see the module docstring).

    Args:
        sequences: ``S``, the input slots.
        classes: output classes.
        layers: residual blocks per encoder stage (ResNet-18: 2-2-2-2).
        widths: encoder stage widths (the stem has the first).
        heads: attention heads (must divide every width).
        positional: ``"none"``, ``"last"`` or ``"all"`` (levels that get the 2D sinusoidal embedding).
        dropout: dropout before each cross-attention MLP.
        deep_supervision: in training mode, return the deep-supervision heads' logits with the final ones.
        kv_grid: pool the auxiliaries' key/value maps to at most this grid (0: no pooling).
    """

    def __init__(self, sequences: int, classes: int, layers: list[int], widths: list[int], heads: int,
                 positional: str = "last", dropout: float = 0.0, deep_supervision: bool = True, kv_grid: int = 0) -> None:
        super().__init__()
        self.kv_grid = kv_grid
        if sequences < 2:
            raise ValueError(f"FedUNetMM fuses two or more sequences, got {sequences} input slots")
        self.sequences, self.classes, self.positional = sequences, classes, positional
        self.deep_supervision = deep_supervision
        level_widths = [widths[0], *widths]  # stem, stage 1..4
        self.level_widths = level_widths
        self.encoder = SharedEncoder(layers, widths)
        self.cross = nn.ModuleList(
            [nn.ModuleList([PrimaryAuxiliaryAttention(c, sequences - 1, heads, dropout) for _ in range(sequences)])
             for c in level_widths[1:]])
        self.fusion = nn.ModuleList([CorrelationFusion(c, sequences, c) for c in level_widths])
        self.fused = nn.Identity()  # OmniFM's tap: G at the deepest level is r
        self.decoder = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(level_widths[l] + level_widths[l + 1], level_widths[l], 1), nn.ReLU(),
                           nn.BatchNorm2d(level_widths[l])) for l in range(len(level_widths) - 1)])
        self.heads = nn.ModuleList([seg_head(c, c, classes) for c in level_widths[:-1]])
        final_in = level_widths[0] + classes * len(self.heads)
        self.classifier = nn.Sequential(nn.Conv2d(final_in, level_widths[0], 3, padding=1), nn.ReLU(),
                                        nn.BatchNorm2d(level_widths[0]), nn.Conv2d(level_widths[0], classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S = self.sequences
        if x.shape[1] != 2 * S:
            raise ValueError(f"FedUNetMM expects {2 * S} input planes ({S} sequences and their presence planes), "
                             f"got {x.shape[1]}")
        present = presence(x, S)  # (B, S) bool; refuses a sample with no sequence
        levels = self._encode(x, present)  # levels[l][s]: (B, C, h, w), absent rows zero and masked below
        fused = []
        for l, maps in enumerate(levels):
            if l > 0:
                maps = self._cross_attend(l, maps, present)
            joint = torch.cat(maps, dim=1)
            fused.append(self.fusion[l](joint, present))
        fused[-1] = self.fused(fused[-1])
        d = fused[-1]
        decoded = []
        for l in range(len(fused) - 2, -1, -1):
            up = F.interpolate(d, size=fused[l].shape[2:], mode="bilinear", align_corners=False)
            d = self.decoder[l](torch.cat([fused[l], up], dim=1))
            decoded.append(d)
        decoded.reverse()  # D_0 (H/2) ... D_3 (H/16)
        size = x.shape[2:]
        aux = [F.interpolate(head(dl), size=size, mode="bilinear", align_corners=False)
               for head, dl in zip(self.heads, decoded)]
        top = F.interpolate(decoded[0], size=size, mode="bilinear", align_corners=False)
        logits = self.classifier(torch.cat([top, *aux], dim=1))
        if self.training and self.deep_supervision:
            return torch.stack([logits, *aux], dim=1)
        return logits

    def _encode(self, x: torch.Tensor, present: torch.Tensor) -> list[list[torch.Tensor]]:
        """The shared encoder on the present (sample, sequence) pairs only, scattered back per sequence."""
        B, S = present.shape
        rows, seqs = present.nonzero(as_tuple=True)
        images = x[rows, seqs][:, None]  # (P, 1, H, W): only present planes
        feats = self.encoder(images)
        last = len(feats) - 1
        levels = []
        for l, f in enumerate(feats):
            if self.positional == "all" or (self.positional == "last" and l == last):
                f = f + sinusoidal_2d(f.shape[1], f.shape[2], f.shape[3], f.device, f.dtype)
            per_seq = []
            for s in range(S):
                out = f.new_zeros(B, *f.shape[1:])
                pick = (seqs == s).nonzero().flatten()
                per_seq.append(out.index_put((rows[pick],), f[pick]) if pick.numel() else out)
            levels.append(per_seq)
        return levels

    def _cross_attend(self, l: int, maps: list[torch.Tensor], present: torch.Tensor) -> list[torch.Tensor]:
        shape = maps[0].shape
        tokens = [m.flatten(2).transpose(1, 2) for m in maps]  # (B, N, C)
        if self.kv_grid and shape[2] * shape[3] > self.kv_grid ** 2:  # spatial-reduction keys (per sample)
            grid = (min(self.kv_grid, shape[2]), min(self.kv_grid, shape[3]))
            keys = [F.adaptive_avg_pool2d(m, grid).flatten(2).transpose(1, 2) for m in maps]
        else:
            keys = tokens
        out = []
        for p in range(self.sequences):
            rows = present[:, p].nonzero().flatten()
            result = torch.zeros_like(maps[p])
            if rows.numel():
                others = [a for a in range(self.sequences) if a != p]
                fo = self.cross[l - 1][p](tokens[p][rows], [keys[a][rows] for a in others], present[rows][:, others])
                result = result.index_put((rows,), fo.transpose(1, 2).reshape(rows.numel(), *shape[1:]))
            out.append(result)
        return out


class FedUNetMMAdapter:
    """OmniFM on FedUNetMM: ``r`` is the fused bottleneck ``G_4``, the head the decoder, its
    deep-supervision heads and the final classifier. The spectral token sees the input with absent
    sequences' planes zeroed (:meth:`FusionAdapter.spectral_view`)."""

    def install_tap(self, network: nn.Module) -> BottleneckTap:
        if not isinstance(network.fused, BottleneckTap):
            network.fused = BottleneckTap(network.fused)
        return network.fused

    def head_modules(self, network: nn.Module) -> list[nn.Module]:
        return [network.decoder, network.heads, network.classifier]

    @staticmethod
    def spectral_view(x: torch.Tensor) -> torch.Tensor:
        from omnifm.tasks.classification.network import FusionAdapter

        return FusionAdapter.spectral_view(x)


def supervision_weights(levels: int) -> list[float]:
    """Eq. 16's ``lambda_d = H_d / H``: 1 for the final output, then 1/2, 1/4, ... for the heads at H/2, H/4, ...

    Examples::

        >>> supervision_weights(5)
        [1.0, 0.5, 0.25, 0.125, 0.0625]
    """
    return [0.5 ** k for k in range(levels)]


class DeepSupervisedDiceCE(nn.Module):
    """Dice + CE (MONAI ``DiceCELoss``) summed over the supervised outputs with :func:`supervision_weights`.

    ``logits`` (B, 1 + K, classes, H, W) (FedUNetMM in training mode) -> ``sum_k lambda_k DiceCE(logits[:, k])``;
    ``logits`` (B, classes, H, W) -> plain Dice + CE.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if logits.dim() == label.dim() + 1:
            outputs = list(logits.unbind(dim=1))
            return DeepSupervisionLoss(self.dice_ce, weights=supervision_weights(len(outputs)))(outputs, label)
        return self.dice_ce(logits, label)


def build_fedunetmm(model: dict[str, Any], omnifm: dict[str, Any] | None, sequences: int):
    """FedUNetMM wrapped as :class:`~omnifm.models.OmniFM`.

    Args:
        model: ``kind`` (``fedunetmm``), ``out_channels`` (classes), ``layers``, ``block_inplanes`` (four
            encoder widths, each divisible by 4 and by ``heads``), ``heads``, ``positional``
            (``none`` / ``last`` / ``all``), ``dropout``, ``deep_supervision``, ``kv_grid`` (0: full
            attention; n: keys pooled to n x n); missing keys take
            :data:`DEFAULT_FEDUNETMM_MODEL`.
        omnifm: :class:`OmniFMConfig` fields; ``value_classes`` defaults to the classes.
        sequences: the task's input slots.

    Examples::

        >>> import torch
        >>> from omnifm.tasks.classification.fusion import with_presence
        >>> model = build_fedunetmm({"block_inplanes": [4, 8, 8, 16]}, {}, 4).eval()
        >>> x = with_presence(torch.randn(2, 4, 32, 32), torch.tensor([1, 0, 1, 1]))  # no T1CE
        >>> model(x).logits.shape
        torch.Size([2, 4, 32, 32])
    """
    from omnifm.models.omnifm import OmniFM, OmniFMConfig
    from omnifm.tasks.base import model_args

    cfg = check_fedunetmm(model_args(model, DEFAULT_FEDUNETMM_MODEL))
    omni_cfg = OmniFMConfig.from_spec(omnifm, value_classes=cfg["out_channels"])
    net = FedUNetMM(sequences, cfg["out_channels"], list(cfg["layers"]), list(cfg["block_inplanes"]), cfg["heads"],
                    cfg["positional"], float(cfg["dropout"]), bool(cfg["deep_supervision"]), int(cfg["kv_grid"]))
    return OmniFM(net, FedUNetMMAdapter(), 2, 2 * sequences, cfg["block_inplanes"][-1], omni_cfg)


def check_fedunetmm(cfg: dict[str, Any]) -> dict[str, Any]:
    """FedUNetMM's arguments checked (naming the bad one)."""
    widths, layers = list(cfg["block_inplanes"]), list(cfg["layers"])
    if len(widths) != 4 or len(layers) != 4 or min(layers) < 1:
        raise ValueError("fedunetmm has 4 encoder stages: 4 block_inplanes and 4 layers (each >= 1)")
    if any(w % 4 or w % cfg["heads"] for w in widths):
        raise ValueError(f"fedunetmm block_inplanes {widths} must each be divisible by 4 (positional embedding) "
                         f"and by heads ({cfg['heads']})")
    if cfg["positional"] not in POSITIONAL:
        raise ValueError(f"fedunetmm positional must be one of {list(POSITIONAL)}, got {cfg['positional']!r}")
    if not isinstance(cfg["kv_grid"], int) or cfg["kv_grid"] < 0:
        raise ValueError(f"fedunetmm kv_grid must be an int >= 0 (0: full attention), got {cfg['kv_grid']!r}")
    if not 0 <= float(cfg["dropout"]) < 1:
        raise ValueError(f"fedunetmm dropout must be in [0, 1), got {cfg['dropout']!r}")
    return cfg
