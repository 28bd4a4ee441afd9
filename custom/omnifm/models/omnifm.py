"""The OmniFM model: a task network (backbone ``g_phi`` + head ``h_psi``) with the spectral modules.

Per input ``x`` the model computes the unit-norm spectral token ``s`` (spectral encoder), fuses
retrieved global knowledge into the bottleneck tokens ``r`` with embedding-wise cross-attention
(``Z``), builds the prompted sequence ``r' = [Z | r | c]`` (prefix-suffix spectral prompting,
``c`` = client-specific suffix tokens), mixes it with one transformer layer and folds the ``r``
positions back into the bottleneck feature map before the decoder. ``Z`` is also added to the
``r`` positions (ECA's residual, as in a transformer decoder's cross-attention block): with the
prefix alone the measured effect of the retrieved content on the logits was 0.2-0.5 %.

What ECA attends to (its memory) is ``[P s]`` (the local token, projected to the token width, so
the spectral encoder learns from the task loss) followed by the retrieved entries' *values*: for
each retrieved bank entry and each class ``c``, the class-conditional mean bottleneck feature
that the entry's site computed from its labelled data, plus a learned class embedding; classes
the entry never saw are masked. Without values (a keys-only bank) the retrieved keys are
projected instead. Every component can be switched off by :class:`OmniFMConfig` (the paper's
ablations); with all of them off the model is exactly the wrapped network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from omnifm.models.tap import NetworkAdapter
from omnifm.modules import EmbeddingCrossAttention, PrefixSuffixPrompt, SpectralEncoder


@dataclass(frozen=True)
class OmniFMConfig:
    """Switches and sizes of the OmniFM modules.

    Args:
        spectral: compute the spectral token ``s`` (needed by every other module).
        eca: embedding-wise cross-attention of bottleneck tokens onto ``[s; S_g]``.
        prompting: prefix-suffix spectral prompting with client-specific suffix tokens.
        spectral_dim: dimension ``d_s`` of ``s`` and of the bank prototypes.
        spectral_hidden: width of the spectral tokenizer.
        low_pass_fraction: fraction of each spectral axis kept by the low-pass crop.
        head_dim: ECA head dimension ``d_h``.
        num_heads: ECA heads.
        num_suffix_tokens: number of client-specific suffix tokens ``c``.
        fusion_heads: heads of the transformer layer that mixes ``r'``.
        value_classes: classes ``C`` of the bank's class-conditional values (0: keys-only bank).
        spectral_grid: pooled size of each spectral axis the tokenizer sees.
    """

    spectral: bool = True
    eca: bool = True
    prompting: bool = True
    spectral_dim: int = 32
    spectral_hidden: int = 32
    low_pass_fraction: float = 0.25
    head_dim: int = 32
    num_heads: int = 1
    num_suffix_tokens: int = 4
    fusion_heads: int = 4
    value_classes: int = 0
    spectral_grid: int = 8

    def __post_init__(self) -> None:
        if self.eca and not self.spectral:
            raise ValueError("eca=True needs spectral=True (ECA attends to spectral tokens)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_spec(cls, omnifm: dict | None, **defaults: object) -> OmniFMConfig:
        """The run spec's ``omnifm`` fields over ``defaults`` (e.g. a task's ``value_classes``).

        Raises:
            ValueError: an unknown field or a bad combination, naming the spec.
        """
        try:
            return cls(**{**defaults, **(omnifm or {})})
        except TypeError as err:
            raise ValueError(f"bad omnifm config {omnifm}: {err}") from None


class _Stop(Exception):
    """Raised by the bottleneck tap to end a forward pass once the features are captured."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.features = features


class OmniFMOutput(NamedTuple):
    """``logits``: the task network's output (segmentation: (B, classes, *spatial)); ``spectral_token``: (B, d_s) or None."""

    logits: torch.Tensor
    spectral_token: torch.Tensor | None


