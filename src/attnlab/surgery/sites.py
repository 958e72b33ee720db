"""Where a residual block's branch ends, found from the block's own forward code.

A module is a residual block when its forward adds its input (or a projection of it) to a
branch of parameterised layers. Each candidate module is traced once with ``torch.fx``, its
children kept as opaque calls, and the residual addition is read off the graph: the operand
reached through more parameterised children is the branch, the other the shortcut. Attention
then goes on the branch, before the addition (the SE/CBAM/ECA/CA placement):

- on the output of the branch's last child when that child has parameters (a ResNet block's
  ``bn3``, a RegNet block's ``f``, a MobileNetV2 block's ``conv``);
- on the input of the branch's last child when it is parameter-free and called once (timm's
  ``drop_path``, torchvision's ``stochastic_depth``): after a layer scale, before the drop.

Blocks of the same class without a residual addition (the first, strided block of a MobileNet
or EfficientNet stage) take attention on their output: there the branch is the whole block.
Nothing is matched by class or attribute name, so any block written in the same way is found.
(Convolutional neural networks with residual connections: He et al., arXiv 1512.03385.)

Example:
    >>> import torch, torchvision
    >>> from attnlab.surgery.sites import find_blocks
    >>> model = torchvision.models.mobilenet_v2()
    >>> blocks = find_blocks(model)
    >>> [(b.path, b.site, b.hook, b.channels) for b in blocks[1:3]]
    [('features.2', '', 'output', 24), ('features.3', 'conv', 'output', 24)]
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}


@dataclass(frozen=True)
class BlockSite:
    """Where attention goes inside one block.

    Attributes:
        path: the block's path in the model.
        site: the child (relative path) whose output or input carries the branch; ``""`` for
            the block itself (blocks without a residual addition).
        hook: ``"output"`` or ``"input"``: which side of ``site`` the attention takes;
            ``"slot"``: the block calls its own ``attn`` child there (attnlab's blocks).
        channels: channels of the branch at the site.
        se: relative path of the block's own squeeze-excitation module, if it has one.
        se_channels: channels of that module's input.
    """

    path: str
    site: str
    hook: str
    channels: int
    se: str | None = None
    se_channels: int | None = None


class _ChildrenAsCalls(fx.Tracer):
    """Traces one module's forward, keeping each of its children as a single call."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        self.traced_root = root

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self.traced_root


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _own_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def infer_channels(module: nn.Module) -> int | None:
    """Output channels of ``module``: those of its last conv, norm or linear layer."""
    for m in reversed(list(module.modules())):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return m.out_channels
        if isinstance(m, _BATCH_NORMS):
            return m.num_features
        if isinstance(m, nn.GroupNorm):
            return m.num_channels
        if isinstance(m, nn.LayerNorm) and m.normalized_shape:
            return m.normalized_shape[-1]
        if isinstance(m, nn.Linear):
            return m.out_features
    return None


def is_squeeze_excite(module: nn.Module) -> bool:
    """Squeeze-excitation by structure: exactly two parameterised children, 1×1 convs or
    linears C → r → C with r < C (timm's, torchvision's, attnlab's SE alike)."""
    layers = [m for m in module.children() if _has_params(m)]
    if len(layers) != 2 or not all(isinstance(m, (nn.Conv2d, nn.Linear)) for m in layers):
        return False

    def shape(m: nn.Module) -> tuple[int, int]:
        if isinstance(m, nn.Linear):
            return m.in_features, m.out_features
        return (m.in_channels, m.out_channels) if m.kernel_size == (1, 1) else (-1, -2)

    (a_in, a_out), (b_in, b_out) = shape(layers[0]), shape(layers[1])
    return a_in == b_out > 0 and a_out == b_in and 0 < a_out < a_in


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, stack = set(), [node]
    while stack:
        for arg in stack.pop().all_input_nodes:
            if arg not in seen:
                seen.add(arg)
                stack.append(arg)
    return seen


def _trace(module: nn.Module) -> fx.Graph | None:
    try:
        return _ChildrenAsCalls(module).trace(module)
    except Exception:  # control flow on tensor values, unusual arguments: not a plain block
        return None


def _residual_branch(graph: fx.Graph, module: nn.Module) -> fx.Node | None:
    """The branch operand of the block's last residual addition, or None."""
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if not inputs:
        return None
    children = dict(module.named_modules())

    def weight(nodes: set[fx.Node]) -> int:  # parameterised layers inside a path's children
        return sum(
            sum(1 for m in children[str(n.target)].modules() if _own_params(m))
            for n in nodes
            if n.op == "call_module"
        )

    branch = None
    for node in graph.nodes:
        if node.op not in ("call_function", "call_method") or node.target not in _ADDS:
            continue
        operands = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        if len(operands) != 2:
            continue
        lines = [_ancestors(a) | {a} for a in operands]
        if not all(inputs[0] in line for line in lines):
            continue
        only = [line - lines[1 - i] for i, line in enumerate(lines)]
        weights = [weight(only[0]), weight(only[1])]
        if max(weights) >= 1 and weights[0] != weights[1]:
            branch = operands[weights.index(max(weights))]
    return branch


def _upstream(node: fx.Node) -> fx.Node | None:
    """The data input of ``node`` (its first input that is not a parameter read)."""
    parents = [a for a in node.all_input_nodes if a.op != "get_attr"]
    return parents[0] if parents and node.op != "placeholder" else None


def _site_on_branch(graph: fx.Graph, module: nn.Module, branch: fx.Node) -> tuple[str, str, int]:
    """(child, hook side, channels) for the end of the branch; ("", "", 0) if none."""
    children = dict(module.named_modules())
    calls: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    node = branch
    while node is not None:
        if node.op == "call_module" and calls[str(node.target)] == 1:
            child = children[str(node.target)]
            if _has_params(child):
                return str(node.target), "output", infer_channels(child) or 0
            # A parameter-free end (drop path): attention on its input, whose width is that
            # of the nearest parameterised layer upstream.
            producer = _upstream(node)
            while producer is not None and not (
                producer.op == "call_module" and _has_params(children[str(producer.target)])
            ):
                producer = _upstream(producer)
            if producer is None:
                return "", "", 0
            return str(node.target), "input", infer_channels(children[str(producer.target)]) or 0
        node = _upstream(node)  # a function (layer scale, permute) or a shared module
    return "", "", 0


def _find_se(module: nn.Module) -> tuple[str | None, int | None]:
    for name, m in module.named_modules():
        if name and is_squeeze_excite(m):
            first = next(c for c in m.children() if _has_params(c))
            width = first.in_features if isinstance(first, nn.Linear) else first.in_channels
            return name, width
    return None, None


def block_site(module: nn.Module, path: str) -> BlockSite | None:
    """The attention site of ``module`` if it is a residual block, else None."""
    graph = _trace(module)
    if graph is None:
        return None
    branch = _residual_branch(graph, module)
    if branch is None:
        return None
    site, hook, channels = _site_on_branch(graph, module, branch)
    if not hook or channels <= 0:
        return None
    se, se_channels = _find_se(module)
    return BlockSite(path, site, hook, channels, se, se_channels)


def _candidate(module: nn.Module, skip: tuple[type, ...]) -> bool:
    if isinstance(module, _CONTAINERS + skip):
        return False
    if type(module).__module__.startswith("torch.nn."):
        return False  # torch's own layers are never blocks
    convs = sum(1 for m in module.modules() if isinstance(m, nn.Conv2d))
    layers = sum(1 for m in module.modules() if _has_params(m) and not list(m.children()))
    return convs >= 1 and layers >= 2


def find_blocks(model: nn.Module, skip: tuple[type, ...] = ()) -> list[BlockSite]:
    """Residual blocks of ``model`` in forward-definition order (outermost first; nothing
    inside a block is searched), then same-class blocks without a residual addition.

    Args:
        model: the network.
        skip: module classes never treated as blocks (inserted attention).
    """
    found: dict[str, BlockSite] = {}
    block_types: set[type] = set()
    unmatched: list[tuple[str, nn.Module]] = []

    def visit(name: str, module: nn.Module) -> None:
        if isinstance(module, skip):
            return
        if hasattr(module, "attention_site"):  # attnlab's blocks: an ``attn`` slot they call
            norm, width = module.attention_site()
            found[name] = BlockSite(name, norm, "slot", width)
            return
        if name and _candidate(module, skip):
            site = block_site(module, name)
            if site is not None:
                found[name] = site
                block_types.add(type(module))
                return
            unmatched.append((name, module))
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", model)
    for name, module in unmatched:
        if type(module) in block_types and not any(p.startswith(name + ".") for p in found):
            width = infer_channels(module)
            if width:
                se, se_channels = _find_se(module)
                found[name] = BlockSite(name, "", "output", width, se, se_channels)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(found.values(), key=lambda s: order[s.path])
