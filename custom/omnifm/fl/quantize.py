"""Blockwise int8 compression of the shared weights on the wire, as a pair of FLARE filters.

:class:`QuantizeWeights` (on send) turns a ``DataKind.WEIGHTS`` DXO of float arrays into one int8
buffer plus one float32 scale per block of ``block_size`` values of each tensor (symmetric absmax:
``scale = max|x| / 127``, ``q = round(x / scale)``), with the layout (names, shapes, block size) in
meta as plain lists. :class:`DequantizeWeights` (on receive) restores float32 arrays of the original
shapes: ``x' = q * scale``, so ``|x - x'| <= scale / 2`` in every block.

Both directions use the same pair: the server quantizes the global model in its
``task_data_filters`` and each site dequantizes it in its ``task_data_filters``; each site
quantizes its result in its ``task_result_filters`` and the server dequantizes it in its
``task_result_filters`` (``jobs/omnifm_seg_q8``, ``docs/COMPRESSION.md``). Meta (spec, knowledge
bank, prototypes, counts, metrics) keeps its content; only its long lists of floats (the bank's
keys and values, prototypes: plain lists cost 9 bytes per number on the wire) travel as float32
arrays and are restored to lists (values rounded to float32, relative error < 6e-8).

Scales are float32 (not float16): the bound above holds exactly with the scale that is sent, no
float16 range problems (weights below 6e-8 or above 65504), and at the default block of 256 values
the scales cost 1.6 % of the int8 payload (float16 would save 0.8 %).

The kernels are plain torch and run on the tensor's device (CPU or CUDA); the filters work on the
numpy arrays FLARE carries, i.e. on the CPU. NaN and Inf are refused (int8 cannot carry them, and
a silently clipped value would corrupt the mean), and so is anything already encrypted (CKKS
ciphertexts cannot be quantized; see :mod:`omnifm.fl.combinations`).
"""

from __future__ import annotations

from math import ceil, prod
from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from omnifm.fl import combinations

Q8_WEIGHTS = "OMNIFM_Q8_WEIGHTS"
"""Data kind of a quantized DXO: nothing downstream mistakes it for float weights (the aggregator
rejects it with ``data kind OMNIFM_Q8_WEIGHTS, expected DataKind.WEIGHTS`` when the dequantizer is missing)."""

LAYOUT = "omnifm_q8_layout"
"""DXO meta key: ``{"block_size": int, "names": [...], "shapes": [[dims], ...]}`` (plain lists)."""

FLOAT32 = "__omnifm_float32__"
"""Marker of a meta float list sent as a float32 array: ``{FLOAT32: ndarray}`` (on the wire only)."""
MIN_FLOATS = 16

VALUES = "int8_values"
SCALES = "float32_scales"
QMAX = 127
DEFAULT_BLOCK = 256


