"""The majority baseline of the VQA job's phantom sites: each type answered with the training split's most frequent answer.

``python -m omnifm.tasks.vqa.baseline`` loads (writing if needed) the phantom sites of
``jobs/omnifm_vqa`` exactly as its executor does (same cases, shape, split seed and modality per
site) and prints, per site, the validation accuracy of that constant answer, overall and per question
type, next to the number of answerable and unanswerable questions: the baseline a trained model's
``cross_site_val`` accuracy is read against (docs/VQA.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from omnifm.data.site import load_site_data, simulator_config
from omnifm.tasks import get_task
from omnifm.tasks.vqa.dataset import case_modality
from omnifm.tasks.vqa.metrics import constant_accuracy, majority_answers
from omnifm.tasks.vqa.questions import QUESTION_TYPES, answerable

JOB = Path(__file__).resolve().parents[4] / "jobs" / "omnifm_vqa" / "app" / "config"


def site_baselines(job: Path = JOB, root: str | Path | None = None, workspace: str | Path | None = None
                   ) -> dict[str, dict[str, float]]:
    """``{site: {"accuracy": ..., "accuracy_<type>": ..., "questions": n}}`` of the job's phantom sites.

    ``workspace``: a simulator workspace (``-w``) whose phantom sites are reused (``<workspace>/<site>``);
    else they are written under ``root`` (default: a temporary folder).
    """
    client = json.loads((job / "config_fed_client.json").read_text())["executors"][0]["executor"]["args"]
    server = json.loads((job / "config_fed_server.json").read_text())
    task = get_task(next(c for c in server["components"] if c["id"] == "persistor")["args"]["task"])
    root = Path(root or tempfile.mkdtemp(prefix="vqa_baseline_"))
    out = {}
    for site, modalities in client["phantom_modalities"].items():
        config = simulator_config(site, client["phantom_cases"], tuple(client["phantom_shape"]), client.get("val_fraction", 0.25),
                                  client.get("seed", 0), modalities=modalities)
        data = load_site_data(config, Path(workspace) / site if workspace else root, site, task)
        majority = majority_answers(np.concatenate([task.case_questions(c)[1] for c in data.train]))
        answers = [task.case_questions(c)[1] for c in data.val]
        able = np.concatenate([np.broadcast_to(answerable(case_modality(c)), a.shape) for c, a in zip(data.val, answers)])
        answers = np.concatenate(answers)
        scores = constant_accuracy(answers, able, majority)
        out[site] = {"modality": modalities[0], **scores, "questions": int(((answers >= 0) & able).sum()),
                     "unanswerable": int(((answers >= 0) & ~able).sum())}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="where the phantom sites are written (default: a temporary folder)")
    parser.add_argument("--workspace", help="a simulator workspace (nvflare simulator -w) whose phantom sites to reuse")
    args = parser.parse_args(argv)
    for site, scores in site_baselines(root=args.root, workspace=args.workspace).items():
        types = " ".join(f"{t} {scores[f'accuracy_{t}']:.3f}" for t in QUESTION_TYPES)
        print(f"{site} ({scores['modality']}): majority accuracy {scores['accuracy']:.3f} on {scores['questions']} answerable "
              f"questions ({types}); unanswerable {scores['accuracy_unanswerable']:.3f} of {scores['unanswerable']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
