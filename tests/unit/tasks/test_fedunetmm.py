"""FedUNetMM: every subset of the four MR sequences runs, an absent sequence is masked (never read)."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from synthetic_cases import assert_each_present_slot_reaches

from omnifm.algorithms import make_run_spec
from omnifm.engine import SiteTrainer, TrainConfig
from omnifm.tasks import get_task
from omnifm.tasks.classification.fusion import with_presence
from omnifm.tasks.segmentation.fedunetmm import DeepSupervisedDiceCE, build_fedunetmm, supervision_weights
from omnifm.tasks.segmentation.task import MR_SEQUENCE_INPUTS, MR_SEQUENCES

TINY = {"block_inplanes": [4, 8, 8, 16], "layers": [1, 1, 1, 1], "heads": 2}
TASK = {"kind": "segmentation", "inputs": {slot: list(kinds) for slot, kinds in MR_SEQUENCE_INPUTS}}
SUBSETS = [p for p in itertools.product((0, 1), repeat=4) if any(p)]  # all 15 non-empty subsets
SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread():
    """These networks are tiny: one thread is several times faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _name(present: tuple[int, ...]) -> str:
    return "+".join(m for m, p in zip(MR_SEQUENCES, present) if p)


def _inputs(present: tuple[int, ...], fill: float | None = None, n: int = 4, seed: int = 0) -> torch.Tensor:
    """(n, 8, SIZE, SIZE) inputs; absent image planes hold ``fill`` noise instead of zeros when given."""
    g = torch.Generator().manual_seed(seed)
    x = with_presence(torch.randn(n, 4, SIZE, SIZE, generator=g), torch.tensor(present))
    if fill is not None:
        for s, p in enumerate(present):
            if not p:
                x[:, s] = fill * torch.randn(n, SIZE, SIZE, generator=g)
    return x


def _model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_fedunetmm({**TINY, **overrides}, {}, 4)


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    """The whole OmniFM model's output with a retrieved prototype and values (ECA and prompting active)."""
    s = model.spectral_token(x)
    values = torch.rand(x.shape[0], 1, model.value_dim, generator=torch.Generator().manual_seed(1)) + 0.1
    return model(x, prototypes=s[:, None], spectral_token=s, values=values).logits


@pytest.mark.parametrize("present", SUBSETS, ids=_name)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_an_absent_sequence_is_masked_not_read(present, mode):
    """Whatever an absent sequence's plane holds, the output (train mode: every supervised output) is the same."""
    model = _model()
    model.train(mode == "train")
    with torch.no_grad():
        zero, noise = _logits(model, _inputs(present)), _logits(model, _inputs(present, fill=5.0))
    assert zero.shape == ((4, 5, 4, SIZE, SIZE) if mode == "train" else (4, 4, SIZE, SIZE))
    assert torch.isfinite(zero).all()
    torch.testing.assert_close(zero, noise, rtol=0, atol=1e-5)


@pytest.mark.parametrize("present", SUBSETS, ids=_name)
def test_every_present_sequence_reaches_the_output(present):
    model = _model().eval()
    assert_each_present_slot_reaches(lambda x: _logits(model, x), _inputs(present), present, MR_SEQUENCES)


