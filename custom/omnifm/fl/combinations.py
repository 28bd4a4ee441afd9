"""Which privacy / bandwidth mechanisms one job may combine; the others are refused when the job starts.

A mechanism is recognised by the FLARE components a job configures (filters, components, the
executor): :data:`DETECTORS` maps a mechanism name to a test on one component. :data:`REFUSED`
maps a set of mechanisms that must not run together to the reason given at job start. Today:

=================  ==========================================================================
``he`` + ``int8``  refused (:data:`HE_INT8`): CKKS ciphertexts cannot be int8-quantized
``he`` alone       supported: weights protected from the server (``docs/HE.md``)
``int8`` alone     supported: 4x fewer weight bytes, meta (bank, prototypes) unchanged
``dp`` + ``he``    supported: DP noise is added at the site before encryption (``docs/PRIVACY.md``)
``dp`` + ``int8``  supported: quantizing a DP update is post-processing, the guarantee is unchanged
=================  ==========================================================================

``dp`` is recognised by the executor's DP settings (``train_config.dp``). For each combination to
refuse, add an entry to :data:`REFUSED`; every component that calls :func:`refuse_at_start` then
checks it. ``docs/COMPRESSION.md`` and ``docs/PRIVACY.md`` list the combinations and what each protects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext

HE, INT8, DP = "he", "int8", "dp"

HE_INT8 = (
    "homomorphic encryption and int8 compression cannot be combined: CKKS ciphertexts cannot be int8-quantized "
    "(the server must add them as they are), and quantizing before encryption saves nothing (every CKKS slot "
    "still costs a full ciphertext coefficient). Use jobs/omnifm_seg_he (encrypted, larger) or "
    "jobs/omnifm_seg_q8 (int8, plaintext to the server), not both"
)


def _module_of(component: Any) -> str:
    return type(component).__module__ + "."


DETECTORS: dict[str, Callable[[Any], bool]] = {
    HE: lambda c: _module_of(c).startswith(("nvflare.app_opt.he.", "omnifm.fl.he_")),
    INT8: lambda c: _module_of(c).startswith("omnifm.fl.quantize."),
    DP: lambda c: getattr(getattr(c, "train_config", None), "dp", None) is not None,
}
"""Mechanism name -> does this component belong to it."""

REFUSED: dict[frozenset[str], str] = {frozenset({HE, INT8}): HE_INT8}
"""Mechanisms that must not run in one job -> the reason shown at job start."""


def mechanisms(components: Iterable[Any]) -> set[str]:
    """The mechanisms (``he``, ``int8``, ...) that ``components`` configure."""
    components = list(components)
    return {name for name, detect in DETECTORS.items() if any(detect(c) for c in components)}


def refusal(found: set[str]) -> str | None:
    """Why the mechanisms in ``found`` cannot run together, or None."""
    for combination, reason in REFUSED.items():
        if combination <= found:
            return reason
    return None


def job_components(fl_ctx: FLContext) -> list[Any]:
    """Every filter and component of this participant's job (server or site), as FLARE holds them.

    FLARE 2.9 keeps the filter tables on the runner (the server runner in its ``config``), and the
    components on the runner's config (server) or the engine (site).
    """
    runner = fl_ctx.get_prop(FLContextKey.RUNNER)
    found: list[Any] = []
    for holder in (getattr(runner, "config", None), runner):
        for attr in ("task_data_filters", "task_result_filters"):
            table = getattr(holder, attr, None)
            for filters in (table.values() if isinstance(table, dict) else []):
                found.extend(filters or [])
        components = getattr(holder, "components", None)
        found.extend(components.values() if isinstance(components, dict) else [])
    engine = fl_ctx.get_engine()
    get_all = getattr(engine, "get_all_components", None)
    if callable(get_all):
        found.extend((get_all() or {}).values())
    return found


def refuse_at_start(component: Any, fl_ctx: FLContext) -> bool:
    """At START_RUN: stop the run (``system_panic``) if this job combines refused mechanisms; True if it did."""
    reason = refusal(mechanisms(job_components(fl_ctx)))
    if reason:
        component.system_panic(f"{type(component).__name__}: {reason}", fl_ctx)
        return True
    return False
