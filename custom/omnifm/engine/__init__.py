"""Framework-free train/evaluate loops and the per-site round logic."""

from omnifm.engine.evaluate import case_logits, evaluate_volumes, predict_case
from omnifm.engine.retrieval import Retrieved, Retriever
from omnifm.engine.site import RoundResult, SiteTrainer, TrainConfig, round_seed, select_device
from omnifm.engine.central import train_central
from omnifm.engine.train import EpochStats, train_epoch

__all__ = [
    "EpochStats", "Retrieved", "Retriever", "RoundResult", "SiteTrainer", "TrainConfig",
    "case_logits", "evaluate_volumes", "predict_case", "round_seed", "select_device", "train_central", "train_epoch",
]
