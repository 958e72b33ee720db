"""Grad-CAM and Grad-CAM++ for any layer of a classifier and any target class.

Grad-CAM (Selvaraju et al., ICCV 2017, arXiv 1610.02391): with A^k the target layer's
activations and y^c the class score (logit), α_k = mean_ij ∂y^c/∂A^k_ij and
L^c = ReLU(Σ_k α_k A^k). Grad-CAM++ (Chattopadhay et al., WACV 2018, arXiv 1710.11063, Eq. 19
for an exponential of the score): with g = ∂y^c/∂A^k_ij,
a_ij = g² / (2g² + Σ_ab A^k_ab · g³) (0 where the denominator is 0) and
w_k = Σ_ij a_ij · ReLU(g); L^c = ReLU(Σ_k w_k A^k).

The layer is any module (by qualified name or the module itself) whose forward returns a
tensor: a stage (``"layer3"``), a block, or an attention module's output
(``"layer3.2.attn"``); the default is the last stage. Gradients are taken with
``torch.autograd.grad`` with respect to the layer's output only, so parameters' ``.grad`` are
untouched. Scores of a batch are summed before differentiating, which gives each image its own
gradient as long as images do not interact (eval mode: call ``model.eval()`` first).

Example:
    >>> import torch, attnlab
    >>> from attnlab.viz.gradcam import grad_cam
    >>> model = attnlab.create_model("resnet20", attn="se", num_classes=4).eval()
    >>> result = grad_cam(model, torch.randn(2, 3, 32, 32), target=1)
    >>> result.layer, tuple(result.raw.shape), tuple(result.maps.shape), result.classes.tolist()
    ('layer3', (2, 1, 8, 8), (2, 1, 32, 32), [1, 1])
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

METHODS = ("gradcam", "gradcam++")


@dataclass
class CAMResult:
    """Grad-CAM output for a batch.

    Attributes:
        maps: B×1×H×W at the input size, each scaled to max 1 (all-zero maps stay 0).
        raw: B×1×h×w at the layer's resolution, unscaled (after the ReLU).
        classes: B target classes the maps explain.
        logits: B×K model outputs.
        layer: the target layer's qualified name.
    """

    maps: Tensor
    raw: Tensor
    classes: Tensor
    logits: Tensor
    layer: str


def default_layer(model: nn.Module) -> str:
    """The last stage (``feature_info[-1]``, through its stage attention if it has one), else
    the last ``Conv2d``."""
    info = getattr(model, "feature_info", None)
    if info:
        name = info[-1]["name"]
        stage_attn = getattr(model, "stage_attn", None)
        if isinstance(stage_attn, nn.ModuleDict) and name in stage_attn:
            return f"stage_attn.{name}"
        return name
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"grad_cam: {type(model).__name__} has no Conv2d; pass layer=")
    return convs[-1]


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    """(qualified name, module) for a name, a module of ``model``, or None (the default)."""
    modules = dict(model.named_modules())
    if layer is None:
        layer = default_layer(model)
    if isinstance(layer, nn.Module):
        for name, module in modules.items():
            if module is layer:
                return name, module
        raise ValueError(f"grad_cam: the given {type(layer).__name__} is not part of the model")
    if layer not in modules:
        close = difflib.get_close_matches(layer, [n for n in modules if n], n=5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ValueError(f"grad_cam: the model has no layer {layer!r}{hint}")
    return layer, modules[layer]


def _classes(target: int | Sequence[int] | Tensor | None, logits: Tensor) -> Tensor:
    batch, num_classes = logits.shape
    if target is None:
        classes = logits.detach().argmax(1)
    else:
        classes = torch.as_tensor(target, dtype=torch.long, device=logits.device).flatten()
        if classes.numel() == 1:
            classes = classes.expand(batch)
        if classes.numel() != batch:
            raise ValueError(f"grad_cam: {classes.numel()} target classes for {batch} images")
    if ((classes < 0) | (classes >= num_classes)).any():
        raise ValueError(f"grad_cam: target classes {classes.tolist()} not in 0..{num_classes - 1}")
    return classes


def cam_from_gradients(activations: Tensor, gradients: Tensor, method: str = "gradcam") -> Tensor:
    """ReLU(Σ_k w_k A^k) as B×1×h×w from a layer's B×C×h×w activations and score gradients."""
    a, g = activations.detach().float(), gradients.detach().float()
    if method == "gradcam":
        weights = g.mean((2, 3), keepdim=True)  # B×C×1×1
    elif method == "gradcam++":
        g2 = g * g
        denominator = 2 * g2 + a.sum((2, 3), keepdim=True) * g2 * g
        alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        weights = (alpha * g.clamp(min=0)).sum((2, 3), keepdim=True)  # B×C×1×1
    else:
        raise ValueError(f"grad_cam: method must be one of {METHODS}, got {method!r}")
    return (weights * a).sum(1, keepdim=True).clamp(min=0)  # B×1×h×w


def grad_cam(
    model: nn.Module,
    images: Tensor,
    *,
    layer: str | nn.Module | None = None,
    target: int | Sequence[int] | Tensor | None = None,
    method: str = "gradcam",
) -> CAMResult:
    """Class activation maps of ``images`` at ``layer`` for the ``target`` classes.

    Args:
        model: a classifier returning B×K logits (in eval mode, see the module docstring).
        images: B×C×H×W batch, ready for the model.
        layer: module name or module (default: :func:`default_layer`); its output must be a
            B×C×h×w tensor that later layers do not modify in place.
        target: one class for all images, one per image, or None for the predicted classes.
        method: ``"gradcam"`` or ``"gradcam++"``.

    Returns:
        The maps (input-sized and raw), classes and logits.
    """
    if method not in METHODS:
        raise ValueError(f"grad_cam: method must be one of {METHODS}, got {method!r}")
    name, module = resolve_layer(model, layer)
    store: dict[str, Tensor] = {}

    def hook(mod: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        if not isinstance(output, Tensor) or output.dim() != 4:
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"grad_cam: layer {name!r} must output B×C×h×w, got {got}")
        if not output.requires_grad:  # frozen weights upstream: start the graph here
            output = output.detach().requires_grad_(True)
            store["activations"] = output
            return output
        store["activations"] = output
        return None

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(images)
    finally:
        handle.remove()
    if "activations" not in store:
        raise ValueError(f"grad_cam: layer {name!r} did not run in the forward pass")
    if logits.dim() != 2:
        raise ValueError(f"grad_cam: the model must return B×K logits, got {tuple(logits.shape)}")
    classes = _classes(target, logits)
    score = logits.gather(1, classes[:, None]).sum()
    (gradients,) = torch.autograd.grad(score, store["activations"], allow_unused=True)
    if gradients is None:
        raise ValueError(f"grad_cam: the logits do not depend on layer {name!r}")
    raw = cam_from_gradients(store["activations"], gradients, method)
    peak = raw.amax((2, 3), keepdim=True)
    maps = F.interpolate(raw / torch.where(peak > 0, peak, torch.ones_like(peak)),
                         size=images.shape[-2:], mode="bilinear", align_corners=False)  # fmt: skip
    return CAMResult(maps.clamp(0, 1), raw, classes.detach(), logits.detach(), name)
