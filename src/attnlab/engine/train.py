"""Image-classification training: the entry points ``main(config)`` and ``evaluate``.

``main(config, datasets=...)`` runs a :class:`~attnlab.engine.config.TrainConfig` through the
shared trainer (``engine/trainer.py``) with the classification task
(``engine/tasks/classify.py``, which documents what a run writes). ``attnlab train`` and
``attnlab compare`` call it.

Example:
    >>> import tempfile, torch
    >>> from torch.utils.data import TensorDataset
    >>> from attnlab.engine.config import TrainConfig
    >>> from attnlab.engine.train import main
    >>> images, labels = torch.rand(16, 3, 8, 8), torch.arange(16) % 2
    >>> data = (TensorDataset(images, labels), TensorDataset(images, labels), {"num_classes": 2})
    >>> config = TrainConfig(epochs=1, batch_size=8, progress=False, out=tempfile.mkdtemp())
    >>> summary = main(config, datasets=data)
    >>> summary["epochs"], 0.0 <= summary["val_acc"] <= 1.0
    (1, True)
"""

from __future__ import annotations

from .tasks.classify import METRIC_COLUMNS, ClassifyTask, evaluate, main
from .trainer import isolated_global_state, train_one_epoch

__all__ = [
    "METRIC_COLUMNS",
    "ClassifyTask",
    "evaluate",
    "isolated_global_state",
    "main",
    "train_one_epoch",
]
