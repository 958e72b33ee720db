"""What every lab comparison does after training: statistics over seeds against a reference,
and what each trained model costs.

- :func:`seed_statistics`: a group's per-seed results as mean, sample std and 95 % Student-t
  interval (:func:`attnlab.metrics.stats.mean_ci`), and, against a reference group, the
  difference of means with Welch's 95 % interval (:func:`attnlab.metrics.stats.diff_ci`;
  Welch, Biometrika 1947). A difference whose interval contains 0 is not distinguishable from
  noise.
- :func:`model_cost`: parameters, multiply-accumulates of one forward pass (MACs, the papers'
  "FLOPs"; :func:`attnlab.bench.count_macs`) and, on request, the median batch-1 latency
  (:func:`attnlab.bench.measure_latency`) and the peak tensor memory of one eval forward
  (:func:`attnlab.bench.memory.peak_memory`).

Example:
    >>> import attnlab
    >>> from attnlab.lab.summary import model_cost, seed_statistics
    >>> cost = model_cost(attnlab.create_model("resnet20", num_classes=2), 32)
    >>> cost["params"] == sum(p.numel() for p in attnlab.create_model(
    ...     "resnet20", num_classes=2).parameters()), sorted(cost)
    (True, ['macs', 'params'])
    >>> seed_statistics([1.0, 2.0, 3.0])["vs_reference"] is None
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..bench import count_macs, count_params, measure_latency
from ..bench.memory import peak_memory
from ..metrics.stats import diff_ci, mean_ci


def seed_statistics(
    values: Sequence[float], reference: Sequence[float] | None = None
) -> dict[str, Any]:
    """One group's results over seeds, and its difference from the reference group.

    Args:
        values: the group's per-seed results (one final value per seed).
        reference: the reference group's per-seed results; None for the reference itself.

    Returns:
        ``{"mean": mean_ci(values), "vs_reference": diff_ci(values, reference) or None}``.
    """
    if not values:
        raise ValueError("lab.seed_statistics: expected at least one value, got none")
    return {
        "mean": mean_ci(values),
        "vs_reference": None if reference is None else diff_ci(values, reference),
    }


def model_cost(
    model: nn.Module, image_size: int, *, latency: bool = False, memory: bool = False
) -> dict[str, Any]:
    """Parameters and MACs of ``model`` on one ``image_size``×``image_size`` RGB image.

    Args:
        model: the model; its mode is left as it was.
        image_size: the side of the square input.
        latency: also ``latency_ms``: median forward time at batch 1 (eval mode, no grad),
            measured on this machine.
        memory: also ``peak_inference_bytes``: the most tensor storage alive at once during
            one forward of one zero image under ``torch.no_grad`` (weights not included).

    Returns:
        ``{"params", "macs"}`` and the requested ``latency_ms`` / ``peak_inference_bytes``.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"lab.model_cost: image_size must be a positive int, got {image_size!r}")
    shape = (1, 3, image_size, image_size)
    cost: dict[str, Any] = {"params": count_params(model), "macs": count_macs(model, shape)}
    if latency:
        cost["latency_ms"] = 1e3 * measure_latency(model, shape)
    if memory:
        x = torch.zeros(shape)

        def forward() -> None:
            with torch.no_grad():
                model(x)

        cost["peak_inference_bytes"] = peak_memory(forward)
    return cost


def strict_json(value: Any) -> Any:
    """``value`` with every float NaN or infinity (an undefined statistic, e.g. one seed's
    interval) replaced by None, recursively, so that it is written as strict JSON (null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value