def quantize_blockwise(x: torch.Tensor | np.ndarray, block_size: int = DEFAULT_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise symmetric int8 quantization of the flattened ``x``.

    Args:
        x: any shape, float dtype, on any device; values must be finite.
        block_size: values per scale; the last block may be shorter.

    Returns:
        ``(q, scales)``: int8 tensor of ``x.numel()`` values and float32 tensor of
        ``ceil(numel / block_size)`` scales, both on ``x``'s device. A block of zeros has scale 0.

    Raises:
        ValueError: non-finite values, a non-float dtype or ``block_size < 1``.

    Examples::

        >>> q, s = quantize_blockwise(torch.tensor([0.5, -1.0, 0.25]), block_size=2)
        >>> q.tolist(), s.tolist()
        ([64, -127, 127], [0.007874015718698502, 0.0019685039296746254])
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    flat = torch.as_tensor(x).reshape(-1)
    if not flat.is_floating_point():
        raise ValueError(f"only float values can be quantized, got {flat.dtype}")
    flat = flat.to(torch.float32)
    if not torch.isfinite(flat).all():
        raise ValueError("values contain NaN or Inf")
    n = flat.numel()
    blocks = torch.nn.functional.pad(flat, (0, ceil(n / block_size) * block_size - n)).view(-1, block_size)
    scales = blocks.abs().amax(dim=1) / QMAX
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(blocks / safe[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q.reshape(-1)[:n], scales


def dequantize_blockwise(q: torch.Tensor | np.ndarray, scales: torch.Tensor | np.ndarray, block_size: int) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise`: flat float32 ``q * scale`` on ``q``'s device.

    Raises:
        ValueError: the number of scales does not fit ``len(q)`` and ``block_size``.
    """
    q = torch.as_tensor(q).reshape(-1)
    scales = torch.as_tensor(scales, device=q.device).reshape(-1).to(torch.float32)
    n = q.numel()
    if scales.numel() != ceil(n / block_size):
        raise ValueError(f"{scales.numel()} scales do not fit {n} values in blocks of {block_size}")
    padded = torch.nn.functional.pad(q.to(torch.float32), (0, scales.numel() * block_size - n))
    return (padded.view(-1, block_size) * scales[:, None]).reshape(-1)[:n]


def compress(weights: dict[str, Any], block_size: int = DEFAULT_BLOCK) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Quantize every tensor of ``weights``: one int8 buffer, one float32 scale array, the layout.

    Blocks never span two tensors (a bias is not scaled by the next convolution's largest weight).

    Raises:
        ValueError: a tensor that is not a float array (e.g. a CKKS ciphertext) or holds NaN/Inf,
            named in the message.
    """
    values, scales, names, shapes = [], [], [], []
    for name, value in weights.items():
        if not isinstance(value, (np.ndarray, torch.Tensor)):
            raise ValueError(f"{name} is {type(value).__name__}, not a float array: only plaintext weights can be "
                             f"int8-quantized ({combinations.HE_INT8})")
        try:
            q, s = quantize_blockwise(value, block_size)
        except ValueError as err:
            raise ValueError(f"cannot quantize {name}: {err}") from None
        values.append(q.cpu().numpy())
        scales.append(s.cpu().numpy())
        names.append(name)
        shapes.append([int(d) for d in np.shape(value)])
    data = {VALUES: np.concatenate(values) if values else np.zeros(0, np.int8),
            SCALES: np.concatenate(scales) if scales else np.zeros(0, np.float32)}
    return data, {"block_size": int(block_size), "names": names, "shapes": shapes}


def decompress(data: dict[str, Any], layout: Any) -> dict[str, np.ndarray]:
    """float32 arrays of the original names and shapes from :func:`compress`'s output.

    Raises:
        ValueError: a malformed layout, or buffers whose sizes do not fit it.
    """
    block, names, shapes = _check_layout(layout)
    if not isinstance(data, dict) or set(data) != {VALUES, SCALES}:
        raise ValueError(f"quantized data must hold exactly {VALUES!r} and {SCALES!r}, got {sorted(data)[:4]}")
    q, scales = np.asarray(data[VALUES]), np.asarray(data[SCALES])
    if q.dtype != np.int8 or scales.dtype != np.float32:
        raise ValueError(f"expected int8 values and float32 scales, got {q.dtype} and {scales.dtype}")
    sizes = [prod(s) for s in shapes]
    blocks = [ceil(n / block) for n in sizes]
    if q.size != sum(sizes) or scales.size != sum(blocks):
        raise ValueError(f"{q.size} values / {scales.size} scales do not fit the layout's {sum(sizes)} values / "
                         f"{sum(blocks)} blocks")
    out, vo, so = {}, 0, 0
    for name, shape, n, b in zip(names, shapes, sizes, blocks):
        flat = dequantize_blockwise(q[vo:vo + n], scales[so:so + b], block)
        out[name] = flat.numpy().reshape(shape)
        vo, so = vo + n, so + b
    return out


def _check_layout(layout: Any) -> tuple[int, list[str], list[list[int]]]:
    if not isinstance(layout, dict) or {"block_size", "names", "shapes"} - set(layout):
        raise ValueError(f"{LAYOUT} meta must hold block_size, names and shapes, got {layout!r:.80}")
    block, names, shapes = layout["block_size"], layout["names"], layout["shapes"]
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"{LAYOUT}.block_size must be an int >= 1, got {block!r}")
    if not isinstance(names, list) or not isinstance(shapes, list) or len(names) != len(shapes):
        raise ValueError(f"{LAYOUT}: names and shapes must be lists of the same length")
    if len(set(names)) != len(names):
        raise ValueError(f"{LAYOUT}: a tensor name appears twice")
    return block, names, shapes


def _all_floats(node: Any) -> bool:
    if isinstance(node, list):
        return bool(node) and all(_all_floats(v) for v in node)
    return isinstance(node, float)


def pack_floats(node: Any) -> Any:
    """``node`` with every rectangular list of >= 16 Python floats replaced by ``{FLOAT32: float32 array}``.

    Ints, bools, strings, short or ragged lists and mixed lists are left as they are; nothing is modified in place.
    """
    if isinstance(node, dict):
        return {k: pack_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        if _all_floats(node):
            try:
                array = np.asarray(node, dtype=np.float32)
            except ValueError:  # ragged
                array = None
            if array is not None and array.size >= MIN_FLOATS:
                return {FLOAT32: array}
        return [pack_floats(v) for v in node]
    return node


def unpack_floats(node: Any) -> Any:
    """Inverse of :func:`pack_floats`: the float32 arrays back to (nested) lists of Python floats."""
    if isinstance(node, dict):
        if set(node) == {FLOAT32}:
            return np.asarray(node[FLOAT32], dtype=np.float32).tolist()
        return {k: unpack_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [unpack_floats(v) for v in node]
    return node


def _meta_without_history(dxo: DXO) -> dict[str, Any]:
    """A copy of ``dxo.meta`` (FLARE shares one task's meta between all sites; never mutate it)."""
    return {k: v for k, v in (dxo.meta or {}).items() if k != MetaKey.FILTER_HISTORY}


class QuantizeWeights(DXOFilter):
    """Sends ``DataKind.WEIGHTS`` as blockwise int8 (+ float32 scales); put it last in the sender's filters.

    On the server: ``task_data_filters`` (``train``, ``validate``); on a site: ``task_result_filters``
    (``train``). The receiver needs :class:`DequantizeWeights`. The input DXO is not modified (the
    server hands the same task data to every site).

    Args:
        block_size: values per float32 scale (default 256: the scales add 1.6 % to the int8 bytes).

    Raises:
        ValueError: (at construction) ``block_size < 1``; (while filtering) NaN/Inf weights or
            encrypted weights; (at START_RUN, as a system panic) the job also encrypts with HE.
    """

    def __init__(self, block_size: int = DEFAULT_BLOCK) -> None:
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
        self.block_size = block_size

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            combinations.refuse_at_start(self, fl_ctx)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        if dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM) or dxo.get_meta_prop(MetaKey.PROCESSED_KEYS):
            raise ValueError(f"weights are already processed ({dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM)}): "
                             f"{combinations.HE_INT8}")
        data, layout = compress(dxo.data, self.block_size)
        meta = {**pack_floats(_meta_without_history(dxo)), LAYOUT: layout}
        sent, fp32 = data[VALUES].nbytes + data[SCALES].nbytes, 4 * data[VALUES].size
        self.log_info(fl_ctx, f"int8-quantized {len(layout['names'])} tensors ({data[VALUES].size} values): {sent} "
                      f"bytes instead of {fp32} ({sent / max(fp32, 1):.3f}x; meta unchanged)")
        return DXO(data_kind=Q8_WEIGHTS, data=data, meta=meta)


class DequantizeWeights(DXOFilter):
    """Restores float32 ``DataKind.WEIGHTS`` from :class:`QuantizeWeights`' output; put it first in the receiver's filters.

    On a site: ``task_data_filters`` (``train``, ``validate``); on the server: ``task_result_filters``
    (``train``). Weights that arrive uncompressed (the sender has no :class:`QuantizeWeights`) are
    passed on unchanged with a warning; the receiver's own checks then apply as without compression.

    Raises:
        ValueError: (while filtering) a malformed layout or buffers that do not fit it.
    """

    def __init__(self) -> None:
        kinds = [Q8_WEIGHTS, DataKind.WEIGHTS]
        super().__init__(supported_data_kinds=kinds, data_kinds_to_filter=kinds)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            combinations.refuse_at_start(self, fl_ctx)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        if dxo.data_kind != Q8_WEIGHTS:
            self.log_warning(fl_ctx, "weights arrived uncompressed (the sender has no QuantizeWeights filter)")
            return None
        weights = decompress(dxo.data, dxo.get_meta_prop(LAYOUT))
        meta = unpack_floats({k: v for k, v in _meta_without_history(dxo).items() if k != LAYOUT})
        return DXO(data_kind=DataKind.WEIGHTS, data=weights, meta=meta)
