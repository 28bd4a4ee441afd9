"""The VQA task: its questions follow the ground truth, its tokeniser covers every template, unanswerable
questions are scored apart, its data are deterministic, its network reads the question and the image,
and a small site learns the image-dependent question types beyond the majority answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from omnifm.algorithms import make_run_spec
from omnifm.data.modalities import MODALITIES
from omnifm.engine import SiteTrainer, TrainConfig
from omnifm.tasks import get_task
from omnifm.tasks.vqa import ANSWERS, QUESTION_TYPES, TEMPLATES, UNANSWERABLE, VQATask
from omnifm.tasks.vqa.dataset import FLIPS, QuestionSliceDataset, case_image, case_modality, read_questions, write_questions
from omnifm.tasks.vqa.metrics import constant_accuracy, majority_answers, vqa_scores
from omnifm.tasks.vqa.network import build_vqa_model
from omnifm.tasks.vqa.questions import (
    MAX_WORDS,
    NOT_ASKED,
    TOKENS,
    UNKNOWN,
    VOCABULARY,
    answerable,
    question_tokens,
    slice_answers,
    template_choice,
    tokenize,
    words,
)

TINY = {"block_inplanes": [4, 8, 8, 16]}
T = {name: i for i, name in enumerate(QUESTION_TYPES)}
SIZE = 24  # slices of 24 x 24 = 576 pixels: size bins at 2 % (11.5 px) and 3.5 % (20.2 px)


def _label(boxes: list[tuple[slice, slice, int]], depth: int = 1) -> np.ndarray:
    """A (1, SIZE, SIZE, depth) label with each box ``(rows, cols, class)`` painted in order on every slice."""
    label = np.zeros((1, SIZE, SIZE, depth), np.uint8)
    for rows, cols, value in boxes:
        label[0, rows, cols, :] = value
    return label


def _answers(label: np.ndarray, modality: str = "t1ce") -> dict[str, str]:
    slices, answers = slice_answers(label, modality)
    assert slices.tolist() == [0]
    return {t: ANSWERS[a] for t, a in zip(QUESTION_TYPES, answers[0]) if a != NOT_ASKED}


# ---- question generation against hand-built labels -------------------------------------------------------------


def test_a_tumour_free_slice_is_asked_only_modality_and_tumour():
    assert _answers(_label([]), "pet") == {"modality": "pet", "tumour": "no"}


@pytest.mark.parametrize("rows, side", [(slice(16, 22), "right"), (slice(2, 8), "left")])
def test_the_hemisphere_follows_axis_0_of_ras(rows, side):
    """Axis 0 points to the patient's right: a tumour at high row indices is in the right hemisphere."""
    assert _answers(_label([(rows, slice(2, 8), 2)]))["hemisphere"] == side


