"""Training embeddings and hypernetworks: one loop, its options, and what it reports.

    train_embedding(model, config, embeddings_dir, hooks=None) -> TrainResult
    train_hypernetwork(model, config, hypernetwork_dir, hooks=None) -> TrainResult
"""

from ti.train.config import HypernetworkTrainConfig, TrainConfig
from ti.train.dataset import SkippedImage
from ti.train.hooks import STOP_FINISHED, STOP_INTERRUPTED, STOP_NAN, TrainHooks, TrainProgress, TrainResult
from ti.train.loop import train_embedding, train_hypernetwork

__all__ = [
    "HypernetworkTrainConfig",
    "STOP_FINISHED",
    "STOP_INTERRUPTED",
    "STOP_NAN",
    "SkippedImage",
    "TrainConfig",
    "TrainHooks",
    "TrainProgress",
    "TrainResult",
    "train_embedding",
    "train_hypernetwork",
]
