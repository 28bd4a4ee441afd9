"""Homomorphic encryption (CKKS via TenSEAL) for the shared weights: contexts, checks and the encrypted mean.

The HE job (``jobs/omnifm_seg_he``) uses FLARE's own filters: a site's ``HEModelEncryptor`` (without
pre-weighting) encrypts its shared weights *packed* into one CKKS vector (all tensors flattened and
concatenated in sorted name order, :func:`pack`), which TenSEAL stores as ``ceil(values / slots)``
ciphertexts (4,096 slots at poly modulus 8192) instead of at least one per tensor; the server multiplies each site's ciphertexts by
``n_i / total samples`` and adds them (one plaintext-scalar multiplication per ciphertext, within
the depth of FLARE's default CKKS parameters); a site's ``HEModelDecryptor`` decrypts the next
global model.
The server never holds the secret key. Everything in DXO meta (sample counts, prototypes, retrieval
counts, metrics, run spec, bank) stays plaintext; see ``docs/HE.md``.
"""

from __future__ import annotations

from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
from nvflare.lighter.constants import ProvFileName
from nvflare.lighter.impl.he import HEBuilder

from omnifm.algorithms import ALGORITHMS, Algorithm, get_algorithm
from omnifm.fl import wire

SHAPES = "omnifm_shapes"
"""DXO meta key: ``{name: [dims]}`` of the shared weights (CKKS vectors are flat)."""

PACKED = "omnifm_he_packed"
"""The one weight name of an encrypted DXO: every shared tensor packed into one CKKS vector (:func:`pack`)."""

LAYOUT = "omnifm_he_layout"
"""DXO meta key set by the site's encryptor: ``[[name, size], ...]`` in packing order (plaintext, checked by the server)."""

UNWEIGHTED = "omnifm_he_unweighted"
"""DXO meta key set by :class:`~omnifm.fl.he_filters.OmniFMHEModelEncryptor`: weights were encrypted as they are."""

SERVER_CONTEXT = ProvFileName.SERVER_CONTEXT_TENSEAL
CLIENT_CONTEXT = ProvFileName.CLIENT_CONTEXT_TENSEAL


def _refusal(algo: Algorithm) -> str | None:
    """Why the server cannot run ``algo``'s rule on encrypted weights, or None if it can."""
    if not algo.federated:
        return "it is not a federation"
    if "all" in algo.personal:
        return "nothing is shared, so there is nothing to encrypt"
    if algo.rule == "scaffold":
        return "SCAFFOLD's control variates are not a sample-weighted mean"
    if algo.rule == "feddyn":
        return "FedDyn's next model is the plain mean minus h / alpha, and h needs the plaintext weights"
    if algo.rule == "feddg":
        return "its pooled amplitude bank would travel as plaintext meta beside the encrypted weights"
    return None


def he_algorithms() -> list[str]:
    """Algorithms whose server rule on the shared weights is a sample-weighted mean (OmniFM, FedAvg, FedProx, ...)."""
    return [name for name, algo in ALGORITHMS.items() if _refusal(algo) is None]


def check_he_algorithm(algorithm: str) -> str:
    """Return ``algorithm`` if the server can aggregate it on ciphertexts.

    Raises:
        ValueError: an unknown algorithm, or one whose rule needs more than a weighted mean.
    """
    reason = _refusal(get_algorithm(algorithm))
    if reason:
        raise ValueError(
            f"algorithm {algorithm!r} cannot run with homomorphic encryption ({reason}); the server can only "
            f"form a sample-weighted mean of encrypted weights: use one of {he_algorithms()} or the plain job"
        )
    return algorithm


def make_contexts(
    poly_modulus_degree: int = 8192, coeff_mod_bit_sizes: list[int] | None = None, scale_bits: int = 40
) -> dict[str, bytes]:
    """Serialized server and client TenSEAL contexts, made by FLARE's provisioning ``HEBuilder`` itself.

    ``HEBuilder`` makes a *symmetric* CKKS context: the client context holds the secret key (used to
    encrypt and to decrypt); the server context holds only the parameters and relinearisation keys,
    enough to add ciphertexts and multiply them by plaintext scalars. Same defaults as ``HEBuilder``
    (CKKS, poly modulus 8192, coefficient moduli [60, 40, 40], scale 2^40).

    Returns:
        ``{"server_context.tenseal": bytes, "client_context.tenseal": bytes}``.
    """
    if poly_modulus_degree not in (4096, 8192, 16384, 32768):
        raise ValueError(f"poly_modulus_degree must be a power of two in 4096..32768, got {poly_modulus_degree}")
    builder = HEBuilder(poly_modulus_degree, coeff_mod_bit_sizes, scale_bits, "CKKS")
    builder.initialize(project=None, ctx=None)  # HEBuilder.initialize only builds the TenSEAL context
    return {
        SERVER_CONTEXT: builder.get_serialized_context(is_client=False),
        CLIENT_CONTEXT: builder.get_serialized_context(is_client=True),
    }


def write_contexts(folder: str | Path, force: bool = False, **params: Any) -> list[Path]:
    """Write ``server_context.tenseal`` and ``client_context.tenseal`` into ``folder`` (for simulator / POC).

    Raises:
        ValueError: a context file exists already and ``force`` is false (new keys would make
            ciphertexts made with the old ones undecryptable).
    """
    folder = Path(folder)
    contexts = make_contexts(**params)
    existing = [folder / name for name in contexts if (folder / name).exists()]
    if existing and not force:
        raise ValueError(f"{', '.join(map(str, existing))} exists; pass --force to replace the keys")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in contexts.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


