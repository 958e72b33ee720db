"""The lab: jobs that train several models under one recipe and compare them.

The lab sits above the engine (training), the metrics, the cost counters (:mod:`attnlab.bench`)
and the maps (:mod:`attnlab.viz`), and below the command line:

- :mod:`~attnlab.lab.compare`: ``attnlab compare``, attention variants in a classifier
  (ResNet; e.g. SE, arXiv 1709.01507; CBAM, arXiv 1807.06521);
- :mod:`~attnlab.lab.segment_compare`: ``attnlab segment compare``, segmentation heads (FCN,
  DANet arXiv 1809.02983, non-local, CCNet, PSA) on one backbone;
- :mod:`~attnlab.lab.summary`: what both do after training: per-group statistics over seeds
  against a reference, and each model's cost.

Example:
    >>> from attnlab.lab import seed_statistics
    >>> stats = seed_statistics([0.8, 0.82, 0.81], reference=[0.7, 0.71, 0.72])
    >>> round(stats["mean"]["mean"], 2), round(stats["vs_reference"]["diff"], 2)
    (0.81, 0.1)
"""

from .summary import model_cost, seed_statistics

__all__ = ["model_cost", "seed_statistics"]
