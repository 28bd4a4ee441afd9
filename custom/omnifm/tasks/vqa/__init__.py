"""VQA on the task seam: closed-ended questions about axial slices, generated from the ground truth (offline LLaVA substitute)."""

from omnifm.tasks.vqa.questions import ANSWERS, QUESTION_TYPES, TEMPLATES, UNANSWERABLE
from omnifm.tasks.vqa.task import VQATask

__all__ = ["ANSWERS", "QUESTION_TYPES", "TEMPLATES", "UNANSWERABLE", "VQATask"]
