"""Tests for the Global Spectral Knowledge Bank (omnifm.knowledge.bank)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from omnifm.knowledge import KnowledgeBank

DIM = 8
# The frequency-pruning mechanics are tested with merging and age pruning off (each has its own tests).
LEGACY = {"merge_threshold": 2.0, "max_age": 0}


def _bank(n: int = 0, dim: int = DIM, seed: int = 0, **config) -> KnowledgeBank:
    bank = KnowledgeBank(dim, **{**LEGACY, **config})
    if n:
        gen = torch.Generator().manual_seed(seed)
        bank.insert(torch.randn(n, dim, generator=gen))
    return bank


def _evolved_bank() -> KnowledgeBank:
    """A bank with history: insertions, retrievals, pruning, projection and a cap."""
    bank = KnowledgeBank(DIM, rho=1.5, delta=0.1, prune_window=2, max_size=6, **LEGACY)
    gen = torch.Generator().manual_seed(1)
    for round_ in range(4):
        ids = bank.ids.tolist()
        counts = {pid: (pid * 7 + round_) % 5 for pid in ids}
        bank.update(3 * torch.randn(3, DIM, generator=gen), counts)
    bank.record_retrievals({int(bank.ids[0]): 2})  # pending round counts are state too
    return bank


def _assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype, key
            assert torch.equal(a[key], b[key]), key
        else:
            assert type(a[key]) is type(b[key]) and a[key] == b[key], key


# --------------------------------------------------------------------------- construction
def test_empty_bank_defaults():
    bank = KnowledgeBank(DIM)
    assert len(bank) == 0 and bank.version == 0 and bank.next_id == 0
    assert bank.prototypes.shape == (0, DIM) and bank.prototypes.dtype == torch.float32
    assert bank.ids.shape == (0,) and bank.ids.dtype == torch.int64
    assert (bank.rho, bank.delta, bank.prune_window, bank.max_size) == (1.0, 0.05, 3, 64)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": -3}, "dim"),
        ({"dim": 2.0}, "dim"),
        ({"dim": True}, "dim"),
        ({"rho": 0.0}, "rho"),
        ({"rho": -1.0}, "rho"),
        ({"rho": math.inf}, "rho"),
        ({"rho": math.nan}, "rho"),
        ({"delta": -0.01}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"delta": math.nan}, "delta"),
        ({"prune_window": 0}, "prune_window"),
        ({"prune_window": 1.5}, "prune_window"),
        ({"max_size": 0}, "max_size"),
        ({"max_size": "8"}, "max_size"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    args = {"dim": DIM, **kwargs}
    with pytest.raises(ValueError, match=match):
        KnowledgeBank(**args)


def test_constructor_stores_numpy_ints_as_python_ints():
    bank = KnowledgeBank(np.int64(DIM), prune_window=np.int32(2), max_size=np.int64(5))
    state = bank.state_dict()
    assert [type(state[key]) for key in ("dim", "prune_window", "max_size")] == [int, int, int]
    assert (bank.dim, bank.prune_window, bank.max_size) == (DIM, 2, 5)


# --------------------------------------------------------------------------- insert
def test_insert_assigns_sequential_ids_and_float32_copies():
    bank = KnowledgeBank(DIM)
    src = torch.randn(3, DIM, dtype=torch.float64)
    assert bank.insert(src).tolist() == [0, 1, 2]
    assert bank.insert(torch.randn(2, DIM)).tolist() == [3, 4]
    assert bank.insert(torch.empty(0, DIM)).tolist() == []
    assert len(bank) == 5 and bank.next_id == 5
    assert torch.equal(bank.prototypes[:3], src.float())
    src.zero_()
    assert bank.prototypes[:3].abs().sum() > 0  # the bank holds its own copy


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (torch.tensor([[math.nan] + [0.0] * (DIM - 1)]), "finite"),
        (torch.full((2, DIM), math.inf), "finite"),
        (torch.full((1, DIM), -math.inf), "finite"),
        (torch.zeros(2, DIM + 1), "shape"),
        (torch.zeros(DIM), "shape"),
        (torch.zeros(1, 2, DIM), "shape"),
        (torch.zeros(2, DIM, dtype=torch.int64), "floating"),
        ([[0.0] * DIM], "floating"),
    ],
)
def test_insert_rejects_bad_prototypes(value, match):
    bank = _bank(2)
    before = bank.state_dict()
    with pytest.raises(ValueError, match=match):
        bank.insert(value)
    _assert_states_equal(bank.state_dict(), before)


def test_update_rejects_nan_prototypes_without_side_effects():
    bank = _bank(3)
    bank.record_retrievals({0: 1})
    before = bank.state_dict()
    bad = torch.randn(2, DIM)
    bad[1, 3] = math.nan
    with pytest.raises(ValueError, match="new_prototypes"):
        bank.update(bad, {1: 4})
    _assert_states_equal(bank.state_dict(), before)


# --------------------------------------------------------------------------- retrieval
def _brute_force_top_k(bank: KnowledgeBank, queries: torch.Tensor, k: int) -> list[list[int]]:
    protos = bank.prototypes.double().tolist()
    ids = bank.ids.tolist()
    result = []
    for q in queries.double().tolist():
        qn = math.sqrt(sum(x * x for x in q))
        sims = []
        for pid, p in zip(ids, protos):
            pn = math.sqrt(sum(x * x for x in p))
            sims.append((-sum(a * b for a, b in zip(q, p)) / (qn * pn), pid))
        result.append([pid for _, pid in sorted(sims)[:k]])
    return result


@pytest.mark.parametrize(
    ("n", "k"), [(0, 1), (0, 4), (1, 1), (1, 3), (5, 1), (5, 3), (5, 5), (5, 9), (40, 7)]
)
def test_retrieve_matches_brute_force_top_k(n, k):
    bank = _bank(n, seed=n)
    queries = torch.randn(6, DIM)
    protos, ids = bank.retrieve(queries, k)
    top = min(k, n)
    assert protos.shape == (6, top, DIM) and ids.shape == (6, top) and ids.dtype == torch.int64
    assert ids.tolist() == _brute_force_top_k(bank, queries, k)
    row_of = {pid: row for row, pid in enumerate(bank.ids.tolist())}
    for b in range(6):
        for j in range(top):
            assert torch.equal(protos[b, j], bank.prototypes[row_of[int(ids[b, j])]])


def test_retrieve_after_removals_still_matches_brute_force():
    bank = _bank(12, max_size=7)
    bank.update(torch.randn(4, DIM), {i: i for i in range(12)})
    queries = torch.randn(5, DIM)
    assert bank.retrieve(queries, 4)[1].tolist() == _brute_force_top_k(bank, queries, 4)


def test_retrieve_breaks_exact_ties_by_lower_id():
    bank = KnowledgeBank(4)
    e0, e1 = torch.eye(4)[0], torch.eye(4)[1]
    bank.insert(torch.stack([e1, e0, e1, e0, e0]))  # ids 0..4; e0 at ids 1, 3, 4
    _, ids = bank.retrieve(torch.stack([e0, e1]), k=4)
    assert ids.tolist() == [[1, 3, 4, 0], [0, 2, 1, 3]]


@pytest.mark.parametrize("k", [40, 300])
def test_retrieve_tie_break_holds_for_large_banks(k):
    """300 rows drawn from 4 distinct vectors: many exact ties (an unstable sort fails here)."""
    gen = torch.Generator().manual_seed(5)
    distinct = torch.randn(4, DIM, generator=gen)
    choice = torch.randint(0, 4, (300,), generator=gen)
    bank = KnowledgeBank(DIM, max_size=300)
    bank.insert(distinct[choice])
    queries = torch.randn(3, DIM, generator=gen)
    _, ids = bank.retrieve(queries, k)
    sims = queries.double() @ torch.nn.functional.normalize(distinct.double(), dim=1).T
    for b in range(3):
        groups = torch.argsort(sims[b], descending=True).tolist()
        expected = [i for g in groups for i in range(300) if choice[i] == g]
        assert ids[b].tolist() == expected[:k]


def test_retrieve_is_detached_and_follows_query_dtype():
    bank = _bank(4)
    queries = torch.randn(3, DIM, dtype=torch.float64, requires_grad=True)
    protos, ids = bank.retrieve(queries, 2)
    assert not protos.requires_grad and protos.grad_fn is None
    assert protos.dtype == torch.float64 and protos.device == queries.device
    protos.add_(100.0)  # a copy: the bank is not modified
    assert bank.prototypes.abs().max() < 100.0
    empty_protos, empty_ids = KnowledgeBank(DIM).retrieve(queries, 3)
    assert empty_protos.shape == (3, 0, DIM) and empty_protos.dtype == torch.float64
    assert empty_ids.shape == (3, 0) and empty_ids.dtype == torch.int64


@pytest.mark.parametrize(
    ("queries", "k", "match"),
    [
        (torch.randn(2, DIM), 0, "k"),
        (torch.randn(2, DIM), -1, "k"),
        (torch.randn(2, DIM), 2.0, "k"),
        (torch.randn(2, DIM + 1), 1, "queries"),
        (torch.randn(DIM), 1, "queries"),
        (torch.ones(2, DIM, dtype=torch.int64), 1, "queries"),
    ],
)
def test_retrieve_rejects_bad_arguments(queries, k, match):
    with pytest.raises(ValueError, match=match):
        _bank(3).retrieve(queries, k)


# --------------------------------------------------------------------------- projection
@pytest.mark.parametrize("rho", [0.5, 1.0, 3.0])
def test_update_projects_every_prototype_into_the_ball(rho):
    bank = KnowledgeBank(DIM, rho=rho)
    gen = torch.Generator().manual_seed(3)
    scales = torch.tensor([0.01, 0.2, 0.9, 1.0, 2.0, 10.0, 1e4]).repeat_interleave(5)
    directions = torch.randn(scales.numel(), DIM, generator=gen)
    directions = directions / torch.linalg.vector_norm(directions, dim=1, keepdim=True)
    raw = directions * scales.unsqueeze(1) * rho
    bank.update(raw, None)
    norms = torch.linalg.vector_norm(bank.prototypes, dim=1)
    assert bool((norms <= rho).all())
    inside = torch.linalg.vector_norm(raw, dim=1) <= rho
    assert inside.any() and (~inside).any()
    assert torch.equal(bank.prototypes[inside], raw[inside])  # bit-identical
    outside = bank.prototypes[~inside]
    outside_norms = torch.linalg.vector_norm(outside, dim=1)
    assert torch.allclose(outside_norms, torch.full_like(outside_norms, rho), rtol=1e-5)
    cos = torch.nn.functional.cosine_similarity(outside, raw[~inside], dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-6)


def test_project_handles_zero_rows_and_empty_bank():
    KnowledgeBank(DIM).project()
    bank = KnowledgeBank(DIM)
    bank.insert(torch.zeros(2, DIM))
    bank.project()
    assert torch.equal(bank.prototypes, torch.zeros(2, DIM))


# --------------------------------------------------------------------------- pruning
def test_unretrieved_prototype_is_pruned_after_exactly_prune_window_rounds():
    bank = KnowledgeBank(DIM, delta=0.1, prune_window=3)
    popular, unused = bank.insert(torch.randn(2, DIM)).tolist()
    for _ in range(2):
        assert bank.update(None, {popular: 50})["pruned"] == 0
    assert unused in bank.ids.tolist()
    assert bank.update(None, {popular: 50})["pruned"] == 1
    assert bank.ids.tolist() == [popular]


def test_prune_threshold_is_strict_below_delta():
    bank = KnowledgeBank(DIM, delta=0.3, prune_window=1, **LEGACY)  # threshold 0.3 / 3 entries = 0.1
    at, below, above = bank.insert(torch.randn(3, DIM)).tolist()
    bank.record_retrievals({at: 10, below: 9, above: 81})  # frequencies 0.10, 0.09, 0.81
    assert bank.prune() == [below]
    assert bank.ids.tolist() == [at, above]


def test_prototype_retrieved_often_enough_is_kept_forever():
    bank = KnowledgeBank(DIM, delta=0.6, prune_window=2, **LEGACY)  # threshold 0.6 / 3 = 0.2
    a, b, c = bank.insert(torch.randn(3, DIM)).tolist()
    for _ in range(10):
        bank.update(None, {a: 3, b: 1, c: 1})  # each >= 0.2
    assert bank.ids.tolist() == [a, b, c]


def test_rounds_without_retrievals_prune_nothing_and_keep_streaks():
    bank = KnowledgeBank(DIM, delta=0.9, prune_window=2, **LEGACY)
    used, unused = bank.insert(torch.randn(2, DIM)).tolist()
    assert bank.update(None, {used: 4})["pruned"] == 0  # streak 1
    for _ in range(5):
        assert bank.update(None, None)["pruned"] == 0  # no evidence: no change
        assert bank.update(None, {})["pruned"] == 0
        assert bank.update(None, {unused: 0, 12345: 9})["pruned"] == 0  # only unknown ids
    assert bank.update(None, {used: 4})["pruned"] == 1  # second evidence round
    assert bank.ids.tolist() == [used]


def test_streak_resets_when_frequency_recovers():
    bank = KnowledgeBank(DIM, delta=0.6, prune_window=2, **LEGACY)  # threshold 0.6 / 2 = 0.3
    a, b = bank.insert(torch.randn(2, DIM)).tolist()
    for counts in ({a: 9}, {a: 1, b: 1}, {a: 9}, {a: 1, b: 1}, {a: 9}):
        assert bank.update(None, counts)["pruned"] == 0
    assert bank.update(None, {a: 9})["pruned"] == 1


def test_new_prototypes_start_with_a_clean_streak_and_no_same_round_counts():
    bank = KnowledgeBank(DIM, delta=0.9, prune_window=2, **LEGACY)
    (old,) = bank.insert(torch.randn(1, DIM)).tolist()
    (unused,) = bank.insert(torch.randn(1, DIM)).tolist()
    bank.update(None, {old: 5})  # unused: streak 1
    summary = bank.update(torch.randn(1, DIM), {old: 5, bank.next_id: 7})
    assert summary["pruned"] == 1 and summary["ignored_retrievals"] == 7
    (new,) = bank.ids.tolist()[1:]
    assert bank.update(None, {old: 5})["pruned"] == 0  # new: streak 1 only
    assert bank.update(None, {old: 5})["pruned"] == 1
    assert bank.ids.tolist() == [old] and new not in bank.ids.tolist()


def test_delta_zero_never_prunes():
    bank = KnowledgeBank(DIM, delta=0.0, prune_window=1, **LEGACY)
    a, _ = bank.insert(torch.randn(2, DIM)).tolist()
    for _ in range(5):
        bank.update(None, {a: 3})
    assert len(bank) == 2


def test_record_retrievals_returns_ignored_count_and_accumulates():
    bank = KnowledgeBank(DIM, delta=0.6, prune_window=1, **LEGACY)  # threshold 0.6 / 2 = 0.3
    a, b = bank.insert(torch.randn(2, DIM)).tolist()
    assert bank.record_retrievals({a: 1, 77: 4, torch.tensor(b): np.int64(1)}) == 4
    assert bank.record_retrievals({b: 2}) == 0
    assert bank.prune() == [a]  # frequencies 1/4 < 0.3 and 3/4; the unknown 4 are not counted
    assert bank.ids.tolist() == [b]
    assert bank.prune() == []  # the round's counts were consumed: no evidence left


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        ([(0, 1)], "mapping"),
        ({0: -1}, ">= 0"),
        ({0: 1.5}, "int"),
        ({"0": 1}, "int"),
    ],
)
def test_record_retrievals_rejects_bad_counts(counts, match):
    bank = _bank(2)
    with pytest.raises(ValueError, match=match):
        bank.record_retrievals(counts)
    with pytest.raises(ValueError, match=match):
        bank.update(None, counts)
    assert bank.version == 0


# --------------------------------------------------------------------------- cap
def test_cap_evicts_least_retrieved():
    bank = KnowledgeBank(DIM, delta=0.0, max_size=3)
    ids = bank.insert(torch.randn(5, DIM)).tolist()
    bank.record_retrievals({ids[0]: 5, ids[1]: 1, ids[2]: 9, ids[3]: 0, ids[4]: 3})
    bank.prune()
    assert bank.cap() == [ids[3], ids[1]]
    assert bank.ids.tolist() == [ids[0], ids[2], ids[4]]
    assert bank.cap() == []


def test_cap_uses_mean_frequency_and_breaks_ties_by_oldest_id():
    bank = KnowledgeBank(DIM, delta=0.0, max_size=2)
    a, b, c, d = bank.insert(torch.randn(4, DIM)).tolist()
    bank.record_retrievals({a: 1, b: 1, c: 2})
    bank.prune()
    bank.record_retrievals({a: 1, b: 1, c: 0, d: 2})
    bank.prune()  # means: a 0.25, b 0.25, c 0.25, d 0.25 (d had one evidence round at 0.5)
    assert bank.mean_frequencies().tolist() == [0.25, 0.25, 0.25, 0.25]
    assert bank.cap() == [a, b]


def test_update_caps_size_and_newcomers_without_evidence_go_first():
    bank = KnowledgeBank(DIM, delta=0.0, max_size=4)
    old = bank.insert(torch.randn(3, DIM)).tolist()
    summary = bank.update(torch.randn(3, DIM), {old[0]: 2, old[1]: 1, old[2]: 1})
    assert summary["inserted"] == 3 and summary["evicted"] == 2 and summary["size"] == 4
    assert bank.ids.tolist() == old + [5]  # unseen newcomers (mean 0), oldest first: 3, 4


# --------------------------------------------------------------------------- ids, version, summary
def test_ids_are_never_reused():
    bank = KnowledgeBank(DIM, delta=0.5, prune_window=1, max_size=3)
    seen: set[int] = set()
    for round_ in range(8):
        live = bank.ids.tolist()
        new_ids = set(range(bank.next_id, bank.next_id + 2))
        assert not new_ids & seen
        bank.update(torch.randn(2, DIM), {pid: round_ + i for i, pid in enumerate(live)})
        seen |= new_ids
        assert len(set(bank.ids.tolist())) == len(bank)
        assert set(bank.ids.tolist()) <= seen
    reloaded = KnowledgeBank.from_state_dict(bank.state_dict())
    assert int(reloaded.insert(torch.randn(1, DIM))[0]) == max(seen) + 1


def test_version_increments_once_per_update_only():
    bank = KnowledgeBank(DIM)
    bank.insert(torch.randn(2, DIM))
    bank.record_retrievals({0: 1})
    bank.prune()
    bank.project()
    bank.cap()
    bank.retrieve(torch.randn(1, DIM), 1)
    assert bank.version == 0
    for expected in range(1, 5):
        assert bank.update(None, None)["version"] == expected
        assert bank.version == expected


def test_update_summary_is_plain_ints():
    summary = _bank(3).update(torch.randn(2, DIM), {0: 3, 9: 1})
    assert summary == {
        "inserted": 2, "merged": 0, "pruned": 0, "evicted": 0, "size": 5, "version": 1, "ignored_retrievals": 1
    }
    assert all(type(value) is int for value in summary.values())


# --------------------------------------------------------------------------- persistence
def test_state_dict_round_trips_through_torch_save_weights_only():
    bank = _evolved_bank()
    buffer = io.BytesIO()
    torch.save(bank.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    clone = KnowledgeBank.from_state_dict(loaded)
    _assert_states_equal(clone.state_dict(), bank.state_dict())
    queries = torch.randn(7, DIM)
    for got, want in zip(clone.retrieve(queries, 3), bank.retrieve(queries, 3)):
        assert torch.equal(got, want)
    new = torch.randn(2, DIM)
    counts = {int(pid): 3 for pid in bank.ids[:2]}
    assert clone.update(new, counts) == bank.update(new, counts)  # identical futures
    _assert_states_equal(clone.state_dict(), bank.state_dict())


def test_state_dict_contains_only_tensors_and_numbers():
    state = _evolved_bank().state_dict()
    assert all(type(v) in (int, float) or isinstance(v, torch.Tensor) for k, v in state.items() if k != "owners")
    assert all(type(o) is str for o in state["owners"]), "owners are site names (weights_only-loadable strings)"
    required = {"dim", "rho", "delta", "prune_window", "max_size", "prototypes", "ids", "next_id", "version"}
    assert required <= set(state)


def test_state_dict_is_a_copy():
    bank = _bank(3)
    state = bank.state_dict()
    state["prototypes"].zero_()
    assert bank.prototypes.abs().sum() > 0


def test_load_state_dict_restores_config_and_sorts_rows_by_id():
    src = _evolved_bank()
    state = src.state_dict()
    perm = torch.arange(len(src)).flip(0)
    for key in ("prototypes", "values", "ids", "streaks", "freq_sum", "freq_rounds", "round_counts", "refreshed",
                "round_mass"):
        state[key] = state[key][perm]
    state["owners"] = [state["owners"][i] for i in perm.tolist()]
    dst = KnowledgeBank(DIM)
    dst.load_state_dict(state)
    _assert_states_equal(dst.state_dict(), src.state_dict())


def _corrupt(**changes) -> dict:
    state = _evolved_bank().state_dict()
    for key, value in changes.items():
        if value is KeyError:
            del state[key]
        else:
            state[key] = value(state) if callable(value) else value
    return state


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"ids": KeyError}, "missing=\\['ids'\\]"),
        ({"extra": 1}, "unexpected=\\['extra'\\]"),
        ({"dim": DIM + 1}, "dim"),
        ({"rho": -1.0}, "rho"),
        ({"prune_window": 0}, "prune_window"),
        ({"version": -1}, "version"),
        ({"next_id": 2.5}, "next_id"),
        ({"next_id": 1}, "next_id"),
        ({"prototypes": lambda s: s["prototypes"][:, :-1]}, "prototypes has shape"),
        ({"prototypes": lambda s: s["prototypes"].double()}, "prototypes must be a torch.float32"),
        ({"prototypes": lambda s: s["prototypes"].fill_(math.nan)}, "prototypes must be finite"),
        ({"ids": lambda s: s["ids"][:-1]}, "shape"),
        ({"ids": lambda s: s["ids"].float()}, "ids must be a torch.int64"),
        ({"ids": lambda s: torch.zeros_like(s["ids"])}, "unique"),
        ({"ids": lambda s: s["ids"] - 100}, "ids must lie"),
        ({"streaks": lambda s: s["streaks"][None]}, "streaks has shape"),
        ({"streaks": lambda s: s["streaks"] - 5}, "streaks must be >= 0"),
        ({"freq_sum": lambda s: s["freq_sum"].float()}, "freq_sum"),
        ({"round_counts": [0, 1]}, "round_counts must be a torch.int64"),
    ],
)
def test_load_state_dict_rejects_bad_state(changes, match):
    state = _corrupt(**changes)
    target = KnowledgeBank(DIM)
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(state)
    _assert_states_equal(target.state_dict(), KnowledgeBank(DIM).state_dict())  # untouched


def test_from_state_dict_rejects_non_mapping_and_missing_config():
    with pytest.raises(ValueError, match="mapping"):
        KnowledgeBank.from_state_dict([1, 2])
    with pytest.raises(ValueError, match="missing=\\['dim'\\]"):
        KnowledgeBank.from_state_dict(_corrupt(dim=KeyError))


def _assert_plain(obj) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            assert type(key) is str
            _assert_plain(value)
    elif isinstance(obj, list):
        for value in obj:
            _assert_plain(value)
    else:
        assert type(obj) in (int, float, str), type(obj)
        assert not isinstance(obj, (torch.Tensor, np.generic, np.ndarray))


@pytest.mark.parametrize("make", [lambda: KnowledgeBank(DIM), _evolved_bank])
def test_to_plain_round_trips_exactly_without_tensors(make):
    bank = make()
    plain = bank.to_plain()
    _assert_plain(plain)
    clone = KnowledgeBank.from_plain(plain)
    _assert_states_equal(clone.state_dict(), bank.state_dict())
    assert clone.to_plain() == plain
    via_json = KnowledgeBank.from_plain(json.loads(json.dumps(plain)))
    _assert_states_equal(via_json.state_dict(), bank.state_dict())


def test_from_plain_rejects_tensors_and_ragged_lists():
    plain = _evolved_bank().to_plain()
    with pytest.raises(ValueError, match="plain prototypes must be a list"):
        KnowledgeBank.from_plain({**plain, "prototypes": torch.zeros(1, DIM)})
    with pytest.raises(ValueError, match="plain prototypes is not a rectangular"):
        KnowledgeBank.from_plain({**plain, "prototypes": [[0.0] * DIM, [0.0]]})
    with pytest.raises(ValueError, match="plain ids"):
        KnowledgeBank.from_plain({**plain, "ids": [["a"]]})


# --------------------------------------------------------------------------- key -> value memory
def _kv_bank(**config) -> KnowledgeBank:
    return KnowledgeBank(2, value_dim=3, **config)


def test_uploads_in_one_round_merge_by_member_count_and_keep_unit_keys():
    bank = _kv_bank(merge_threshold=0.9)
    keys = torch.tensor([[1.0, 0.0], [0.995, 0.0998], [0.0, 1.0]])
    values = torch.tensor([[0.0, 0.0, 0.0], [4.0, 4.0, 4.0], [1.0, 2.0, 3.0]])
    summary = bank.update(keys, None, values, ["site-1", "site-2", "site-1"], torch.tensor([1.0, 3.0, 2.0]))
    assert (summary["inserted"], summary["merged"], summary["size"]) == (2, 1, 2)
    torch.testing.assert_close(bank.values[0], torch.full((3,), 3.0))  # (1 * 0 + 3 * 4) / 4
    torch.testing.assert_close(bank.prototypes.norm(dim=1), torch.ones(2))
    assert bank.owners == ["site-2", "site-1"], "the owner is the site that contributed most members"


def test_a_later_round_is_an_ema_and_refreshes_the_entry():
    bank = _kv_bank(momentum=0.25, max_age=2)
    bank.update(torch.tensor([[1.0, 0.0]]), None, torch.zeros(1, 3), ["a"], torch.tensor([10.0]))
    bank.update(torch.tensor([[1.0, 0.0]]), None, torch.ones(1, 3), ["b"], torch.tensor([1.0]))
    torch.testing.assert_close(bank.values[0], torch.full((3,), 0.25))
    assert bank.refreshed.tolist() == [1] and bank.owners == ["b"] and len(bank) == 1


def test_entries_not_refreshed_for_max_age_rounds_are_pruned():
    bank = _kv_bank(max_age=2)
    bank.update(torch.tensor([[1.0, 0.0]]), None, torch.zeros(1, 3))
    bank.update(torch.tensor([[0.0, 1.0]]), None, torch.zeros(1, 3))  # entry 0 is 1 round old: kept
    assert bank.ids.tolist() == [0, 1]
    owners, ages = bank.entry_info(bank.ids)
    assert ages.tolist() == [2, 1] and owners == ["", ""]
    assert bank.update(None, None)["pruned"] == 1 and bank.ids.tolist() == [1]


def test_values_are_returned_for_retrieved_ids_and_bounded_by_value_rho():
    bank = _kv_bank(value_rho=1.0, merge_threshold=2.0)
    bank.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), None, torch.tensor([[3.0, 4.0, 0.0], [0.1, 0.0, 0.0]]))
    _, ids = bank.retrieve(torch.tensor([[0.1, 1.0]]), k=2)
    values = bank.values_for(ids)
    assert values.shape == (1, 2, 3)
    torch.testing.assert_close(values[0, 1], torch.tensor([0.6, 0.8, 0.0]))  # projected onto ||v|| <= 1
    torch.testing.assert_close(values[0, 0], torch.tensor([0.1, 0.0, 0.0]))  # inside the ball: unchanged


@pytest.mark.parametrize(
    ("values", "owners", "masses", "match"),
    [
        (None, None, None, "values of length 3"),
        (torch.zeros(1, 2), None, None, r"shape \(M, 3\)"),
        (torch.full((1, 3), math.nan), None, None, "finite"),
        (torch.zeros(2, 3), None, None, "needs 1 values"),
        (torch.zeros(1, 3), ["a", "b"], None, "needs 1 values, owners"),
        (torch.zeros(1, 3), None, torch.tensor([0.0]), "masses"),
    ],
)
def test_bad_value_uploads_are_rejected_without_side_effects(values, owners, masses, match):
    bank = _kv_bank()
    with pytest.raises(ValueError, match=match):
        bank.update(torch.tensor([[1.0, 0.0]]), None, values, owners, masses)
    assert len(bank) == 0 and bank.version == 0


def test_key_value_bank_round_trips_through_plain_and_state_dict():
    bank = _kv_bank(max_age=3)
    gen = torch.Generator().manual_seed(0)
    for r in range(3):
        bank.update(torch.randn(2, 2, generator=gen), {int(i): 1 for i in bank.ids}, torch.randn(2, 3, generator=gen),
                    [f"site-{r}", "site-x"], torch.tensor([2.0, 5.0]))
    plain = json.loads(json.dumps(bank.to_plain()))
    clone = KnowledgeBank.from_plain(plain)
    _assert_states_equal(clone.state_dict(), bank.state_dict())
    buffer = io.BytesIO()
    torch.save(bank.state_dict(), buffer)
    buffer.seek(0)
    loaded = KnowledgeBank.from_state_dict(torch.load(buffer, weights_only=True))
    _assert_states_equal(loaded.state_dict(), bank.state_dict())
    assert KnowledgeBank.from_plain(_kv_bank().to_plain()).values.shape == (0, 3)


def test_values_and_entry_info_refuse_ids_not_in_the_bank():
    bank = _kv_bank(merge_threshold=2.0)
    bank.update(torch.eye(2), None, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="ids must be ids of entries"):
        bank.values_for(torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match="ids must be ids of entries"):
        KnowledgeBank(2).entry_info(torch.tensor([0]))
    assert bank.values_for(torch.tensor([[1, 0]])).shape == (1, 2, 3)