@pytest.mark.parametrize("core_px, rim", [(0, "no"), (1, "no"), (2, "yes"), (4, "yes")])
def test_an_enhancing_rim_needs_rim_area_of_the_slice(core_px, rim):
    """rim_area 0.002 of 576 pixels = 1.15 px: one enhancing pixel is no rim, two are."""
    boxes = [(slice(16, 22), slice(2, 8), 2)]
    if core_px:
        boxes.append((slice(18, 18 + core_px // 2 + core_px % 2), slice(4, 4 + min(core_px, 2)), 3))
    label = _label(boxes)
    assert int((label == 3).sum()) == core_px
    assert _answers(label)["rim"] == rim


@pytest.mark.parametrize("core, answer", [((1, 2), "yes"), ((2, 2), "yes"), ((3, 3), "no")])
def test_oedema_versus_core_is_the_area_ratio(core, answer):
    """A 6 x 6 lesion: a core of 2 px leaves 34 oedema (> 4 x 2), 4 px leaves 32 (> 16), 9 px leaves 27 (< 36)."""
    label = _label([(slice(16, 22), slice(2, 8), 2), (slice(17, 17 + core[0]), slice(3, 3 + core[1]), 1)])
    assert _answers(label)["oedema"] == answer


@pytest.mark.parametrize("side, size", [(3, "small"), (4, "medium"), (5, "large")])
def test_size_bins_are_fractions_of_the_slice(side, size):
    """9 px (1.6 %) small, 16 px (2.8 %) medium, 25 px (4.3 %) large."""
    assert _answers(_label([(slice(16, 16 + side), slice(2, 2 + side), 2)]))["size"] == size


def test_ambiguous_slices_get_no_questions():
    label = _label([(slice(16, 22), slice(2, 8), 2)], depth=3)
    label[0, :, :, 1:] = 0  # slice 1: tumour-free
    label[0, 11:13, 2:8, 2] = 2  # slice 2: centroid on the left-right midline
    slices, answers = slice_answers(label, "t2")
    assert slices.tolist() == [0, 1] and answers.shape == (2, len(QUESTION_TYPES))


def test_every_template_of_every_type_becomes_its_question():
    slices, answers = slice_answers(_label([(slice(16, 22), slice(2, 8), 2)]), "t1ce")
    for t, name in enumerate(QUESTION_TYPES):
        for k, template in enumerate(TEMPLATES[name]):
            chosen = np.zeros((1, len(QUESTION_TYPES)), np.int64)
            chosen[0, t] = k
            ids = question_tokens(chosen, answers)[0, t]
            assert [VOCABULARY[i] for i in ids if i] == words(template)


def test_templates_do_not_repeat_across_cases_with_the_same_label():
    """Every tumour-free case has the same all-zero label: its templates must still be its own draw, or the
    template pattern would tell a tumour-free case from the others without the image."""
    task, label = VQATask(), _label([], depth=8)
    draws = {tuple(task.case_questions(_case(label, "t2", seed=s))[2][:, T["tumour"], 0]) for s in range(6)}
    assert len(draws) > 1
    case = _case(label, "t2", seed=0)
    assert np.array_equal(task.case_questions(case)[2], task.case_questions({**case})[2]), "not deterministic"


# ---- vocabulary and tokeniser ----------------------------------------------------------------------------------


def test_the_vocabulary_covers_every_template_and_templates_stay_distinct():
    for name, templates in TEMPLATES.items():
        assert len(templates) >= 3, name
        ids = [tuple(tokenize(t)) for t in templates]
        assert all(UNKNOWN not in i and len(i) == MAX_WORDS for i in ids), name
        assert len(set(ids)) == len(ids), f"{name}: two templates tokenise alike"
    assert len(set(VOCABULARY)) == len(VOCABULARY) and VOCABULARY[:2] == ("<pad>", "<unk>")
    all_ids = {tuple(i) for ts in TOKENS.values() for i in ts}
    assert len(all_ids) == sum(len(ts) for ts in TEMPLATES.values()), "a template is shared by two types"


def test_the_tokeniser_marks_unknown_words_and_refuses_overlong_questions():
    assert tokenize("Is there a zebra?")[3] == UNKNOWN
    with pytest.raises(ValueError, match="1 to"):
        tokenize(" ".join(["tumour"] * (MAX_WORDS + 1)))
    with pytest.raises(ValueError, match="1 to"):
        tokenize("?!")


# ---- unanswerable questions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", MODALITIES)
def test_unanswerable_types_follow_the_rule_per_modality(modality):
    flags = dict(zip(QUESTION_TYPES, answerable(modality).tolist()))
    assert flags["modality"] and flags["tumour"] and flags["hemisphere"] and flags["size"]
    assert flags["rim"] == (modality in ("t1ce", "pet"))
    assert flags["oedema"] == (modality in ("t1ce", "t2", "flair"))
    assert all(not flags[t] for t, mods in UNANSWERABLE.items() if modality in mods)


def _case(label: np.ndarray, modality: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A case as the pipeline delivers it to this task: one slot per modality, ``present`` one-hot."""
    rng = np.random.default_rng(seed)
    image = np.zeros((len(MODALITIES), *label.shape[1:]), np.float32)
    image[MODALITIES.index(modality)] = rng.normal(0, 0.3, label.shape[1:]) + label[0] * 1.0
    present = np.zeros(len(MODALITIES), np.uint8)
    present[MODALITIES.index(modality)] = 1
    return {"image": image, "label": label, "present": present}


def test_unanswerable_questions_are_scored_apart_from_the_headline():
    task = VQATask()
    case = _case(_label([(slice(16, 22), slice(2, 8), 2), (slice(18, 20), slice(4, 6), 3)]), "ct")
    _, answers, _ = task.case_questions(case)
    right = torch.as_tensor(answers)
    wrong_rim = right.clone()
    wrong_rim[:, T["rim"]] = ANSWERS.index("no") if ANSWERS[int(right[0, T["rim"]])] == "yes" else ANSWERS.index("yes")
    good, bad_rim = task.score([right], [case]), task.score([wrong_rim], [case])
    assert good["accuracy"] == bad_rim["accuracy"] == 1.0, "a CT rim answer moved the headline"
    assert good["accuracy_unanswerable"] == 1.0 and bad_rim["accuracy_unanswerable"] == 0.5  # rim wrong, oedema right
    assert good["unanswerable"] == 2 and good["questions"] == 4 and math.isnan(good["accuracy_rim"])


def test_majority_baselines_answer_each_type_with_its_most_frequent_answer():
    yes, no, left, right = (ANSWERS.index(a) for a in ("yes", "no", "left", "right"))
    answers = np.full((4, len(QUESTION_TYPES)), NOT_ASKED)
    answers[:, T["tumour"]] = [yes, yes, yes, no]
    answers[:2, T["hemisphere"]] = [left, right]
    able = np.ones_like(answers, dtype=bool)
    scores = vqa_scores(np.full_like(answers, yes), answers, able)
    assert scores["majority_tumour"] == 0.75 and scores["accuracy_tumour"] == 0.75
    assert scores["majority_hemisphere"] == 0.5 and scores["accuracy_hemisphere"] == 0.0
    assert scores["majority"] == pytest.approx(4 / 6) and scores["accuracy"] == 0.5
    assert majority_answers(answers)["tumour"] == "yes"
    assert constant_accuracy(answers, able, {"tumour": "no", "hemisphere": "left"})["accuracy"] == pytest.approx(2 / 6)


# ---- cases, dataset ----------------------------------------------------------------------------------------------


def test_the_modality_is_read_from_the_present_slot_and_paired_cases_are_refused():
    case = _case(_label([]), "spect")
    assert case_modality(case) == "spect" and case_image(case).shape == (1, SIZE, SIZE, 1)
    assert np.array_equal(case_image(case)[0], case["image"][MODALITIES.index("spect")])
    paired = {**case, "present": np.ones(len(MODALITIES), np.uint8)}
    with pytest.raises(ValueError, match="exactly one modality"):
        case_modality(paired)


def _site(n: int, seed: int, modality: str = "t1ce") -> list[dict[str, np.ndarray]]:
    """``n`` cases of 4 slices: a square lesion of random side (3-6 px: every size bin) in a random quadrant on
    slices 1-3, an enhancing core inside it on slices 2-3; slice 0 and every fourth case are tumour-free. The
    lesion is brighter than the background (oedema +2, core +3 over noise of sd 0.3)."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        label = np.zeros((1, SIZE, SIZE, 4), np.uint8)
        side = int(rng.integers(3, 7))
        row = int(rng.choice([2, 22 - side]))
        col = int(rng.choice([2, 22 - side]))
        label[0, row : row + side, col : col + side, 1:] = 2
        label[0, row + 1 : row + side - 1, col + 1 : col + side - 1, 2:] = 3
        if i % 4 == 3:
            label[0] = 0  # a tumour-free case
        cases.append(_case(label, modality, seed=seed * 1000 + i))
    return cases


def test_the_dataset_is_deterministic_for_a_seed_and_serves_the_mirror_images():
    task = VQATask()
    cases = _site(6, 0)
    a, b = task.dataset(cases, 0.3, 0), task.dataset(cases[::-1], 0.3, 0)
    order = lambda d: sorted(zip(map(bytes, d.images.numpy()), map(bytes, d.labels.numpy())))  # noqa: E731
    assert order(a) == order(b), "the samples depend on the order of the cases"
    assert torch.equal(a.images, task.dataset(cases, 0.3, 0).images)
    other = VQATask(template_seed=1).dataset(cases, 0.3, 0)
    assert torch.equal(other.labels, a.labels) and not torch.equal(read_questions(other.images), read_questions(a.images))
    plain = VQATask(mirror=False).dataset(cases, 0.3, 0)
    assert len(a) == len(FLIPS) * len(plain)
    k = len(task.case_questions(cases[0])[0])  # the first case's slices come unflipped, then left-right mirrored
    hemisphere = T["hemisphere"]
    swap = {ANSWERS.index("left"): ANSWERS.index("right"), ANSWERS.index("right"): ANSWERS.index("left"), NOT_ASKED: NOT_ASKED}
    assert [swap[int(v)] for v in plain.labels[:k, hemisphere]] == a.labels[k : 2 * k, hemisphere].tolist()
    assert {int(v) for v in plain.labels[:, hemisphere]} >= {ANSWERS.index("left"), ANSWERS.index("right")}
    assert torch.equal(a.images[k : 2 * k, 0], a.images[:k, 0].flip(1))
    assert torch.equal(a.labels[2 * k : 3 * k], plain.labels[:k]), "a front-back flip changed an answer"


# ---- network ---------------------------------------------------------------------------------------------------


def _inputs(image: torch.Tensor, questions: list[str]) -> torch.Tensor:
    tokens = np.stack([tokenize(q) for q in questions])[None].repeat(image.shape[0], axis=0)
    return write_questions(image, tokens)


def test_the_answers_depend_on_the_question_and_on_the_image():
    torch.manual_seed(0)
    model = build_vqa_model(TINY, {"value_classes": 4}).eval()
    image = torch.randn(1, 1, 32, 32)
    asked = [TEMPLATES[t][0] for t in QUESTION_TYPES]
    with torch.no_grad():
        logits = model(_inputs(image, asked)).logits[0]  # (Q, answers)
        same = model(_inputs(image, [asked[0]] * len(asked))).logits[0]
        other_image = model(_inputs(torch.randn(1, 1, 32, 32), asked)).logits[0]
        swapped = model(_inputs(image, asked[::-1])).logits[0]
    assert logits.shape == (len(QUESTION_TYPES), len(ANSWERS))
    assert (logits[1:] - logits[0]).abs().amax(dim=1).min() > 1e-4, "two questions got the same logits"
    assert torch.allclose(same, same[0].expand_as(same)), "the same question got different logits"
    assert (other_image - logits).abs().amax(dim=1).min() > 1e-4, "another image left a question's logits unchanged"
    assert torch.allclose(swapped, logits.flip(0), atol=1e-6), "a question's position changed its answer"


def test_the_answer_head_is_personal_the_spectral_token_ignores_the_question_and_every_parameter_learns():
    model = build_vqa_model(TINY, {"value_classes": 4})
    personal = {n for n in model.personal_parameter_names() if not n.startswith("prompt")}
    assert personal and all(n.startswith("network.fc.") for n in personal)
    image = torch.randn(4, 1, 32, 32)
    a, b = _inputs(image, [TEMPLATES["tumour"][0]] * 6), _inputs(image, [TEMPLATES["size"][1]] * 6)
    assert torch.equal(model.spectral_token(a), model.spectral_token(b))
    out = model(a, prototypes=torch.randn(4, 2, 32), values=torch.rand(4, 2, model.value_dim) + 0.1)
    label = torch.full((4, 6), NOT_ASKED)
    label[:, 0] = torch.tensor([0, 1, 7, 8])
    get_task({"kind": "vqa"}).loss()(out.logits, label).backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"no gradient: {silent}"


def test_bad_specs_are_refused_and_the_task_round_trips():
    task = get_task({"kind": "vqa", "size_bins": [0.01, 0.05], "template_seed": 3})
    assert isinstance(task, VQATask) and get_task(task.to_dict()) == task
    with pytest.raises(ValueError, match="unknown vqa task keys"):
        get_task({"kind": "vqa", "classes": ["a"]})
    with pytest.raises(ValueError, match="size_bins"):
        VQATask(size_bins=(0.05, 0.01))
    with pytest.raises(ValueError, match="unknown model keys"):
        make_run_spec("fedavg", task={"kind": "vqa"}, model={"widths": 3})
    with pytest.raises(ValueError, match="answers"):
        make_run_spec("fedavg", task={"kind": "vqa"}, model={"out_channels": 3})


# ---- learning --------------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """A tiny network trains several times faster on one thread than on two of a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_small_site_learns_the_image_dependent_questions_beyond_the_majority(one_thread):
    """Tumour presence and hemisphere (what the image shows) beat the training split's majority answer by 0.15."""
    torch.manual_seed(0)
    spec = make_run_spec("fedavg", task={"kind": "vqa"}, model=TINY)
    train, val = _site(16, 0), _site(8, 1)
    trainer = SiteTrainer(spec, TrainConfig(local_epochs=2, batch_size=16, learning_rate=1e-2), train, val,
                          device=torch.device("cpu"))
    for round_num in range(2):
        trainer.train_round(None, round_num, {}, 2)
    scores = trainer.evaluate(None)
    task = trainer.task
    majority = majority_answers(np.concatenate([task.case_questions(c)[1] for c in train]))  # the training split's
    able = np.concatenate([np.broadcast_to(answerable("t1ce"), task.case_questions(c)[1].shape) for c in val])
    baseline = constant_accuracy(np.concatenate([task.case_questions(c)[1] for c in val]), able, majority)
    for name in ("tumour", "hemisphere"):
        assert scores[f"accuracy_{name}"] > baseline[f"accuracy_{name}"] + 0.15, (name, scores, baseline)
    assert scores["accuracy"] > scores["majority"] >= baseline["accuracy"], (scores, baseline)
