"""Task objects for the shared trainer (``engine/trainer.py``): what differs between tasks.

Each task module holds its config's recipe pieces (model, optimiser, schedule), its loss step,
its evaluation and its metric row, and a ``main(config)`` that runs the trainer:

- ``classify``: image classification (``TrainConfig``; ``attnlab train``);
- ``detect``: YOLOv4-tiny detection (``DetectConfig``; ``attnlab detect train``);
- ``segment``: DANet-style segmentation (``SegmentConfig``; ``attnlab segment train``).

Example:
    >>> from attnlab.engine.tasks import TASKS
    >>> sorted(TASKS)
    ['classification', 'detection', 'segmentation']
"""

TASKS = {
    "classification": "attnlab.engine.tasks.classify",
    "detection": "attnlab.engine.tasks.detect",
    "segmentation": "attnlab.engine.tasks.segment",
}
