"""Prefix-suffix spectral prompting (PSP): ``r' = [Z | r | c]`` (OmniFM, Sec. 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from omnifm.validation import check_int, check_range

__all__ = ["PrefixSuffixPrompt"]


class PrefixSuffixPrompt(nn.Module):
    """Wrap backbone tokens with a spectral prefix and learnable client-specific suffix tokens.

    ``r' = [Z | r | c]`` along the sequence axis, where ``Z`` is the (optional) prefix from
    :class:`~omnifm.modules.cross_attention.EmbeddingCrossAttention` and ``c`` is the learnable
    parameter ``suffix`` of shape ``(num_suffix_tokens, token_dim)``, shared across the batch.
    Without a prefix, ``r' = [r | c]``. Use :meth:`token_slice` to find ``r`` inside ``r'``.

    Args:
        token_dim: token width ``d``.
        num_suffix_tokens: number of suffix tokens (>= 1).
        init_std: standard deviation of the normal initialisation of ``suffix`` (>= 0).

    Shapes:
        - tokens: ``(B, L, d)``
        - prefix: ``(B, Lp, d)`` or ``None`` (``Lp = 0``)
        - output: ``(B, Lp + L + num_suffix_tokens, d)``

    Examples::

        >>> psp = PrefixSuffixPrompt(token_dim=8, num_suffix_tokens=2)
        >>> out = psp(torch.randn(3, 5, 8), prefix=torch.zeros(3, 5, 8))
        >>> out.shape, psp.token_slice(prefix_len=5, num_tokens=5)
        (torch.Size([3, 12, 8]), slice(5, 10, None))
    """

    def __init__(self, token_dim: int, num_suffix_tokens: int = 4, init_std: float = 0.02) -> None:
        super().__init__()
        token_dim = check_int("token_dim", token_dim)
        num_suffix_tokens = check_int("num_suffix_tokens", num_suffix_tokens)
        check_range("init_std", init_std, 0, require_real=False)
        self.token_dim = token_dim
        self.num_suffix_tokens = num_suffix_tokens
        self.suffix = nn.Parameter(torch.randn(num_suffix_tokens, token_dim) * init_std)

    def _check_inputs(self, tokens: Tensor, prefix: Tensor | None) -> None:
        if tokens.ndim != 3 or tokens.shape[-1] != self.token_dim:
            raise ValueError(
                f"tokens must have shape (B, L, {self.token_dim}), got shape {tuple(tokens.shape)}"
            )
        if prefix is None:
            return
        expected = (tokens.shape[0], self.token_dim)
        if prefix.ndim != 3 or (prefix.shape[0], prefix.shape[-1]) != expected:
            raise ValueError(
                f"prefix must have shape ({tokens.shape[0]}, Lp, {self.token_dim}), "
                f"got shape {tuple(prefix.shape)}"
            )

    def forward(self, tokens: Tensor, prefix: Tensor | None = None) -> Tensor:
        """Return ``[prefix | tokens | suffix]`` of shape ``(B, Lp + L + num_suffix_tokens, d)``."""
        self._check_inputs(tokens, prefix)
        suffix = self.suffix.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        parts = [tokens, suffix] if prefix is None else [prefix, tokens, suffix]
        return torch.cat(parts, dim=1)

    def token_slice(self, prefix_len: int, num_tokens: int) -> slice:
        """Sequence slice where the original tokens ``r`` sit inside ``r'``.

        Args:
            prefix_len: prefix length ``Lp`` (0 when no prefix was given).
            num_tokens: number of original tokens ``L``.

        Returns:
            ``slice(prefix_len, prefix_len + num_tokens)``, e.g. ``out[:, psp.token_slice(Lp, L)]``.
        """
        prefix_len = check_int("prefix_len", prefix_len, 0)
        num_tokens = check_int("num_tokens", num_tokens, 0)
        return slice(prefix_len, prefix_len + num_tokens)

    def suffix_slice(self, prefix_len: int, num_tokens: int) -> slice:
        """Sequence slice of the suffix tokens ``c`` inside ``r'`` (always the last entries)."""
        start = self.token_slice(prefix_len, num_tokens).stop
        return slice(start, start + self.num_suffix_tokens)
