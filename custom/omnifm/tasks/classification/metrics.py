"""Classification metrics through MONAI: accuracy, macro-F1 (confusion matrix) and macro one-vs-rest AUC."""

from __future__ import annotations

import math
import warnings

import torch
from monai.metrics import compute_roc_auc
from monai.metrics.confusion_matrix import compute_confusion_matrix_metric, get_confusion_matrix

from omnifm.tasks.segmentation.metrics import nanmean


def class_scores(probs: torch.Tensor, targets: torch.Tensor, names: tuple[str, ...]) -> dict[str, float]:
    """Scores of ``(N, K)`` class probabilities against ``(N,)`` targets.

    Returns ``accuracy``, ``macro_f1`` (MONAI's per-class F1, averaged over the classes that occur
    in the targets or the predictions), ``auc`` (MONAI's one-vs-rest ROC AUC, averaged over the
    classes present in the targets with both outcomes) and ``acc_<class>`` (recall per class, NaN
    for a class without samples). Everything is NaN without samples.

    Examples::

        >>> probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
        >>> scores = class_scores(probs, torch.tensor([0, 1, 1]), ("a", "b"))
        >>> round(scores["accuracy"], 3), round(scores["auc"], 3), scores["acc_b"]
        (0.667, 1.0, 0.5)
    """
    if targets.numel() == 0:
        return {"accuracy": math.nan, "macro_f1": math.nan, "auc": math.nan, **{f"acc_{n}": math.nan for n in names}}
    k = len(names)
    pred = probs.argmax(dim=1)
    onehot_y = torch.nn.functional.one_hot(targets.long(), k)
    confusion = get_confusion_matrix(torch.nn.functional.one_hot(pred, k), onehot_y, include_background=True).sum(0)
    f1 = compute_confusion_matrix_metric("f1 score", confusion)
    with warnings.catch_warnings():  # a class without positives or negatives has no AUC: NaN, left out
        warnings.simplefilter("ignore")
        auc = compute_roc_auc(probs.float(), onehot_y, average="none")
    recall = {f"acc_{n}": float((pred[targets == c] == c).float().mean()) if (targets == c).any() else math.nan
              for c, n in enumerate(names)}
    return {
        "accuracy": float((pred == targets).float().mean()),
        "macro_f1": nanmean(torch.as_tensor(f1, dtype=torch.float64)),
        "auc": nanmean(torch.as_tensor(auc, dtype=torch.float64)),
        **recall,
    }
