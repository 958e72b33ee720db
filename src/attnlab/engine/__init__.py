"""Training engine: config, train/evaluate loops, checkpoints, distributed training.

Example:
    >>> from attnlab.engine import TrainConfig
    >>> TrainConfig(model="resnet20", attn="eca", epochs=1).to_dict()["attn"]
    'eca'
"""

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .config import TrainConfig
from .train import evaluate, main, train_one_epoch

__all__ = [
    "TrainConfig",
    "evaluate",
    "load_checkpoint",
    "load_model",
    "main",
    "save_checkpoint",
    "train_one_epoch",
]
