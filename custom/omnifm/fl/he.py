"""Homomorphic encryption (CKKS via TenSEAL) for the shared weights: contexts, checks and the encrypted mean.

The HE job (``jobs/omnifm_seg_he``) uses FLARE's own filters: a site's ``HEModelEncryptor`` (without
pre-weighting) encrypts its flattened weights; the server multiplies each site's ciphertexts by
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
    if algo.scaffold:
        return "SCAFFOLD's control variates are not a sample-weighted mean"
    if algo.rule == "feddyn":
        return "FedDyn's next model is the plain mean minus h / alpha, and h needs the plaintext weights"
    if algo.amplitude_aug:
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


def check_encrypted(weights: Any, shapes: dict[str, list[int]]) -> str | None:
    """Why encrypted weights cannot be summed with the global model's, or None if they can."""
    if not weights:
        return "no weights in the contribution"
    reason = wire.check_names(weights, shapes)
    if reason:
        return reason
    for name, value in weights.items():
        if not isinstance(value, ts.CKKSVector):
            return f"{name} is {type(value).__name__}, not a CKKS vector: the site did not encrypt it"
        if value.size() != prod(shapes[name]):
            return f"{name} holds {value.size()} values, expected {prod(shapes[name])} for shape {shapes[name]}"
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
    """Decrypted flat values back to float32 arrays of the global model's shapes.

    Raises:
        ValueError: a name without a shape, or a value count that does not fit its shape.
    """
    out = {}
    for name, value in weights.items():
        if name not in shapes:
            raise ValueError(f"no shape for {name!r} in the task's {SHAPES} meta")
        array = np.asarray(value, dtype=np.float32)
        if array.size != prod(shapes[name]):
            raise ValueError(f"{name} has {array.size} values, which do not fit shape {shapes[name]}")
        out[name] = array.reshape(shapes[name])
    return out
