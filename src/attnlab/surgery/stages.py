"""Stage outputs of a network (the BAM placement: after every stage but the last) and module
paths matched by glob patterns.

Stages come from the model's ``feature_info`` where it has one (timm's models: ``module`` and
``num_chs``; attnlab's: ``name`` and ``channels``), leading entries without two convolutions
(a stem's activation) left out where later ones have them. Otherwise one probe forward pass
(eval mode, no gradients, 1×C×64×64) finds them. It records the outputs of the modules reached
from the root through plain containers only (never a block's insides) and cuts them into runs
of equal feature-map size; a run's stage output is the last module to finish at that size, the
outermost non-leaf one if there is one (ResNet's ``layer2``, DenseNet's ``denseblock2``), else
the last layer (VGG's ReLU before each pooling). Runs before the first block (a module that is
neither a leaf nor a plain container) are the stem; 1×1 maps, runs without a convolution (a
last pooling), the last run, and anything after the map grows again (adaptive pooling) are left
out. (BAM: Park et al., arXiv 1807.06514.)

Example:
    >>> import torchvision
    >>> from attnlab.surgery.stages import find_stages, match_paths
    >>> find_stages(torchvision.models.vgg11())
    [('features.1', 64), ('features.4', 128), ('features.9', 256), ('features.14', 512)]
    >>> match_paths(["a", "a.b", "a.b.c"], "a.*"), match_paths(["a", "a.b", "a.b.c"], "a.**")
    (['a.b'], ['a', 'a.b', 'a.b.c'])
"""

from __future__ import annotations

import fnmatch
from typing import Any

import torch
from torch import nn

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
PROBE_SIZE = 64


def _segments_match(parts: list[str], pattern: list[str]) -> bool:
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":  # any number of segments, none included
        return any(_segments_match(parts[i:], rest) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _segments_match(parts[1:], rest)


def match_paths(names: list[str], pattern: str) -> list[str]:
    """The names matching ``pattern``: ``*`` (and ``?``, ``[…]``) within one dot-separated
    segment, ``**`` for any number of segments (none included)."""
    wanted = pattern.split(".")
    return [n for n in names if n == pattern or _segments_match(n.split("."), wanted)]


def _num_convs(module: nn.Module) -> int:
    return sum(1 for m in module.modules() if isinstance(m, nn.Conv2d))


def _from_feature_info(model: nn.Module, info: Any) -> list[tuple[str, int, int]] | None:
    modules = dict(model.named_modules())
    stages = []
    for entry in info:
        if not isinstance(entry, dict):
            return None
        path = entry.get("module", entry.get("name"))
        channels = entry.get("num_chs", entry.get("channels"))
        stride = entry.get("reduction", entry.get("stride"))
        if path not in modules or not isinstance(channels, int):
            return None
        stages.append((path, channels, stride))
    if any(_num_convs(modules[path]) >= 2 for path, _, _ in stages):
        while _num_convs(modules[stages[0][0]]) < 2:
            stages.pop(0)  # the stem
    return stages


def _has_own_conv(module: nn.Module) -> bool:
    """A convolution, or a block holding one (not a container only passing through)."""
    return not isinstance(module, _CONTAINERS) and _num_convs(module) > 0


def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def _trunk_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules reached from the root through plain containers only: a block's insides (its
    SE's 1×1 maps, a ConvNeXt block's channels-last tensors) are not stage outputs."""
    found = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            found.append((path, child))
            if isinstance(child, _CONTAINERS):
                visit(path, child)

    visit("", model)
    return found


def _probe(model: nn.Module) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(path, module, output shape) of every 4-D trunk output, in the order modules finish."""
    conv = _first_conv(model)
    if conv is None:
        raise ValueError(
            f"insert_attention: no Conv2d in {type(model).__name__}, so no stages; "
            "pass module paths (where=[…])"
        )
    finished: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    handles = []
    for name, module in _trunk_modules(model):

        def record(m: nn.Module, inputs: Any, output: Any, name: str = name) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                finished.append((name, m, tuple(output.shape)))

        handles.append(module.register_forward_hook(record))
    was_training = model.training
    parameter = next(model.parameters())
    x = torch.zeros(1, conv.in_channels, PROBE_SIZE, PROBE_SIZE, dtype=parameter.dtype,
                    device=parameter.device)  # fmt: skip
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return finished


def _from_probe(model: nn.Module) -> list[tuple[str, int, int]]:
    runs: list[list[tuple[str, nn.Module, tuple[int, ...]]]] = []
    for entry in _probe(model):
        size = entry[2][2:]
        if size[0] * size[1] == 1:
            continue  # global pooling
        if runs and size == runs[-1][-1][2][2:]:
            runs[-1].append(entry)
        elif runs and (size[0] > runs[-1][-1][2][2] or size[1] > runs[-1][-1][2][3]):
            break  # the map grows again: past the trunk (adaptive pooling to a fixed size)
        else:
            runs.append([entry])
    # Runs without a convolution of their own (VGG's last pooling) hold no stage.
    runs = [r for r in runs if any(_has_own_conv(m) for _, m, _ in r)]

    def is_block(m: nn.Module) -> bool:
        return bool(list(m.children())) and not isinstance(m, _CONTAINERS)

    first = next((i for i, r in enumerate(runs) if any(is_block(m) for _, m, _ in r)), 0)
    stages = []
    for run in runs[first:]:
        outer = [(n, s) for n, m, s in run if list(m.children())]
        name, shape = outer[-1] if outer else (run[-1][0], run[-1][2])
        stages.append((name, shape[1], PROBE_SIZE // shape[2]))
    return stages


def stage_outputs(model: nn.Module) -> list[tuple[str, int, int | None]]:
    """(path, channels, stride) of every stage output, the last one included."""
    info = getattr(model, "feature_info", None)
    if info is not None:
        stages = _from_feature_info(model, info)
        if stages is not None:
            return stages
    return _from_probe(model)


def find_stages(model: nn.Module) -> list[tuple[str, int]]:
    """(path, channels) of every stage output but the last's: where BAM goes."""
    return [(path, channels) for path, channels, _ in stage_outputs(model)[:-1]]
