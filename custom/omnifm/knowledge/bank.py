"""Global Spectral Knowledge Bank (OmniFM, sec. 3.3), a key -> value memory.

The server keeps a bank ``K`` of entries. An entry's *key* is a spectral prototype (a unit vector
of dimension ``dim`` in the spectral token space; sites retrieve the top-k keys by cosine
similarity); its *value* (``value_dim`` floats, optional) carries what the site that made it
knew about images with that spectrum: for segmentation, the class-conditional means of the
shared encoder's bottleneck features and the class fractions (see
:mod:`omnifm.knowledge.summaries`). So a site retrieves knowledge that other sites computed from
their labelled data, not only a direction it could compute itself.

Sites upload prototype summaries once per round (key, value, member count), computed with the
round's *received* global model, so every upload of a round lives in one embedding space, plus
how often they retrieved each entry id. :meth:`KnowledgeBank.update` applies one round:

1. record the round's retrieval counts (only for entries that existed during the round),
2. prune entries whose retrieval frequency stayed below ``delta`` times the uniform share
   ``1 / N`` for ``prune_window`` consecutive rounds with evidence (so ``delta`` means the same at
   any bank size), and entries not refreshed for ``max_age`` rounds (made with an encoder that
   many rounds old),
3. merge every uploaded prototype into the most similar entry when their cosine is at least
   ``merge_threshold`` (within a round: the member-count-weighted mean; onto an older entry: an
   EMA with weight ``momentum`` for the new upload; keys are re-normalised), else insert it under a
   fresh id (ids are never reused),
4. project every key onto the ball ``||s||_2 <= rho`` and every value onto ``||v||_2 <= value_rho``,
5. cap the bank at ``max_size`` by evicting the least-retrieved entries,
6. bump ``version`` and reset the round counters.

Each entry also records ``refreshed`` (the version in which it was inserted or last merged, so
a site can report how old what it retrieved is) and its ``owner`` (the site that contributed the
most members in that round; sites use it to report how often they retrieve their own knowledge).
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

_CONFIG_KEYS = (
    "dim", "rho", "delta", "prune_window", "max_size", "value_dim", "merge_threshold", "momentum", "max_age",
    "value_rho",
)
_COUNTER_KEYS = ("next_id", "version")
_ROW_DTYPES = {
    "prototypes": torch.float32,
    "values": torch.float32,
    "ids": torch.int64,
    "streaks": torch.int64,
    "freq_sum": torch.float64,
    "freq_rounds": torch.int64,
    "round_counts": torch.int64,
    "refreshed": torch.int64,
    "round_mass": torch.float64,
}
STATE_KEYS = frozenset(_CONFIG_KEYS + _COUNTER_KEYS + tuple(_ROW_DTYPES) + ("owners",))
_MATRIX_ROWS = ("prototypes", "values")
_MAX_NUDGES = 16
_NUDGE = 1.0 - 2.0**-20


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_config(
    dim: Any, rho: Any, delta: Any, prune_window: Any, max_size: Any, value_dim: Any = 0,
    merge_threshold: Any = 0.9, momentum: Any = 0.5, max_age: Any = 3, value_rho: Any = 0.0,
) -> tuple[int, float, float, int, int, int, float, float, int, float]:
    """Return the config as plain Python numbers; raise ``ValueError`` naming the first bad one."""
    dim = check_int("dim", dim)
    if not _is_real(rho) or rho <= 0:
        raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
    if not _is_real(delta) or not 0 <= delta < 1:
        raise ValueError(f"delta must satisfy 0 <= delta < 1, got {delta!r}")
    prune_window = check_int("prune_window", prune_window)
    max_size = check_int("max_size", max_size)
    value_dim = check_int("value_dim", value_dim, 0)
    if not _is_real(merge_threshold) or not -1 <= merge_threshold <= 2:
        raise ValueError(f"merge_threshold must be a cosine in [-1, 1] (or > 1 to never merge), got {merge_threshold!r}")
    if not _is_real(momentum) or not 0 < momentum <= 1:
        raise ValueError(f"momentum must satisfy 0 < momentum <= 1, got {momentum!r}")
    max_age = check_int("max_age", max_age, 0)
    if not _is_real(value_rho) or value_rho < 0:
        raise ValueError(f"value_rho must be a finite number >= 0 (0: no bound), got {value_rho!r}")
    return (
        dim, float(rho), float(delta), prune_window, max_size, value_dim, float(merge_threshold), float(momentum),
        max_age, float(value_rho),
    )


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
    """Global Spectral Knowledge Bank: spectral keys with values, merged and aged across rounds.

    Args:
        dim: Key (spectral prototype) dimension ``d``.
        rho: Radius of the L2 ball every key is projected onto (keys are unit vectors after a
            merge, so ``rho >= 1`` leaves them as they are; retrieval uses cosine similarity).
        delta: Retrieval-frequency threshold, as a fraction of the uniform share ``1 / N``, below
            which an entry counts as unused (0 disables frequency pruning).
        prune_window: Consecutive rounds (with retrievals) below the threshold after which an
            entry is pruned.
        max_size: Maximum number of entries kept after each update.
        value_dim: Length of each entry's value vector (0: keys only).
        merge_threshold: Cosine similarity at or above which an upload is merged into an entry.
        momentum: Weight of a new upload when it is merged into an entry from an earlier round.
        max_age: Entries not refreshed for this many rounds are pruned (0: never).
        value_rho: Bound on the L2 norm of a value vector (0: no bound).

    Attributes:
        prototypes: ``(N, dim)`` float32 copy of the keys (rows sorted by id).
        values: ``(N, value_dim)`` float32 copy of the values.
        ids: ``(N,)`` int64 copy of the unique entry ids, ascending.
        refreshed: ``(N,)`` int64 version in which each entry was inserted or last merged.
        owners: the site that contributed most to each entry ("" when unknown).
        next_id: Id the next inserted entry receives; ids are never reused.
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
        value_dim: int = 0,
        merge_threshold: float = 0.9,
        momentum: float = 0.5,
        max_age: int = 3,
        value_rho: float = 0.0,
    ) -> None:
        config = _check_config(
            dim, rho, delta, prune_window, max_size, value_dim, merge_threshold, momentum, max_age, value_rho
        )
        self._dim, self._rho, self._delta, self._prune_window, self._max_size = config[:5]
        self._value_dim, self._merge_threshold, self._momentum, self._max_age, self._value_rho = config[5:]
        self._next_id = 0
        self._version = 0
        self._set_rows({name: torch.empty((0, self._row_width(name)) if name in _MATRIX_ROWS else 0, dtype=dtype)
                        for name, dtype in _ROW_DTYPES.items()})
        self._owners: list[str] = []

    def _row_width(self, name: str) -> int:
        return self._dim if name == "prototypes" else self._value_dim

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

    @property
    def values(self) -> Tensor:
        return self._values.clone()

    @property
    def value_dim(self) -> int:
        return self._value_dim

    @property
    def refreshed(self) -> Tensor:
        return self._refreshed.clone()

    @property
    def owners(self) -> list[str]:
        return list(self._owners)

    def entry_info(self, ids: Tensor) -> tuple[list[str], Tensor]:
        """Owners and ages (``version - refreshed``, in rounds) of the entries with these ids.

        Args:
            ids: ``(...)`` int64 ids of entries in the bank (e.g. from :meth:`retrieve`).

        Returns:
            ``(owners, ages)``: a flat list of owner names and a flat int64 tensor of ages.
        """
        rows = self._rows_of(ids)
        return [self._owners[r] for r in rows.tolist()], self._version - self._refreshed[rows]

    def _rows_of(self, ids: Tensor) -> Tensor:
        """Flat int64 row indices of the entries with these ids (rows are sorted by id).

        Raises:
            ValueError: an id that is not in the bank.
        """
        flat = ids.reshape(-1).to(device="cpu", dtype=torch.int64)
        rows = torch.searchsorted(self._ids, flat).clamp(max=max(len(self) - 1, 0))
        if flat.numel() and (len(self) == 0 or not bool(torch.equal(self._ids[rows], flat))):
            raise ValueError("ids must be ids of entries in the bank")
        return rows

    def __len__(self) -> int:
        return int(self._ids.numel())

    def __repr__(self) -> str:
        return (
            f"KnowledgeBank(dim={self._dim}, size={len(self)}, version={self._version}, "
            f"rho={self._rho}, delta={self._delta}, prune_window={self._prune_window}, "
            f"max_size={self._max_size}, value_dim={self._value_dim}, merge_threshold={self._merge_threshold}, "
            f"momentum={self._momentum}, max_age={self._max_age}, value_rho={self._value_rho})"
        )

    # ------------------------------------------------------------------ row bookkeeping
    def _rows(self) -> dict[str, Tensor]:
        return {
            "prototypes": self._prototypes,
            "values": self._values,
            "ids": self._ids,
            "streaks": self._streaks,
            "freq_sum": self._freq_sum,
            "freq_rounds": self._freq_rounds,
            "round_counts": self._round_counts,
            "refreshed": self._refreshed,
            "round_mass": self._round_mass,
        }

    def _set_rows(self, rows: Mapping[str, Tensor]) -> None:
        self._prototypes, self._values, self._ids = rows["prototypes"], rows["values"], rows["ids"]
        self._streaks, self._freq_sum = rows["streaks"], rows["freq_sum"]
        self._freq_rounds, self._round_counts = rows["freq_rounds"], rows["round_counts"]
        self._refreshed, self._round_mass = rows["refreshed"], rows["round_mass"]

    def _keep(self, mask: Tensor) -> None:
        self._set_rows({name: value[mask] for name, value in self._rows().items()})
        self._owners = [owner for owner, keep in zip(self._owners, mask.tolist()) if keep]

    def _check_rows(self, prototypes: Any, name: str, width: int | None = None) -> Tensor:
        """Validate an ``(M, width)`` finite float tensor (default width ``dim``); return a float32 CPU copy."""
        width = self._dim if width is None else width
        if not isinstance(prototypes, Tensor) or not prototypes.is_floating_point():
            raise ValueError(f"{name} must be a floating-point Tensor, got {type(prototypes)!r}")
        if prototypes.ndim != 2 or prototypes.shape[1] != width:
            shape = tuple(prototypes.shape)
            raise ValueError(f"{name} must have shape (M, {width}), got {shape}")
        rows = prototypes.detach().to(device="cpu", dtype=torch.float32).clone()
        if not bool(torch.isfinite(rows).all()):
            raise ValueError(f"{name} must be finite (no NaN/Inf values)")
        return rows

    def _check_upload(
        self, prototypes: Tensor, values: Tensor | None, owners: list[str] | None, masses: Tensor | None,
        name: str = "prototypes",
    ) -> tuple[Tensor, Tensor, list[str], Tensor]:
        """Validated ``(keys, values, owners, masses)`` of an upload of ``M`` entries."""
        keys = self._check_rows(prototypes, name)
        count = keys.shape[0]
        if values is None:
            if self._value_dim:
                raise ValueError(f"this bank holds values of length {self._value_dim}: upload them with the prototypes")
            values = torch.zeros(count, 0)
        values = self._check_rows(values, "values", self._value_dim)
        owners = [""] * count if owners is None else [str(o) for o in owners]
        masses = torch.ones(count, dtype=torch.float64) if masses is None else torch.as_tensor(masses, dtype=torch.float64)
        if values.shape[0] != count or len(owners) != count or masses.shape != (count,):
            raise ValueError(
                f"an upload of {count} prototypes needs {count} values, owners and masses, got "
                f"{values.shape[0]}, {len(owners)} and {tuple(masses.shape)}"
            )
        if not bool(torch.isfinite(masses).all()) or (masses.numel() and float(masses.min()) <= 0):
            raise ValueError("masses (member counts) must be finite and > 0")
        return keys, values, owners, masses

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
    def insert(
        self,
        prototypes: Tensor,
        values: Tensor | None = None,
        owners: list[str] | None = None,
        masses: Tensor | None = None,
    ) -> Tensor:
        """Append entries under fresh ids (never reused); new rows start with a clean streak.

        Args:
            prototypes: ``(M, dim)`` finite floating keys (``M`` may be 0).
            values: ``(M, value_dim)`` values (required when ``value_dim > 0``).
            owners: ``M`` site names (default "").
            masses: ``(M,)`` member counts (default 1 each).

        Returns:
            ``(M,)`` int64 ids assigned to the new entries.

        Examples::

            >>> bank = KnowledgeBank(dim=3)
            >>> bank.insert(torch.ones(2, 3)).tolist()
            [0, 1]
        """
        keys, values, owners, masses = self._check_upload(prototypes, values, owners, masses)
        count = keys.shape[0]
        new_ids = torch.arange(self._next_id, self._next_id + count, dtype=torch.int64)
        self._next_id += count
        zeros = torch.zeros(count, dtype=torch.int64)
        fresh = {
            "prototypes": keys,
            "values": values,
            "ids": new_ids,
            "streaks": zeros,
            "freq_sum": torch.zeros(count, dtype=torch.float64),
            "freq_rounds": zeros,
            "round_counts": zeros,
            "refreshed": torch.full((count,), self._version, dtype=torch.int64),
            "round_mass": masses.clone(),
        }
        self._set_rows({name: torch.cat([old, fresh[name]]) for name, old in self._rows().items()})
        self._owners += owners
        return new_ids.clone()

    def absorb(
        self,
        prototypes: Tensor,
        values: Tensor | None = None,
        owners: list[str] | None = None,
        masses: Tensor | None = None,
    ) -> tuple[int, int]:
        """Merge each uploaded entry into its most similar entry, or insert it (see the module docstring).

        Uploads are taken in the given order (the server sorts them by site). Merging into an
        entry refreshed in this round is the member-count-weighted mean; into an older entry an
        EMA with weight ``momentum`` for the upload. The merged key is re-normalised to unit norm.

        Returns:
            ``(merged, inserted)`` counts.

        Examples::

            >>> bank = KnowledgeBank(dim=2, merge_threshold=0.9)
            >>> bank.absorb(torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]]))
            (1, 2)
        """
        keys, values, owners, masses = self._check_upload(prototypes, values, owners, masses)
        merged = inserted = 0
        for row in range(keys.shape[0]):
            target = self._nearest(keys[row])
            if target is None:
                self.insert(keys[row : row + 1], values[row : row + 1], owners[row : row + 1], masses[row : row + 1])
                inserted += 1
            else:
                self._merge(target, keys[row], values[row], owners[row], float(masses[row]))
                merged += 1
        return merged, inserted

    def _nearest(self, key: Tensor) -> int | None:
        """Row of the entry most similar to ``key`` if its cosine reaches ``merge_threshold``."""
        if len(self) == 0 or self._merge_threshold > 1:
            return None
        sims = F.normalize(self._prototypes, dim=1) @ F.normalize(key, dim=0)
        row = int(torch.argmax(sims))
        return row if float(sims[row]) >= self._merge_threshold else None

    def _merge(self, row: int, key: Tensor, value: Tensor, owner: str, mass: float) -> None:
        fresh = int(self._refreshed[row]) == self._version
        weight = mass / (float(self._round_mass[row]) + mass) if fresh else self._momentum
        if not fresh or mass > float(self._round_mass[row]):
            self._owners[row] = owner
        self._round_mass[row] = (self._round_mass[row] + mass) if fresh else mass
        self._prototypes[row] = F.normalize((1 - weight) * self._prototypes[row] + weight * key, dim=0)
        self._values[row] = (1 - weight) * self._values[row] + weight * value
        self._refreshed[row] = self._version

    def values_for(self, ids: Tensor) -> Tensor:
        """Values ``(*ids.shape, value_dim)`` of the entries with these ids (e.g. from :meth:`retrieve`)."""
        return self._values[self._rows_of(ids)].reshape(*ids.shape, self._value_dim).to(ids.device)

    def project(self) -> None:
        """Project every key onto ``||s||_2 <= rho`` and value onto ``||v||_2 <= value_rho`` (rows inside are untouched).

        Examples::

            >>> bank = KnowledgeBank(dim=2, rho=1.0)
            >>> _ = bank.insert(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
            >>> bank.project()
            >>> bank.prototypes.tolist()
            [[0.6000000238418579, 0.800000011920929], [0.30000001192092896, 0.4000000059604645]]
        """
        self._prototypes = _project_to_ball(self._prototypes, self._rho)
        if self._value_rho > 0 and self._value_dim:
            self._values = _project_to_ball(self._values, self._value_rho)

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
        self._streaks = torch.where(freq * len(self) < self._delta, self._streaks + 1, 0)
        self._freq_sum = self._freq_sum + freq
        self._freq_rounds = self._freq_rounds + 1
        self._round_counts = torch.zeros_like(self._round_counts)
        return True

    def prune(self) -> list[int]:
        """Close the round's evidence and remove persistently unused prototypes.

        The round frequency of a prototype is its recorded count divided by the round's total
        (known-id) retrievals. Frequencies below ``delta / N`` (``delta`` times the uniform share
        of a bank of ``N`` entries) extend its streak, others reset it; a streak reaching
        ``prune_window`` removes the prototype. A round with no retrievals is no evidence:
        streaks are left as they are and nothing is pruned by frequency. The recorded counts
        are consumed (zeroed), so calling ``prune`` twice does not count a round twice. Entries
        not refreshed for ``max_age`` rounds are removed too (see :meth:`prune_stale`).

        Returns:
            Ids of the removed prototypes, ascending.

        Examples::

            >>> bank = KnowledgeBank(dim=2, delta=0.4, prune_window=1)
            >>> _ = bank.insert(torch.eye(2))
            >>> _ = bank.record_retrievals({0: 10})
            >>> bank.prune()
            [1]
        """
        removed = self.prune_stale()
        if not self._fold_round():
            return removed
        doomed = self._streaks >= self._prune_window
        removed += self._ids[doomed].tolist()
        self._keep(~doomed)
        return sorted(removed)

    def prune_stale(self) -> list[int]:
        """Remove entries not refreshed for ``max_age`` rounds (their keys came from an old encoder).

        An entry refreshed in the update that started at version ``v`` has age ``version - v``:
        1 right after that update, i.e. the number of rounds since the uploads that made it. The
        retrieval counts recorded for a removed entry are dropped with it.

        Returns:
            Ids of the removed entries, ascending.

        Examples::

            >>> bank = KnowledgeBank(dim=2, max_age=1)
            >>> _ = bank.insert(torch.eye(2))
            >>> bank.update(None, None)["size"], bank.prune_stale()
            (2, [0, 1])
        """
        if not self._max_age:
            return []
        doomed = (self._version - self._refreshed) >= self._max_age
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
        new_values: Tensor | None = None,
        owners: list[str] | None = None,
        masses: Tensor | None = None,
    ) -> dict[str, int]:
        """Run one server round: record -> prune -> merge/insert -> project -> cap -> version += 1.

        Inputs are validated before anything changes, so a rejected update leaves the bank as
        it was.

        Args:
            new_prototypes: ``(M, dim)`` uploaded keys, or None.
            retrieval_counts: ``{id: count}`` retrievals made during the round, or None.
            new_values: ``(M, value_dim)`` uploaded values (required when ``value_dim > 0``).
            owners: ``M`` uploading site names.
            masses: ``(M,)`` member counts of the uploaded prototypes.

        Returns:
            Plain-int summary with keys ``inserted``, ``merged``, ``pruned``, ``evicted``,
            ``size``, ``version`` and ``ignored_retrievals`` (counts for ids unknown to the bank).

        Examples::

            >>> bank = KnowledgeBank(dim=2)
            >>> summary = bank.update(torch.eye(2).repeat(2, 1), None)
            >>> summary["inserted"], summary["merged"], summary["size"], summary["version"]
            (2, 2, 2, 1)
        """
        upload = None
        if new_prototypes is not None:
            upload = self._check_upload(new_prototypes, new_values, owners, masses, "new_prototypes")
        elif retrieval_counts is not None and not isinstance(retrieval_counts, Mapping):
            raise ValueError(f"counts must be a mapping of id -> count, got {type(retrieval_counts)!r}")
        ignored = self.record_retrievals(retrieval_counts) if retrieval_counts is not None else 0
        pruned = self.prune()
        merged, inserted = (0, 0) if upload is None else self.absorb(*upload)
        self.project()
        evicted = self.cap()
        self._version += 1
        self._round_counts = torch.zeros_like(self._round_counts)
        return {
            "inserted": inserted,
            "merged": merged,
            "pruned": len(pruned),
            "evicted": len(evicted),
            "size": len(self),
            "version": self._version,
            "ignored_retrievals": ignored,
        }

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Full bank state as tensors and Python ints/floats (``weights_only``-loadable).

        Keys: config (see ``__init__``), counters (``next_id``, ``version``), ``owners`` (a list of
        N strings) and per-row tensors ``prototypes`` (N, dim) and ``values`` (N, value_dim)
        float32, ``ids``, ``streaks``, ``freq_rounds``, ``round_counts``, ``refreshed`` (N,) int64
        and ``freq_sum``, ``round_mass`` (N,) float64.

        Examples::

            >>> bank = KnowledgeBank(dim=2)
            >>> sorted(bank.state_dict())[:3]
            ['delta', 'dim', 'freq_rounds']
        """
        state: dict[str, Any] = dict(zip(_CONFIG_KEYS, self._config()))
        state.update({"next_id": self._next_id, "version": self._version, "owners": list(self._owners)})
        state.update({name: value.clone() for name, value in self._rows().items()})
        return state

    def _config(self) -> tuple:
        return (
            self._dim, self._rho, self._delta, self._prune_window, self._max_size, self._value_dim,
            self._merge_threshold, self._momentum, self._max_age, self._value_rho,
        )

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
        config = _check_config(*(state[key] for key in _CONFIG_KEYS))
        next_id, version = _check_counters(state)
        rows, order = _check_state_rows(state, self._dim, config[5], next_id)
        owners = state["owners"]
        if not isinstance(owners, list) or len(owners) != len(order) or not all(isinstance(o, str) for o in owners):
            raise ValueError(f"state owners must be a list of {len(order)} strings")
        self._rho, self._delta, self._prune_window, self._max_size = config[1:5]
        self._value_dim, self._merge_threshold, self._momentum, self._max_age, self._value_rho = config[5:]
        self._next_id, self._version = next_id, version
        self._set_rows(rows)
        self._owners = [owners[i] for i in order.tolist()]

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
        for key, width in (("prototypes", plain["dim"]), ("values", plain["value_dim"])):
            if state[key].numel() == 0 and is_int(width) and width >= 0:
                state[key] = state[key].reshape(len(plain["ids"]) if isinstance(plain["ids"], list) else 0, width)
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


def _check_state_rows(
    state: Mapping[str, Any], dim: int, value_dim: int, next_id: int
) -> tuple[dict[str, Tensor], Tensor]:
    """Validate the per-row tensors; return CPU copies with rows sorted by ascending id, and that order."""
    rows = {}
    for key, dtype in _ROW_DTYPES.items():
        value = state[key]
        if not isinstance(value, Tensor) or value.dtype != dtype:
            got = getattr(value, "dtype", type(value))
            raise ValueError(f"state {key} must be a {dtype} Tensor, got {got}")
        rows[key] = value.detach().to("cpu").clone()
    count = rows["ids"].shape[0] if rows["ids"].ndim == 1 else -1
    for key, value in rows.items():
        expected = {"prototypes": (count, dim), "values": (count, value_dim)}.get(key, (count,))
        if count < 0 or tuple(value.shape) != expected:
            raise ValueError(f"state {key} has shape {tuple(value.shape)}, expected {expected}")
    _check_row_values(rows, next_id)
    order = torch.argsort(rows["ids"])
    return {key: value[order] for key, value in rows.items()}, order


def _check_row_values(rows: Mapping[str, Tensor], next_id: int) -> None:
    ids = rows["ids"]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= next_id):
        raise ValueError(f"state ids must lie in [0, next_id={next_id})")
    if torch.unique(ids).numel() != ids.numel():
        raise ValueError("state ids must be unique")
    for key in ("prototypes", "values", "freq_sum", "round_mass"):
        if not bool(torch.isfinite(rows[key]).all()):
            raise ValueError(f"state {key} must be finite (no NaN/Inf values)")
    for key in ("streaks", "freq_sum", "freq_rounds", "round_counts", "refreshed", "round_mass"):
        if rows[key].numel() and bool((rows[key] < 0).any()):
            raise ValueError(f"state {key} must be >= 0")
