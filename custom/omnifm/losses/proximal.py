"""FedProx's proximal term: ``mu / 2 * ||w - w_global||^2`` over the shared parameters."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from omnifm.validation import check_range


def proximal_term(
    parameters: Iterable[tuple[str, torch.Tensor]], anchor: dict[str, torch.Tensor], mu: float
) -> torch.Tensor:
    """``mu / 2 * sum_i ||w_i - anchor_i||^2`` over the named parameters present in ``anchor``.

    Args:
        parameters: ``model.named_parameters()`` (parameters not in ``anchor`` are ignored).
        anchor: the global weights received this round (detached, same device).
        mu: the proximal weight, >= 0.

    Returns:
        A scalar whose gradient with respect to ``w_i`` is ``mu * (w_i - anchor_i)``.

    Examples::

        >>> w = torch.nn.Parameter(torch.tensor([1.0, 3.0]))
        >>> proximal_term([("w", w)], {"w": torch.zeros(2)}, mu=0.5)
        tensor(2.5000, grad_fn=<MulBackward0>)
    """
    mu = check_range("mu", mu, 0.0)
    terms = [(w - anchor[name]).square().sum() for name, w in parameters if name in anchor]
    if not terms:
        raise ValueError("no parameter of the model is in the anchor: nothing to be proximal to")
    return 0.5 * mu * torch.stack(terms).sum()
