"""OmniFM building blocks: spectral tokenizer, embedding-wise cross-attention, prompting."""

from __future__ import annotations

from .cross_attention import EmbeddingCrossAttention
from .prompting import PrefixSuffixPrompt
from .spectral_encoder import SpectralEncoder, fft_magnitude, low_pass_crop

__all__ = [
    "EmbeddingCrossAttention",
    "PrefixSuffixPrompt",
    "SpectralEncoder",
    "fft_magnitude",
    "low_pass_crop",
]