@pytest.mark.parametrize("present", SUBSETS, ids=_name)
def test_absent_paths_get_no_gradient_and_no_batch_norm_statistics(present):
    """Absent planes get no gradient, the shared encoder's BN statistics are those of the present planes
    alone, and the cross-attention of a sequence absent from the batch gets no gradient."""
    model = _model().train()
    encoder = model.network.encoder
    reference = copy.deepcopy(encoder).train()
    x = _inputs(present, fill=3.0).requires_grad_(True)
    _logits(model, x).sum().backward()
    for s, p in enumerate(present):
        grad = x.grad[:, s]
        assert (grad.abs().max() > 0) if p else (grad.abs().max() == 0), (MR_SEQUENCES[s], p)
    with torch.no_grad():  # the same encoder on the present planes only gives the same running statistics
        reference(torch.cat([x[:, s : s + 1] for s, p in enumerate(present) if p]))
    for mine, theirs in ((encoder.bn1, reference.bn1), (encoder.layer4[0].bn2, reference.layer4[0].bn2)):
        torch.testing.assert_close(mine.running_mean, theirs.running_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(mine.running_var, theirs.running_var, rtol=0, atol=1e-6)
    for s, p in enumerate(present):
        grads = [q.grad for level in model.network.cross for q in level[s].parameters()]
        if not p:
            assert all(g is None for g in grads), f"absent {MR_SEQUENCES[s]}'s cross-attention got a gradient"
        elif sum(present) > 1:
            assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{MR_SEQUENCES[s]} as primary is not trained"


def test_a_mixed_batch_equals_its_samples_one_by_one():
    """Rows with different sequence subsets in one batch do not leak into each other (eval mode)."""
    model = _model().eval()
    rows = [_inputs(p, fill=3.0, n=1, seed=i) for i, p in enumerate(SUBSETS)]
    with torch.no_grad():
        together = model(torch.cat(rows)).logits
        alone = torch.cat([model(r).logits for r in rows])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_a_sample_without_any_sequence_is_refused():
    x = _inputs((1, 1, 1, 1))
    x[1, 4:] = 0
    with pytest.raises(ValueError, match="no present modality"):
        _model()(x)


def test_deep_supervision_loss_is_the_weighted_sum_of_dice_ce():
    torch.manual_seed(0)
    stacked = torch.randn(3, 5, 4, 16, 16)
    label = torch.randint(0, 4, (3, 1, 16, 16)).float()
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    expected = sum(w * dice_ce(stacked[:, k], label) for k, w in enumerate([1.0, 0.5, 0.25, 0.125, 0.0625]))
    loss = DeepSupervisedDiceCE()
    torch.testing.assert_close(loss(stacked, label), expected)
    torch.testing.assert_close(loss(stacked[:, 0], label), dice_ce(stacked[:, 0], label))  # eval-shaped output
    assert supervision_weights(3) == [1.0, 0.5, 0.25]
    # every head is trained: the gradient reaches each supervised output
    stacked.requires_grad_(True)
    loss(stacked, label).backward()
    assert all(stacked.grad[:, k].abs().sum() > 0 for k in range(5))


def test_outputs_by_mode_and_without_deep_supervision():
    x = _inputs((1, 0, 1, 1))
    assert _model().train()(x).logits.shape == (4, 5, 4, SIZE, SIZE)
    assert _model().eval()(x).logits.shape == (4, 4, SIZE, SIZE)
    assert _model(deep_supervision=False).train()(x).logits.shape == (4, 4, SIZE, SIZE)
    for positional in ("none", "all"):
        assert _model(positional=positional).eval()(x).logits.shape == (4, 4, SIZE, SIZE)


def test_positional_embedding_changes_the_output():
    x = _inputs((1, 1, 1, 1))
    with torch.no_grad():
        outs = [_model(positional=p).eval()(x).logits for p in ("none", "last", "all")]
    assert (outs[0] - outs[1]).abs().max() > 1e-5 and (outs[1] - outs[2]).abs().max() > 1e-5


def test_the_model_and_the_inputs_go_together():
    with pytest.raises(ValueError, match="needs the task's \"inputs\""):
        make_run_spec("fedavg", task={"kind": "segmentation"}, model={"name": "fedunetmm"})
    with pytest.raises(ValueError, match="reads one image"):
        make_run_spec("fedavg", task=TASK, model={})
    with pytest.raises(ValueError, match="unknown segmentation model"):
        make_run_spec("fedavg", task=TASK, model={"kind": "swin"})
    with pytest.raises(ValueError, match="divisible"):
        make_run_spec("fedavg", task=TASK, model={"kind": "fedunetmm", "block_inplanes": [6, 8, 8, 16]})
    with pytest.raises(ValueError, match="unknown model keys"):
        make_run_spec("fedavg", task=TASK, model={"kind": "fedunetmm", "channels": [8, 16]})
    spec = make_run_spec("fedavg", task=TASK, model={"name": "fedunetmm", **TINY})
    assert spec["model"]["kind"] == "fedunetmm" and get_task(spec["task"]).input_slots == MR_SEQUENCE_INPUTS
    assert get_task(spec["task"]) == get_task(TASK) and get_task(get_task(TASK).to_dict()) == get_task(TASK)


def test_the_slot_order_survives_a_spec_saved_with_sorted_keys():
    """The persistor saves the spec with json.dumps(sort_keys=True); the sequences must keep their slot order
    (a dict of slots would come back flair, t1, t1ce, t2 and feed every plane to the wrong slot)."""
    import json

    spec = make_run_spec("fedavg", task=TASK, model={"name": "fedunetmm", **TINY})
    again = json.loads(json.dumps(spec, sort_keys=True))
    assert get_task(again["task"]).input_slots == MR_SEQUENCE_INPUTS
    assert make_run_spec(**{k: again[k] for k in ("algorithm", "task", "model", "omnifm", "seed")}) == \
        make_run_spec(**{k: spec[k] for k in ("algorithm", "task", "model", "omnifm", "seed")})


def test_the_default_unet_spec_is_unchanged():
    """The single-image UNet's spec has neither a model kind nor task inputs (existing jobs' specs and round 0)."""
    spec = make_run_spec("fedavg", task={"classes": ["background", "tumour"]}, model={"channels": [8, 16, 32], "strides": [2, 2]})
    assert "kind" not in spec["model"] and "inputs" not in spec["task"]
    assert make_run_spec("fedavg", model={"kind": "unet"})["model"] == make_run_spec("fedavg")["model"]
    task = get_task(None)
    assert task.ablations() == {} and isinstance(task.loss(), DiceCELoss)


def _cases(n: int, present: tuple[int, ...], seed: int) -> list[dict[str, np.ndarray]]:
    """4 x 32 x 32 x 4 slot cases: a box whose core (label 3) shows in T1CE and whose rim (label 2) shows in
    T2/FLAIR, over noise; absent sequences zero with ``present`` 0."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        label = np.zeros((1, SIZE, SIZE, 4), np.uint8)
        y, x = rng.integers(4, 16, size=2)
        label[0, y : y + 12, x : x + 12, 1:3] = 2
        label[0, y + 3 : y + 9, x + 3 : x + 9, 1:3] = 3
        image = rng.normal(0, 0.3, (4, SIZE, SIZE, 4)).astype(np.float32)
        image[0] += 0.5 * (label[0] > 0)
        image[1] += 1.5 * (label[0] == 3)
        image[2] += 1.0 * (label[0] > 0)
        image[3] += 1.5 * (label[0] == 2)
        image[[s for s, p in enumerate(present) if not p]] = 0
        cases.append({"image": image, "label": label, "present": np.array(present, np.uint8)})
    return cases


def test_a_small_site_with_mixed_sequence_subsets_learns():
    """Through SiteTrainer (the executor's and the bench's path): all four, three and two sequences in one site."""
    torch.manual_seed(0)
    spec = make_run_spec("fedavg", task=TASK, model={"name": "fedunetmm", **TINY})
    subsets = [(1, 1, 1, 1), (0, 1, 1, 1), (0, 1, 0, 1)]
    train = [c for i, p in enumerate(subsets) for c in _cases(4, p, i)]
    val = [c for i, p in enumerate(subsets) for c in _cases(2, p, 10 + i)]
    trainer = SiteTrainer(spec, TrainConfig(local_epochs=4, batch_size=4, learning_rate=1e-2), train, val,
                          device=torch.device("cpu"))
    before = trainer.evaluate(None)["dice"]
    result = trainer.train_round(None, 0, {}, 1)
    after = trainer.evaluate(None)["dice"]
    assert after > max(before + 0.3, 0.6), (before, after)
    assert {f"ablate_without_{m}_dice_delta" for m in MR_SEQUENCES} <= set(result.diagnostics)


def test_init_checkpoint_sets_the_round_0_weights(tmp_path):
    """initial_global (the persistor's and the benchmark's round 0) starts from the file's weights."""
    from omnifm.algorithms import build_model, initial_global

    spec = make_run_spec("omnifm", task=TASK, model={"name": "fedunetmm", **TINY})
    other = build_model({**spec, "seed": 5})
    path = tmp_path / "init.pt"
    torch.save({"model": other.state_dict()}, path)
    seeded, _ = initial_global(spec, {})
    started, meta = initial_global(spec, {}, str(path))
    assert set(started) == set(seeded) and meta["omnifm_bank"] is not None
    params = dict(other.named_parameters())
    for name, value in started.items():
        np.testing.assert_array_equal(value, params[name].detach().numpy())
    assert any(not np.array_equal(seeded[k], started[k]) for k in seeded)
    torch.save(other.state_dict(), tmp_path / "bare.pt")  # a bare state dict works too
    bare, _ = initial_global(spec, {}, str(tmp_path / "bare.pt"))
    assert all(np.array_equal(bare[k], started[k]) for k in started)


def test_init_checkpoint_refuses_a_missing_or_misfitting_file(tmp_path):
    from omnifm.algorithms import build_model, initial_global
    from omnifm.checkpoint import CheckpointError

    spec = make_run_spec("fedavg", task=TASK, model={"name": "fedunetmm", **TINY})
    with pytest.raises(CheckpointError, match=r"init_checkpoint .*nope\.pt does not exist.*omnifm-pretrain"):
        initial_global(spec, {}, str(tmp_path / "nope.pt"))
    wider = build_model(make_run_spec("fedavg", task=TASK, model={"name": "fedunetmm", **TINY, "block_inplanes": [4, 8, 8, 32]}))
    torch.save({"model": wider.state_dict()}, tmp_path / "wider.pt")
    with pytest.raises(CheckpointError, match=r"wider\.pt does not fit .* other shapes"):
        initial_global(spec, {}, str(tmp_path / "wider.pt"))
    unet = build_model(make_run_spec("fedavg", model={"channels": [8, 16, 32], "strides": [2, 2]}))
    torch.save({"model": unet.state_dict()}, tmp_path / "unet.pt")
    with pytest.raises(CheckpointError, match=r"unet\.pt does not fit .* lacks"):
        initial_global(spec, {}, str(tmp_path / "unet.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        initial_global(spec, {}, str(tmp_path / "junk.pt"))


def test_omnifm_pretrain_writes_a_checkpoint_the_job_starts_from(tmp_path):
    """The documented way to make an init_checkpoint: the job's spec, held-out phantom subjects, one line per epoch."""
    from pathlib import Path

    from omnifm.algorithms import initial_global
    from omnifm.tasks.segmentation.pretrain import job_spec, pretrain

    job = Path(__file__).resolve().parents[3] / "jobs" / "omnifm_seg_fedunetmm"
    spec = job_spec(job)
    assert spec["model"]["kind"] == "fedunetmm" and get_task(spec["task"]).input_slots == MR_SEQUENCE_INPUTS
    lines: list[str] = []
    out = tmp_path / "init.pt"
    summary = pretrain(spec, out, epochs=2, cases=4, shape=(32, 32, 8), workdir=tmp_path / "phantom", print_fn=lines.append)
    assert [line.split(":")[0] for line in lines[1:3]] == ["epoch 1/2", "epoch 2/2"] and lines[-1].startswith("wrote ")
    assert summary["modalities"] == list(MR_SEQUENCES) and summary["site_index"] == 9 and summary["seed"] == 7
    started, _ = initial_global(spec, {}, str(out))
    seeded, _ = initial_global(spec, {})
    assert any(not np.array_equal(started[k], seeded[k]) for k in seeded)
