"""Global Spectral Knowledge Bank (OmniFM, sec. 3.3).

The server keeps a bank ``K`` of spectral prototypes: vectors of dimension ``d`` living in the
L2-normalised spectral token space. Clients retrieve the top-k prototypes by cosine similarity
and, once per round, upload prototype aggregates (centroids with counts) plus how often they
retrieved each prototype id. :meth:`KnowledgeBank.update` applies one round of the server rule:

1. record the round's retrieval counts (only for prototypes that existed during the round),
2. prune prototypes whose retrieval frequency stayed below ``delta`` for ``prune_window``
   consecutive rounds with evidence,
3. insert the uploaded prototypes under fresh ids (ids are never reused),
4. project every prototype onto the ball ``||s||_2 <= rho``,
5. cap the bank at ``max_size`` by evicting the least-retrieved prototypes,
6. bump ``version`` and reset the round counters.

The bank always lives on the CPU in float32, with rows kept sorted by ascending id.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from omnifm.validation import check_int, is_int

_CONFIG_KEYS = ("dim", "rho", "delta", "prune_window", "max_size")
_COUNTER_KEYS = ("next_id", "version")
_ROW_DTYPES = {
    "prototypes": torch.float32,
    "ids": torch.int64,
    "streaks": torch.int64,
    "freq_sum": torch.float64,
    "freq_rounds": torch.int64,
    "round_counts": torch.int64,
}
STATE_KEYS = frozenset(_CONFIG_KEYS + _COUNTER_KEYS + tuple(_ROW_DTYPES))
_MAX_NUDGES = 16
_NUDGE = 1.0 - 2.0**-20


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_config(
    dim: Any, rho: Any, delta: Any, prune_window: Any, max_size: Any
) -> tuple[int, float, float, int, int]:
    """Return the config as plain Python numbers; raise ``ValueError`` naming the first bad one."""
    dim = check_int("dim", dim)
    if not _is_real(rho) or rho <= 0:
        raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
    if not _is_real(delta) or not 0 <= delta < 1:
        raise ValueError(f"delta must satisfy 0 <= delta < 1, got {delta!r}")
    prune_window = check_int("prune_window", prune_window)
    max_size = check_int("max_size", max_size)
    return dim, float(rho), float(delta), prune_window, max_size


def _project_to_ball(rows: Tensor, rho: float) -> Tensor:
    """Return ``rows`` with every row of norm > ``rho`` scaled back onto the sphere of radius rho.

    Rows already inside the ball are returned bit-for-bit unchanged. Scaled rows are nudged
    inwards by a few ulps if float32 rounding left their norm marginally above ``rho``.
    """
    out = rows.clone()
    norms = torch.linalg.vector_norm(out, dim=1)
    over = norms > rho
    out[over] *= (rho / norms[over]).unsqueeze(1)
    for _ in range(_MAX_NUDGES):
        over = torch.linalg.vector_norm(out, dim=1) > rho
        if not bool(over.any()):
            break
        out[over] *= _NUDGE
    return out


def _as_count(key: Any, value: Any) -> tuple[int, int]:
    """Coerce one ``{id: count}`` item to plain ints, rejecting negative counts."""
    try:
        key, value = operator.index(key), operator.index(value)
    except TypeError as err:
        raise ValueError(f"counts must map int ids to int counts, got {key!r}: {value!r}") from err
    if value < 0:
        raise ValueError(f"counts must be >= 0, got {value} for id {key}")
    return key, value


class KnowledgeBank:
    """Global Spectral Knowledge Bank of spectral prototypes.

    Args:
        dim: Prototype dimension ``d``.
        rho: Radius of the L2 ball every prototype is projected onto.
        delta: Retrieval-frequency threshold below which a prototype counts as unused.
        prune_window: Consecutive rounds (with retrievals) of frequency < ``delta`` after which
            a prototype is pruned.
        max_size: Maximum number of prototypes kept after each update.

    Attributes:
        prototypes: ``(N, dim)`` float32 copy of the prototypes (rows sorted by id).
        ids: ``(N,)`` int64 copy of the unique prototype ids, ascending.
        next_id: Id the next inserted prototype receives; ids are never reused.
        version: Number of completed :meth:`update` rounds.

    Examples::

        >>> bank = KnowledgeBank(dim=4, rho=1.0)
        >>> bank.insert(torch.eye(4)).tolist()
        [0, 1, 2, 3]
        >>> protos, ids = bank.retrieve(torch.tensor([[0.0, 2.0, 0.1, 0.0]]), k=2)
        >>> protos.shape, ids.tolist()
        (torch.Size([1, 2, 4]), [[1, 2]])
        >>> bank.update(None, {1: 5, 2: 1})["version"]
        1
    """

    def __init__(
        self,
        dim: int,
        rho: float = 1.0,
        delta: float = 0.05,
        prune_window: int = 3,
        max_size: int = 64,
    ) -> None:
        config = _check_config(dim, rho, delta, prune_window, max_size)
        self._dim, self._rho, self._delta, self._prune_window, self._max_size = config
        self._next_id = 0
        self._version = 0
        self._prototypes = torch.empty(0, self._dim, dtype=torch.float32)
        self._ids = torch.empty(0, dtype=torch.int64)
        self._streaks = torch.empty(0, dtype=torch.int64)
        self._freq_sum = torch.empty(0, dtype=torch.float64)
        self._freq_rounds = torch.empty(0, dtype=torch.int64)
        self._round_counts = torch.empty(0, dtype=torch.int64)

    # ------------------------------------------------------------------ read-only views
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def rho(self) -> float:
        return self._rho

    @property
    def delta(self) -> float:
        return self._delta

    @property
    def prune_window(self) -> int:
        return self._prune_window

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def next_id(self) -> int:
        return self._next_id

    @property
    def version(self) -> int:
        return self._version

    @property
    def prototypes(self) -> Tensor:
        return self._prototypes.clone()

    @property
    def ids(self) -> Tensor:
        return self._ids.clone()

    def __len__(self) -> int:
        return int(self._ids.numel())

    def __repr__(self) -> str:
        return (
            f"KnowledgeBank(dim={self._dim}, size={len(self)}, version={self._version}, "
            f"rho={self._rho}, delta={self._delta}, prune_window={self._prune_window}, "
            f"max_size={self._max_size})"
        )

    # ------------------------------------------------------------------ row bookkeeping
    def _rows(self) -> dict[str, Tensor]:
        return {
            "prototypes": self._prototypes,
            "ids": self._ids,
            "streaks": self._streaks,
            "freq_sum": self._freq_sum,
            "freq_rounds": self._freq_rounds,
            "round_counts": self._round_counts,
        }

    def _set_rows(self, rows: Mapping[str, Tensor]) -> None:
        self._prototypes, self._ids = rows["prototypes"], rows["ids"]
        self._streaks, self._freq_sum = rows["streaks"], rows["freq_sum"]
        self._freq_rounds, self._round_counts = rows["freq_rounds"], rows["round_counts"]

    def _keep(self, mask: Tensor) -> None:
        self._set_rows({name: value[mask] for name, value in self._rows().items()})

    def _check_rows(self, prototypes: Any, name: str) -> Tensor:
        """Validate an ``(M, dim)`` finite float tensor; return a detached float32 CPU copy."""
        if not isinstance(prototypes, Tensor) or not prototypes.is_floating_point():
            raise ValueError(f"{name} must be a floating-point Tensor, got {type(prototypes)!r}")
        if prototypes.ndim != 2 or prototypes.shape[1] != self._dim:
            shape = tuple(prototypes.shape)
            raise ValueError(f"{name} must have shape (M, {self._dim}), got {shape}")
        rows = prototypes.detach().to(device="cpu", dtype=torch.float32).clone()
        if not bool(torch.isfinite(rows).all()):
            raise ValueError(f"{name} must be finite (no NaN/Inf values)")
        return rows

    # ------------------------------------------------------------------ retrieval
    def retrieve(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-k prototypes by cosine similarity for each query.

        Args:
            queries: ``(B, dim)`` floating tensor; never differentiated through.
            k: Number of prototypes requested (>= 1); ``k' = min(k, len(self))`` are returned.

        Returns:
            ``(B, k', dim)`` detached prototype copies on the queries' device/dtype, sorted by
            similarity descending (exact ties: lower id first), and the ``(B, k')`` int64 ids.

        Examples::

            >>> bank = KnowledgeBank(dim=2)
            >>> _ = bank.insert(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
            >>> bank.retrieve(torch.tensor([[0.2, 0.9]]), k=5)[1].tolist()
            [[1, 0]]
        """
        if not isinstance(queries, Tensor) or not queries.is_floating_point():
            raise ValueError(f"queries must be a floating-point Tensor, got {type(queries)!r}")
        if queries.ndim != 2 or queries.shape[1] != self._dim:
            shape = tuple(queries.shape)
            raise ValueError(f"queries must have shape (B, {self._dim}), got {shape}")
        k = check_int("k", k)
        top = min(k, len(self))
        with torch.no_grad():
            q = F.normalize(queries.detach().to(device="cpu", dtype=torch.float32), dim=1)
            sims = q @ F.normalize(self._prototypes, dim=1).T
            order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :top]
        protos = self._prototypes[order].to(device=queries.device, dtype=queries.dtype)
        return protos, self._ids[order].to(queries.device)

    # ------------------------------------------------------------------ server rule steps
    def insert(self, prototypes: Tensor) -> Tensor:
        """Append prototypes under fresh ids (never reused); new rows start with a clean streak.

        Args:
            prototypes: ``(M, dim)`` finite floating tensor (``M`` may be 0).

        Returns:
            ``(M,)`` int64 ids assigned to the new prototypes.

        Examples::

            >>> bank = KnowledgeBank(dim=3)
            >>> bank.insert(torch.ones(2, 3)).tolist()
            [0, 1]
        """
        rows = self._check_rows(prototypes, "prototypes")
        count = rows.shape[0]
        new_ids = torch.arange(self._next_id, self._next_id + count, dtype=torch.int64)
        self._next_id += count
        zeros = torch.zeros(count, dtype=torch.int64)
        fresh = {
            "prototypes": rows,
            "ids": new_ids,
            "streaks": zeros,
            "freq_sum": torch.zeros(count, dtype=torch.float64),
            "freq_rounds": zeros,
            "round_counts": zeros,
        }
        self._set_rows({name: torch.cat([old, fresh[name]]) for name, old in self._rows().items()})
        return new_ids.clone()

    def project(self) -> None:
        """Project every prototype onto the ball ``||s||_2 <= rho`` (rows inside are untouched).

        Examples::

            >>> bank = KnowledgeBank(dim=2, rho=1.0)
            >>> _ = bank.insert(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
            >>> bank.project()
            >>> bank.prototypes.tolist()
            [[0.6000000238418579, 0.800000011920929], [0.30000001192092896, 0.4000000059604645]]
        """
        self._prototypes = _project_to_ball(self._prototypes, self._rho)

    def record_retrievals(self, counts: Mapping[int, int]) -> int:
        """Accumulate this round's retrieval counts by prototype id.

        Args:
            counts: ``{id: count}`` with non-negative int counts (e.g. summed over clients).

        Returns:
            Total count attached to ids not in the bank; those retrievals are ignored and do
            not enter the round total used for frequencies.

        Examples::

            >>> bank = KnowledgeBank(dim=2)
            >>> _ = bank.insert(torch.ones(1, 2))
            >>> bank.record_retrievals({0: 3, 99: 2})
            2
        """
        if not isinstance(counts, Mapping):
            raise ValueError(f"counts must be a mapping of id -> count, got {type(counts)!r}")
        items = [_as_count(key, value) for key, value in counts.items()]
        position = {pid: row for row, pid in enumerate(self._ids.tolist())}
        ignored = 0
        for pid, value in items:
            row = position.get(pid)
            if row is None:
                ignored += value
            else:
                self._round_counts[row] += value
        return ignored

    def _fold_round(self) -> bool:
        """Turn the recorded round counts into frequencies, streaks and cumulative stats.

        Returns False (and changes nothing) when the round has no retrievals at all.
        """
        total = int(self._round_counts.sum())
        if total == 0:
            return False
        freq = self._round_counts.to(torch.float64) / total
        self._streaks = torch.where(freq < self._delta, self._streaks + 1, 0)
        self._freq_sum = self._freq_sum + freq
        self._freq_rounds = self._freq_rounds + 1
        self._round_counts = torch.zeros_like(self._round_counts)
        return True

    def prune(self) -> list[int]:
        """Close the round's evidence and remove persistently unused prototypes.

        The round frequency of a prototype is its recorded count divided by the round's total
        (known-id) retrievals. Frequencies below ``delta`` extend its streak, others reset it;
        a streak reaching ``prune_window`` removes the prototype. A round with no retrievals is
        no evidence: streaks are left as they are and nothing is pruned. The recorded counts
        are consumed (zeroed), so calling ``prune`` twice does not count a round twice.

        Returns:
            Ids of the removed prototypes, ascending.

        Examples::

            >>> bank = KnowledgeBank(dim=2, delta=0.2, prune_window=1)
            >>> _ = bank.insert(torch.eye(2))
            >>> _ = bank.record_retrievals({0: 10})
            >>> bank.prune()
            [1]
        """
        if not self._fold_round():
            return []
        doomed = self._streaks >= self._prune_window
        removed = self._ids[doomed].tolist()
        self._keep(~doomed)
        return removed

    def mean_frequencies(self) -> Tensor:
        """``(N,)`` float64 mean retrieval frequency over the rounds with evidence (0 if none)."""
        return self._freq_sum / self._freq_rounds.clamp(min=1)

    def cap(self) -> list[int]:
        """Evict the lowest-mean-frequency prototypes (ties: oldest id first) down to max_size.

        Prototypes with no evidence yet (e.g. just inserted) have mean frequency 0.

        Returns:
            Ids of the evicted prototypes, in eviction order.

        Examples::

            >>> bank = KnowledgeBank(dim=2, max_size=1)
            >>> _ = bank.insert(torch.eye(2))
            >>> bank.cap()
            [0]
        """
        excess = len(self) - self._max_size
        if excess <= 0:
            return []
        by_id = torch.argsort(self._ids)
        order = by_id[torch.argsort(self.mean_frequencies()[by_id], stable=True)]
        victims = order[:excess]
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[victims] = False
        evicted = self._ids[victims].tolist()
        self._keep(keep)
        return evicted

    def update(
        self,
        new_prototypes: Tensor | None,
        retrieval_counts: Mapping[int, int] | None,
    ) -> dict[str, int]:
        """Run one server round: record -> prune -> insert -> project -> cap -> version += 1.

        Inputs are validated before anything changes, so a rejected update leaves the bank as
        it was.

        Args:
            new_prototypes: ``(M, dim)`` uploaded prototypes, or None.
            retrieval_counts: ``{id: count}`` retrievals made during the round, or None.

        Returns:
            Plain-int summary with keys ``inserted``, ``pruned``, ``evicted``, ``size``,
            ``version`` and ``ignored_retrievals`` (counts for ids unknown to the bank).

        Examples::

            >>> bank = KnowledgeBank(dim=2)
            >>> summary = bank.update(torch.ones(3, 2), None)
            >>> summary["inserted"], summary["size"], summary["version"]
            (3, 3, 1)
        """
        rows = None
        if new_prototypes is not None:
            rows = self._check_rows(new_prototypes, "new_prototypes")
        ignored = self.record_retrievals(retrieval_counts) if retrieval_counts is not None else 0
        pruned = self.prune()
        inserted = 0 if rows is None else int(self.insert(rows).numel())
        self.project()
        evicted = self.cap()
        self._version += 1
        self._round_counts = torch.zeros_like(self._round_counts)
        return {
            "inserted": inserted,
            "pruned": len(pruned),
            "evicted": len(evicted),
            "size": len(self),
            "version": self._version,
            "ignored_retrievals": ignored,
        }

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Full bank state as tensors and Python ints/floats (``weights_only``-loadable).

        Keys: config (``dim``, ``rho``, ``delta``, ``prune_window``, ``max_size``), counters
        (``next_id``, ``version``) and per-row tensors ``prototypes`` (N, dim) float32, ``ids``,
        ``streaks``, ``freq_rounds``, ``round_counts`` (N,) int64 and ``freq_sum`` (N,) float64.

        Examples::

            >>> bank = KnowledgeBank(dim=2)
            >>> sorted(bank.state_dict())[:3]
            ['delta', 'dim', 'freq_rounds']
        """
        state: dict[str, Any] = {
            "dim": self._dim,
            "rho": self._rho,
            "delta": self._delta,
            "prune_window": self._prune_window,
            "max_size": self._max_size,
            "next_id": self._next_id,
            "version": self._version,
        }
        state.update({name: value.clone() for name, value in self._rows().items()})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the whole bank state (config included) after validating it.

        Args:
            state: Output of :meth:`state_dict`; its ``dim`` must equal this bank's ``dim``.

        Raises:
            ValueError: On missing/unexpected keys, bad config or counters, wrong dtypes or
                shapes, non-finite values, duplicate/negative ids or ids >= ``next_id``.

        Examples::

            >>> src = KnowledgeBank(dim=2)
            >>> _ = src.insert(torch.ones(1, 2))
            >>> dst = KnowledgeBank(dim=2)
            >>> dst.load_state_dict(src.state_dict())
            >>> len(dst)
            1
        """
        _check_state_keys(state)
        if state["dim"] != self._dim:
            raise ValueError(f"state dim {state['dim']!r} does not match bank dim {self._dim}")
        _, rho, delta, prune_window, max_size = _check_config(*(state[key] for key in _CONFIG_KEYS))
        next_id, version = _check_counters(state)
        rows = _check_state_rows(state, self._dim, next_id)
        self._rho, self._delta = rho, delta
        self._prune_window, self._max_size = prune_window, max_size
        self._next_id, self._version = next_id, version
        self._set_rows(rows)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> KnowledgeBank:
        """Build a bank from :meth:`state_dict` output.

        Examples::

            >>> bank = KnowledgeBank(dim=2, rho=0.5)
            >>> KnowledgeBank.from_state_dict(bank.state_dict()).rho
            0.5
        """
        _check_state_keys(state)
        bank = cls(*(state[key] for key in _CONFIG_KEYS))
        bank.load_state_dict(state)
        return bank

    def to_plain(self) -> dict[str, Any]:
        """The :meth:`state_dict` content as plain Python lists/ints/floats (no tensors).

        Float32 prototypes become Python floats holding the exact float32 values, so
        :meth:`from_plain` restores bit-identical tensors.

        Examples::

            >>> bank = KnowledgeBank(dim=2)
            >>> _ = bank.insert(torch.tensor([[0.5, 0.25]]))
            >>> bank.to_plain()["prototypes"]
            [[0.5, 0.25]]
        """
        return {
            key: value.tolist() if isinstance(value, Tensor) else value
            for key, value in self.state_dict().items()
        }

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> KnowledgeBank:
        """Inverse of :meth:`to_plain`.

        Examples::

            >>> bank = KnowledgeBank(dim=2)
            >>> _ = bank.insert(torch.tensor([[0.1, 0.2]]))
            >>> torch.equal(KnowledgeBank.from_plain(bank.to_plain()).prototypes, bank.prototypes)
            True
        """
        _check_state_keys(plain)
        state = dict(plain)
        for key, dtype in _ROW_DTYPES.items():
            state[key] = _plain_to_tensor(key, plain[key], dtype)
        if state["prototypes"].numel() == 0 and is_int(plain["dim"]) and plain["dim"] > 0:
            state["prototypes"] = state["prototypes"].reshape(0, plain["dim"])
        return cls.from_state_dict(state)


