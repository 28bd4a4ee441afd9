"""VQA scores: accuracy over the answerable questions, per question type, the unanswerable ones apart,
and the constant-answer (majority) baselines beside them."""

from __future__ import annotations

import math

import numpy as np

from omnifm.tasks.vqa.questions import ANSWERS, NOT_ASKED, QUESTION_TYPES, TYPE_ANSWERS

COUNTS = ("questions", "unanswerable", "cases")


def _rate(hits: np.ndarray) -> float:
    return float(hits.mean()) if hits.size else math.nan


def vqa_scores(predicted: np.ndarray, answers: np.ndarray, answerable: np.ndarray) -> dict[str, float]:
    """Scores of ``(N, Q)`` predicted answer indices against ``(N, Q)`` answers (:data:`NOT_ASKED` skipped).

    ``answerable`` ``(N, Q)`` bool marks the questions the slice's modality can answer. Returns
    ``accuracy`` (answerable questions, all types pooled: the headline), ``accuracy_<type>``,
    ``accuracy_unanswerable`` (the others, every type pooled), ``majority`` / ``majority_<type>``
    (the same pools answered with each type's most frequent answer *among the scored questions*: the
    strongest constant answer, at least as high as the training split's majority scores here), and the
    counts ``questions`` (answerable) and ``unanswerable``. NaN where a pool is empty.

    Examples::

        >>> answers = np.array([[1, 0], [1, 1]])
        >>> s = vqa_scores(np.array([[1, 1], [1, 1]]), answers, np.array([[True, True], [True, False]]))
        >>> s["accuracy"], s["accuracy_unanswerable"], s["questions"]
        (0.6666666666666666, 1.0, 3)
    """
    asked = answers != NOT_ASKED
    hits = predicted == answers
    out: dict[str, float] = {"accuracy": _rate(hits[asked & answerable])}
    majority_hits = np.zeros_like(hits)
    for t, name in enumerate(QUESTION_TYPES[: answers.shape[1]]):
        pool = asked[:, t] & answerable[:, t]
        out[f"accuracy_{name}"] = _rate(hits[pool, t])
        if pool.any():
            majority_hits[:, t] = answers[:, t] == np.bincount(answers[pool, t]).argmax()
    out["accuracy_unanswerable"] = _rate(hits[asked & ~answerable])
    out["majority"] = _rate(majority_hits[asked & answerable])
    for t, name in enumerate(QUESTION_TYPES[: answers.shape[1]]):
        out[f"majority_{name}"] = _rate(majority_hits[asked[:, t] & answerable[:, t], t])
    out["questions"] = int((asked & answerable).sum())
    out["unanswerable"] = int((asked & ~answerable).sum())
    return out


def majority_answers(answers: np.ndarray) -> dict[str, str]:
    """Each type's most frequent answer among ``(N, Q)`` answers (e.g. a training split's), by type name."""
    out = {}
    for t, name in enumerate(QUESTION_TYPES):
        column = answers[answers[:, t] != NOT_ASKED, t]
        if column.size:
            out[name] = ANSWERS[int(np.bincount(column).argmax())]
    return out


def constant_accuracy(answers: np.ndarray, answerable: np.ndarray, constant: dict[str, str]) -> dict[str, float]:
    """``accuracy`` and ``accuracy_<type>`` of answering every question of a type with ``constant[type]``."""
    predicted = np.array([ANSWERS.index(constant.get(t, TYPE_ANSWERS[t][0])) for t in QUESTION_TYPES])
    scores = vqa_scores(np.broadcast_to(predicted, answers.shape), answers, answerable)
    return {k: v for k, v in scores.items() if k == "accuracy" or k.startswith("accuracy_")}
