"""Framework-free train/evaluate loops and the per-site round logic."""

from omnifm.engine.evaluate import evaluate_volumes, predict_volume
from omnifm.engine.retrieval import Retrieved, Retriever
from omnifm.engine.site import RoundResult, SiteTrainer, TrainConfig, select_device
from omnifm.engine.train import EpochStats, train_epoch

__all__ = [
    "EpochStats", "Retrieved", "Retriever", "RoundResult", "SiteTrainer", "TrainConfig",
    "evaluate_volumes", "predict_volume", "select_device", "train_epoch",
]