class OmniFM(nn.Module):
    """OmniFM around a task network.

    Args:
        network: the task network (a MONAI UNet, ResNet, ...).
        adapter: where ``network`` is tapped (the block whose output is ``r``) and which modules
            are its head (see :mod:`omnifm.models.tap`; each task brings its network's adapter).
        spatial_dims: 2 (slices) or 3 (volumes).
        in_channels: image channels.
        token_dim: channels of the tapped feature map ``r``.
        config: module switches and sizes.

    Examples::

        >>> from monai.networks.nets import UNet
        >>> from omnifm.tasks.segmentation.unet_adapter import UNetAdapter
        >>> net = UNet(2, 1, 2, channels=(8, 16, 32), strides=(2, 2))
        >>> model = OmniFM(net, UNetAdapter(), spatial_dims=2, in_channels=1, token_dim=32)
        >>> x = torch.randn(2, 1, 32, 32)
        >>> s = model.spectral_token(x)
        >>> out = model(x, prototypes=torch.randn(2, 2, 32), spectral_token=s)
        >>> out.logits.shape
        torch.Size([2, 2, 32, 32])
    """

    def __init__(
        self,
        network: nn.Module,
        adapter: NetworkAdapter,
        spatial_dims: int,
        in_channels: int,
        token_dim: int,
        config: OmniFMConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config or OmniFMConfig()
        self.network = network
        self.spatial_dims = spatial_dims
        self._adapter = adapter
        self._tap = adapter.install_tap(network)
        cfg = self.config
        self.token_dim = token_dim
        self.spectral_encoder = (
            SpectralEncoder(
                spatial_dims, in_channels, cfg.spectral_dim, cfg.spectral_hidden, cfg.low_pass_fraction,
                grid=cfg.spectral_grid,
            )
            if cfg.spectral
            else None
        )
        self.eca = EmbeddingCrossAttention(token_dim, token_dim, cfg.head_dim, cfg.num_heads) if cfg.eca else None
        if self.eca is not None:
            # queries (bottleneck tokens) and memory (class-mean bottleneck features) share one feature
            # space: start Wq, Wk as (semi-)identities, so a position first attends to the class means it
            # resembles (prototype matching) instead of to a random projection of them
            nn.init.eye_(self.eca.to_q.weight)
            nn.init.eye_(self.eca.to_k.weight)
        self.key_proj = nn.Linear(cfg.spectral_dim, token_dim) if cfg.eca else None
        self.class_embed = (
            nn.Parameter(torch.randn(cfg.value_classes, token_dim) * 0.02) if cfg.eca and cfg.value_classes else None
        )
        self.prompt = PrefixSuffixPrompt(token_dim, cfg.num_suffix_tokens) if cfg.prompting else None
        self.fusion = (
            nn.TransformerEncoderLayer(
                token_dim, cfg.fusion_heads, dim_feedforward=2 * token_dim, dropout=0.0, batch_first=True, norm_first=True
            )
            if (cfg.eca or cfg.prompting)
            else None
        )

    @property
    def value_dim(self) -> int:
        """Length of a bank value this model reads: ``C * token_dim`` class means + ``C`` class fractions."""
        classes = self.config.value_classes if self.eca is not None else 0
        return classes * (self.token_dim + 1)

    def spectral_token(self, x: torch.Tensor) -> torch.Tensor | None:
        """Unit-norm spectral token ``s`` (B, d_s), or None when the spectral encoder is off.

        An adapter with a ``spectral_view(x)`` chooses what the encoder sees (e.g. a multi-modality
        input with its absent modalities' planes masked).
        """
        if self.spectral_encoder is None:
            return None
        view = getattr(self._adapter, "spectral_view", None)
        return self.spectral_encoder(view(x) if view is not None else x)

    def bottleneck_features(self, x: torch.Tensor) -> torch.Tensor:
        """The shared encoder's bottleneck feature map ``r`` (B, token_dim, *bottleneck spatial), unconditioned.

        Only the encoder runs (the pass stops at the bottleneck).
        """

        def stop(features: torch.Tensor) -> torch.Tensor:
            raise _Stop(features)

        self._tap.conditioner = stop
        try:
            self.network(x)
        except _Stop as captured:
            return captured.features
        finally:
            self._tap.conditioner = None
        raise RuntimeError("the bottleneck tap was not reached")  # pragma: no cover

    def forward(
        self,
        x: torch.Tensor,
        prototypes: torch.Tensor | None = None,
        prototype_mask: torch.Tensor | None = None,
        spectral_token: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
    ) -> OmniFMOutput:
        """Run the conditioned network.

        Args:
            x: images (B, C, *spatial).
            prototypes: retrieved global prototypes ``S_g`` (B, k, d_s); None or k = 0 means none.
            prototype_mask: (B, k) bool, True where a prototype slot is empty.
            spectral_token: ``s`` if already computed (saves a second FFT pass); else computed here.
            values: the retrieved entries' values (B, k, :attr:`value_dim`); when given they are
                what ECA attends to (the keys only select them).
        """
        s = spectral_token if spectral_token is not None else self.spectral_token(x)
        if self.fusion is None:
            return OmniFMOutput(self.network(x), s)
        memory = (prototypes, values, prototype_mask)
        self._tap.conditioner = lambda feats: self._condition(feats, s, memory)
        try:
            logits = self.network(x)
        finally:
            self._tap.conditioner = None
        return OmniFMOutput(logits, s)

    def _condition(self, features: torch.Tensor, s: torch.Tensor | None, memory: tuple) -> torch.Tensor:
        tokens = features.flatten(2).transpose(1, 2)  # (B, L, d)
        prefix = self._cross_attend(tokens, s, *memory) if self.eca is not None else None
        if prefix is not None:
            tokens = tokens + prefix  # ECA's residual, as in a transformer decoder's cross-attention block
        if self.prompt is not None:
            sequence = self.prompt(tokens, prefix)
        else:
            sequence = torch.cat([prefix, tokens], dim=1)
        start = 0 if prefix is None else prefix.shape[1]
        mixed = self.fusion(sequence)[:, start : start + tokens.shape[1]]
        return mixed.transpose(1, 2).reshape(features.shape).contiguous()  # networks may .view() it (MONAI ResNet)

    def _cross_attend(
        self,
        tokens: torch.Tensor,
        s: torch.Tensor,
        prototypes: torch.Tensor | None,
        values: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """``Z`` = ECA of the tokens onto ``[P s; retrieved memory]``."""
        parts = [self.key_proj(s).unsqueeze(1)]
        masks = [torch.zeros(s.shape[0], 1, dtype=torch.bool, device=s.device)]
        if prototypes is not None and prototypes.shape[1] > 0:
            slot_mask = mask if mask is not None else torch.zeros(prototypes.shape[:2], dtype=torch.bool, device=s.device)
            if values is not None and self.class_embed is not None:
                entries, entry_mask = self._value_tokens(values.to(tokens.dtype), slot_mask)
            else:
                entries, entry_mask = self.key_proj(prototypes.to(s.dtype)), slot_mask
            parts.append(entries)
            masks.append(entry_mask)
        return self.eca(tokens, torch.cat(parts, dim=1), torch.cat(masks, dim=1))

    def _value_tokens(self, values: torch.Tensor, slot_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, k, C*(d+1)) values -> (B, k*C, d) class tokens and their (B, k*C) mask (absent classes masked)."""
        batch, k, _ = values.shape
        classes, width = self.class_embed.shape
        if values.shape[-1] != classes * (width + 1):
            raise ValueError(f"values must have length {classes * (width + 1)}, got shape {tuple(values.shape)}")
        means = values[..., : classes * width].reshape(batch, k, classes, width) + self.class_embed
        absent = (values[..., classes * width :] <= 0) | slot_mask.unsqueeze(-1)
        return means.reshape(batch, k * classes, width), absent.reshape(batch, k * classes)

    def personal_parameter_names(self) -> set[str]:
        """Names of the head ``h_psi`` (the adapter's head modules) and the client suffix prompts ``c``."""
        personal = {id(p) for m in self._adapter.head_modules(self.network) for p in m.parameters()}
        if self.prompt is not None:
            personal.add(id(self.prompt.suffix))
        return {name for name, p in self.named_parameters() if id(p) in personal}
