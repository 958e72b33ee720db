"""DANet's training loss (Fu et al., CVPR 2019, arXiv 1809.02983): the weighted sum of the
pixel-wise cross-entropies of the fused output and of the PAM and CAM branch outputs.

Each term is the mean cross-entropy over the pixels whose label is not ``ignore_index``. A
batch whose pixels are all ignored contributes 0 (with a gradient of zeros), not NaN as
``F.cross_entropy``'s mean would give. Outputs the weights don't name are an error; weights
naming an output the model doesn't produce are skipped, so the default weights serve the
single-output heads (PAM only, CAM only, FCN) too.

Example:
    >>> import torch
    >>> from attnlab.segment.loss import segmentation_loss
    >>> logits = torch.zeros(1, 3, 2, 2)
    >>> target = torch.tensor([[[0, 1], [2, 255]]])
    >>> round(float(segmentation_loss({"out": logits, "pam": logits}, target)), 4)  # 2·ln 3
    2.1972
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_WEIGHTS = {"out": 1.0, "pam": 1.0, "cam": 1.0}
IGNORE_INDEX = 255


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"segmentation_loss: logits B×C×H×W and target B×H×W must match, got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    valid = target != ignore_index
    labels = target[valid]
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        bad = labels[(labels < 0) | (labels >= logits.shape[1])][0].item()
        raise ValueError(
            f"segmentation_loss: label {bad} is outside 0..{logits.shape[1] - 1} "
            f"and is not the ignore index {ignore_index}"
        )
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    return total / valid.sum().clamp(min=1)


def segmentation_loss(
    outputs: torch.Tensor | Mapping[str, torch.Tensor],
    target: torch.Tensor,
    *,
    weights: Mapping[str, float] | None = None,
    ignore_index: int = IGNORE_INDEX,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ_k w_k · CE(outputs[k], target) over the model's outputs.

    Args:
        outputs: logits B×C×H×W, or a dict of them (``"out"``, ``"pam"``, ``"cam"``); a
            tensor counts as ``"out"``.
        target: int64 labels B×H×W; ``ignore_index`` marks pixels left out.
        weights: weight per output name (default 1 for ``out``, ``pam`` and ``cam``, the
            authors' equal sum).
        ignore_index: label of ignored pixels (255, as in VOC and Cityscapes).
        return_terms: also return the unweighted terms, detached, by name.

    Returns:
        The scalar loss, or (loss, terms).
    """
    if isinstance(outputs, torch.Tensor):
        outputs = {"out": outputs}
    weights = DEFAULT_WEIGHTS if weights is None else weights
    unknown = sorted(set(outputs) - set(weights))
    if unknown or not outputs:
        raise ValueError(
            f"segmentation_loss: no weight for outputs {unknown} (weights: {sorted(weights)})"
            if unknown
            else "segmentation_loss: no outputs"
        )
    if target.dtype != torch.int64:
        raise TypeError(f"segmentation_loss: target must be int64 labels, got {target.dtype}")
    terms = {k: _cross_entropy(v, target, ignore_index) for k, v in outputs.items()}
    loss = sum(weights[k] * term for k, term in terms.items())
    if return_terms:
        return loss, {k: term.detach() for k, term in terms.items()}
    return loss


class SegmentationLoss(nn.Module):
    """Module form of :func:`segmentation_loss`.

    Args:
        weights: weight per output name (default 1 for ``out``, ``pam`` and ``cam``).
        ignore_index: label of ignored pixels.
    """

    def __init__(
        self, weights: Mapping[str, float] | None = None, *, ignore_index: int = IGNORE_INDEX
    ) -> None:
        super().__init__()
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        for name, weight in self.weights.items():
            if not isinstance(weight, (int, float)) or weight < 0:
                raise ValueError(
                    f"SegmentationLoss: weight of {name!r} must be >= 0, got {weight!r}"
                )
        self.ignore_index = ignore_index

    def forward(
        self, outputs: torch.Tensor | Mapping[str, torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        return segmentation_loss(
            outputs, target, weights=self.weights, ignore_index=self.ignore_index
        )

    def extra_repr(self) -> str:
        return f"weights={self.weights}, ignore_index={self.ignore_index}"
