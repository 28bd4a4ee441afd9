"""The mechanism's diagnostics measure what they claim, and a short federated run keeps the tokens diverse."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from omnifm.algorithms import BANK, DIAGNOSTICS, STATE, initial_global, make_run_spec, server_round
from omnifm.data.site import simulator_config, load_site_data
from omnifm.engine import Retrieved, Retriever, SiteTrainer, TrainConfig
from omnifm.engine.diagnostics import mean_pairwise_cosine, retrieval_stats
from omnifm.engine.retrieval import placebo
from omnifm.knowledge import KnowledgeBank
from omnifm.tasks.segmentation import SegTask


def test_mean_pairwise_cosine_is_one_for_identical_tokens():
    assert mean_pairwise_cosine(torch.ones(4, 3)) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.ones(1, 3)) != mean_pairwise_cosine(torch.ones(1, 3))  # NaN


def test_retrieval_stats_count_own_entries_and_their_age():
    bank = KnowledgeBank(2, merge_threshold=2.0)
    bank.update(torch.eye(2), None, owners=["site-1", "site-2"])
    bank.update(None, None)
    ids = torch.tensor([[0, 0], [1, 0]])
    stats = retrieval_stats(bank, [ids], "site-1")
    assert stats == {"retrieval_own_share": 0.75, "retrieved_age_rounds": 2.0}


def test_placebo_keeps_shapes_norms_and_class_fractions_but_not_content():
    values = torch.cat([torch.randn(2, 3, 4 * 2), torch.full((2, 3, 2), 0.5)], dim=-1)
    keys = torch.nn.functional.normalize(torch.randn(2, 3, 5), dim=-1)
    fake = placebo(Retrieved(keys, torch.zeros(2, 3, dtype=torch.long), values), 4, torch.Generator().manual_seed(0))
    assert fake.prototypes.shape == keys.shape and not torch.allclose(fake.prototypes, keys)
    torch.testing.assert_close(fake.prototypes.norm(dim=-1), torch.ones(2, 3))
    blocks, fake_blocks = values[..., :8].unflatten(-1, (2, 4)), fake.values[..., :8].unflatten(-1, (2, 4))
    torch.testing.assert_close(fake_blocks.norm(dim=-1), blocks.norm(dim=-1))
    assert torch.equal(fake.values[..., 8:], values[..., 8:]) and not torch.allclose(fake_blocks, blocks)


def test_retriever_rejects_unknown_modes():
    with pytest.raises(ValueError, match="retrieval mode"):
        Retriever(None, 2, mode="max")


def _phantom_trainers(spec: dict, tmp_path) -> dict[str, SiteTrainer]:
    task, trainers = SegTask(), {}
    for i, modality in enumerate(("t1ce", "ct", "t2")):
        site = f"site-{i + 1}"
        config = dataclasses.replace(simulator_config(site, 4, (32, 32, 8), 0.25, 0), modalities=(modality,))
        data = load_site_data(config, tmp_path, site, task)
        train = TrainConfig(local_epochs=1, batch_size=8, learning_rate=1e-2, min_prototype_count=2)
        trainers[site] = SiteTrainer(spec, train, data.train, data.val, device=torch.device("cpu"), site=site)
    return trainers


@pytest.mark.slow
def test_a_short_federated_run_keeps_tokens_diverse_and_retrieval_changes_the_output(tmp_path):
    """3 phantom sites (T1CE / CT / T2), 3 rounds: the tokens must not collapse and the placebo must matter."""
    torch.manual_seed(0)
    spec = make_run_spec("omnifm", model={"channels": [8, 16, 32], "strides": [2, 2]}, num_prototypes=2)
    trainers = _phantom_trainers(spec, tmp_path)
    weights, meta = initial_global(spec)
    history = []
    for round_num in range(3):
        uploads, diagnostics = [], {}
        for site, trainer in trainers.items():
            trainer.load_global({k: torch.as_tensor(v) for k, v in weights.items()})
            bank = KnowledgeBank.from_plain(meta[BANK]) if meta[BANK] else None
            result = trainer.train_round(bank, round_num, meta[STATE], 3)
            uploads.append(result.to_upload(site))
            diagnostics[site] = result.diagnostics
        weights, meta = server_round(spec, weights, meta, uploads)
        history.append((diagnostics, meta[DIAGNOSTICS]))
    last, server = history[-1]
    for site, diag in last.items():
        assert diag["token_cos_within"] < 0.95, f"{site}: tokens collapsed ({diag['token_cos_within']:.3f})"
        assert 0.0 <= diag["retrieval_own_share"] <= 1.0 and diag["retrieved_age_rounds"] >= 1.0
        assert diag["placebo_logit_rel"] > 1e-3, f"{site}: the retrieved content does not change the logits"
    assert server["bank"]["size"] > 0 and set(server["sites"]) == set(trainers)
