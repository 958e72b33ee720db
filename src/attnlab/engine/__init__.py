"""Training engine: one trainer for every task, task objects, configs, checkpoints, DDP.

Example:
    >>> from attnlab.engine import TrainConfig
    >>> TrainConfig(model="resnet20", attn="eca", epochs=1).to_dict()["attn"]
    'eca'
"""

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .config import TrainConfig
from .runconfig import RunConfig
from .train import evaluate, main
from .trainer import fit, train_one_epoch

__all__ = [
    "RunConfig",
    "TrainConfig",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_model",
    "main",
    "save_checkpoint",
    "train_one_epoch",
]