# ---------------------------------------------------------------------- state validation
def _check_state_keys(state: Any) -> None:
    if not isinstance(state, Mapping):
        raise ValueError(f"state must be a mapping, got {type(state)!r}")
    missing = sorted(STATE_KEYS - set(state))
    unexpected = sorted(set(state) - STATE_KEYS, key=str)
    if missing or unexpected:
        raise ValueError(f"state keys mismatch: missing={missing}, unexpected={unexpected}")


def _check_counters(state: Mapping[str, Any]) -> tuple[int, int]:
    next_id = check_int("state next_id", state["next_id"], 0)
    return next_id, check_int("state version", state["version"], 0)


def _plain_to_tensor(key: str, value: Any, dtype: torch.dtype) -> Tensor:
    if isinstance(value, Tensor) or not isinstance(value, list):
        raise ValueError(f"plain {key} must be a list, got {type(value)!r}")
    try:
        return torch.tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"plain {key} is not a rectangular numeric list: {err}") from err


def _check_state_rows(state: Mapping[str, Any], dim: int, next_id: int) -> dict[str, Tensor]:
    """Validate the per-row tensors; return CPU copies with rows sorted by ascending id."""
    rows = {}
    for key, dtype in _ROW_DTYPES.items():
        value = state[key]
        if not isinstance(value, Tensor) or value.dtype != dtype:
            got = getattr(value, "dtype", type(value))
            raise ValueError(f"state {key} must be a {dtype} Tensor, got {got}")
        rows[key] = value.detach().to("cpu").clone()
    count = rows["ids"].shape[0] if rows["ids"].ndim == 1 else -1
    for key, value in rows.items():
        expected = (count, dim) if key == "prototypes" else (count,)
        if count < 0 or tuple(value.shape) != expected:
            raise ValueError(f"state {key} has shape {tuple(value.shape)}, expected {expected}")
    _check_row_values(rows, next_id)
    order = torch.argsort(rows["ids"])
    return {key: value[order] for key, value in rows.items()}


def _check_row_values(rows: Mapping[str, Tensor], next_id: int) -> None:
    ids = rows["ids"]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= next_id):
        raise ValueError(f"state ids must lie in [0, next_id={next_id})")
    if torch.unique(ids).numel() != ids.numel():
        raise ValueError("state ids must be unique")
    for key in ("prototypes", "freq_sum"):
        if not bool(torch.isfinite(rows[key]).all()):
            raise ValueError(f"state {key} must be finite (no NaN/Inf values)")
    for key in ("streaks", "freq_sum", "freq_rounds", "round_counts"):
        if rows[key].numel() and bool((rows[key] < 0).any()):
            raise ValueError(f"state {key} must be >= 0")