def shapes_of(weights: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """``{name: [dims]}`` as plain lists (safe in DXO meta and in ``weights_only`` checkpoints)."""
    return {name: [int(d) for d in np.shape(value)] for name, value in weights.items()}


def layout_of(shapes: dict[str, Any]) -> list[list]:
    """``[[name, size], ...]`` in packing order (sorted names): where each tensor sits in the packed vector."""
    return [[name, int(prod(shapes[name]))] for name in sorted(shapes)]


def pack(weights: dict[str, Any]) -> tuple[np.ndarray, list[list]]:
    """All tensors flattened and concatenated in sorted name order (float32), and their layout."""
    layout = layout_of({name: np.shape(value) for name, value in weights.items()})
    flat = [np.asarray(weights[name], dtype=np.float32).ravel() for name, _ in layout]
    return (np.concatenate(flat) if flat else np.zeros(0, np.float32)), layout


def check_encrypted(weights: Any, shapes: dict[str, list[int]], layout: Any) -> str | None:
    """Why a packed encrypted contribution cannot be summed with the global model's, or None if it can.

    Args:
        weights: ``{PACKED: CKKS vector}``.
        shapes: the global model's ``{name: dims}``.
        layout: the site's ``[[name, size], ...]`` (meta ``omnifm_he_layout``).
    """
    if not weights:
        return "no weights in the contribution"
    if not isinstance(weights, dict) or set(weights) != {PACKED}:
        return (f"expected one packed CKKS vector {PACKED!r}, got {sorted(weights)[:3]}: the site runs an "
                "encryptor that encrypts each tensor separately (use omnifm.fl.he_filters.OmniFMHEModelEncryptor)")
    if not isinstance(layout, list) or not all(isinstance(e, list) and len(e) == 2 for e in layout):
        return f"no packing layout ({LAYOUT}) in the contribution's meta"
    reason = wire.check_names({name: None for name, _ in layout}, shapes)
    if reason:
        return reason
    expected = layout_of(shapes)
    if layout != expected:
        wrong = next(f"{a[0]} has {a[1]} values, expected {b[1]}" for a, b in zip(layout, expected) if a != b)
        return f"packed layout differs from the global model's: {wrong}"
    value = weights[PACKED]
    if not isinstance(value, ts.CKKSVector):
        return f"{PACKED} is {type(value).__name__}, not a CKKS vector: the site did not encrypt it"
    total = sum(size for _, size in expected)
    if value.size() != total:
        return f"{PACKED} holds {value.size()} values, expected {total} for the global model's shapes"
    return None


def encrypted_mean(contributions: list[tuple[dict[str, ts.CKKSVector], int]]) -> dict[str, ts.CKKSVector]:
    """Sample-weighted mean of encrypted weights: ``sum_i enc(w_i) * (n_i / sum_j n_j)``.

    Each ciphertext is multiplied once by a plaintext scalar (one rescale, within the depth of
    FLARE's default parameters) and the products are added, so the server needs no secret key.
    The sites encrypt *unweighted* weights (:class:`~omnifm.fl.he_filters.OmniFMHEModelEncryptor`),
    so the weighting happens where the sample counts are known and checked.

    Args:
        contributions: ``(encrypted w_i, n_i)`` pairs with identical names and sizes.

    Raises:
        ValueError: empty input or a non-positive total sample count.
    """
    if not contributions:
        raise ValueError("no contributions to average")
    total = sum(n for _, n in contributions)
    if total <= 0:
        raise ValueError(f"total sample count must be > 0, got {total}")
    averaged = {}
    for name in contributions[0][0]:
        acc = None
        for weights, n in contributions:
            term = weights[name] * (n / total)
            acc = term if acc is None else acc + term
        averaged[name] = acc
    return averaged


def to_ciphertext_bytes(value: Any) -> bytes:
    """A CKKS vector (or its serialized bytes) as bytes; anything else is refused."""
    if isinstance(value, ts.CKKSVector):
        return value.serialize()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError(f"expected an encrypted weight (CKKS vector or its bytes), got {type(value).__name__}")


def from_ciphertext_bytes(weights: dict[str, Any], context: ts.Context | None) -> dict[str, Any]:
    """Ciphertext bytes (from :class:`~omnifm.fl.he_filters.SerializeCiphertexts`) back to CKKS vectors.

    Values that are not bytes are returned unchanged (e.g. vectors that arrived with their context).

    Raises:
        ValueError: bytes arrived but no context was loaded to read them.
    """
    if any(isinstance(v, (bytes, bytearray)) for v in weights.values()) and context is None:
        raise ValueError(f"ciphertext bytes arrived but no TenSEAL context is loaded (is {SERVER_CONTEXT} in startup/?)")
    return {k: ts.ckks_vector_from(context, bytes(v)) if isinstance(v, (bytes, bytearray)) else v
            for k, v in weights.items()}


def unflatten(weights: dict[str, Any], shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """The decrypted packed vector (``{PACKED: values}``) back to float32 arrays of the global model's shapes.

    Raises:
        ValueError: not one packed vector, or a value count that does not fit the shapes.
    """
    if set(weights) != {PACKED}:
        raise ValueError(f"expected the packed vector {PACKED!r}, got {sorted(weights)[:3]} (a model encrypted one "
                         "tensor per ciphertext by an older version?)")
    flat = np.asarray(weights[PACKED], dtype=np.float32).ravel()
    layout = layout_of(shapes)
    total = sum(size for _, size in layout)
    if flat.size != total:
        raise ValueError(f"{flat.size} decrypted values do not fit the {total} values of the shapes in {SHAPES}")
    out, offset = {}, 0
    for name, size in layout:
        out[name] = flat[offset:offset + size].reshape(shapes[name])
        offset += size
    return out
