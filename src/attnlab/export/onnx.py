"""ONNX export of attnlab models and modules, checked in onnxruntime.

The ONNX format (https://onnx.ai) and the attention modules it carries: SE (arXiv 1709.01507),
CBAM (arXiv 1807.06521), ECA (arXiv 1910.03151), DANet (arXiv 1809.02983) and the others of the
registry. Global pooling in the modules is ``mean``/``amax`` over dims, which exports as
``ReduceMean``/``ReduceMax`` (no adaptive pooling operator, whose ONNX export depends on the
input size).

- **Exporter**: :func:`torch.onnx.export` with ``dynamo=False`` (the TorchScript-based
  exporter) by default: it needs only ``onnx`` and exports a ResNet-18 in well under a second.
  PyTorch's default, ``dynamo=True`` (the ``torch.export``-based exporter), needs the
  ``onnxscript`` package and takes tens of seconds per network; ``dynamo=True`` here selects
  it. Both are checked by the tests.
- **Reference path**: the fused kernels of the gate modules are operators ONNX does not know;
  the export runs under the reference backend, so the graph holds the modules' own equations.
- **DANet's position attention**: the blocked kernel (a custom operator) is replaced by the
  plain formulation, softmax(QᵀK) applied to V with one N×N matrix (``MatMul`` + ``Softmax``),
  for every input size; scaled-dot-product attention is not used.
- **Dynamic shapes** (``dynamic=True``): batch, height and width of a 4-D input are symbolic.
  Models with fixed constraints still apply them (YOLOv4-tiny: multiples of 32).
- An operator the exporter cannot handle raises :class:`ExportError` naming the first module
  (an attention module where one fails alone) and what to try instead.

Example:
    >>> import os, tempfile, torch
    >>> from attnlab.layers import CBAM
    >>> from attnlab.export import export_onnx, check_onnx
    >>> cbam = CBAM(16)
    >>> path = export_onnx(cbam, (1, 16, 8, 8), os.path.join(tempfile.mkdtemp(), "c.onnx"))
    >>> check_onnx(cbam, path, torch.randn(1, 16, 8, 8)) < 1e-4
    True
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..kernels import backend as kernel_backend
from ..layers.danet import PositionAttention
from ..registry import ATTENTION, list_attention

DEFAULT_OPSET = 17
DYNAMO_MIN_OPSET = 18  # the torch.export-based exporter writes opset 18 and newer
POOLING_OPS = ("GlobalAveragePool", "GlobalMaxPool", "AveragePool", "MaxPool")


class ExportError(ValueError):
    """A model or module that the ONNX exporter cannot convert (the message says which).

    A ValueError: the model given is one the exporter does not take, like any other bad input.
    """


def make_input(example: Tensor | Sequence[int]) -> Tensor:
    """A tensor from ``example``: itself, or a standard-normal tensor of that shape."""
    if isinstance(example, Tensor):
        return example
    if not isinstance(example, (tuple, list)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in example
    ):
        raise TypeError(
            f"export_onnx: example_input must be a tensor or a shape of positive ints, "
            f"got {example!r}"
        )
    return torch.randn(*example, generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, the reference backend and plain position attention, restored on exit."""
    was_training = model.training
    blocks = {m: m.block_size for m in model.modules() if isinstance(m, PositionAttention)}
    model.eval()
    try:
        for module in blocks:
            # One block holding every query: the plain formulation (block_size >= N).
            module.block_size = 2**62
        with kernel_backend("reference"):
            yield
    finally:
        for module, size in blocks.items():
            module.block_size = size
        model.train(was_training)


def _output_names(model: nn.Module, x: Tensor) -> list[str]:
    with torch.no_grad():
        out = model(x)
    if isinstance(out, Tensor):
        return ["output"]
    if isinstance(out, dict):
        return [str(k) for k in out]
    return [f"output{i}" for i in range(len(out))]


def _culprit(model: nn.Module, x: Tensor, opset: int, dynamic: bool, dynamo: bool) -> str:
    """The deepest submodule that fails to export alone, as ``"name (Class)"``.

    Each submodule called with one tensor is exported alone with the input it received;
    attention modules are tried first (they hold the unusual operators), then the others,
    deepest first.
    """
    calls: dict[nn.Module, Tensor] = {}
    handles = []

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        if len(args) == 1 and isinstance(args[0], Tensor) and not kwargs:
            calls.setdefault(mod, args[0])

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(x)
    except Exception:
        pass  # the modules called before a failure are still candidates
    finally:
        for handle in handles:
            handle.remove()
    names = {m: n for n, m in model.named_modules()}
    attention = _attention_classes()
    order = sorted(
        (m for m in calls if m is not model),
        key=lambda m: (not isinstance(m, attention), -names[m].count(".")),
    )
    with tempfile.TemporaryDirectory() as folder:
        for module in order:
            try:
                _run_exporter(module, calls[module], os.path.join(folder, "m.onnx"), opset,
                              dynamic, dynamo)  # fmt: skip
            except Exception:
                return f"{names[module]} ({type(module).__name__})"
    return f"the model ({type(model).__name__})"


def _attention_classes() -> tuple[type, ...]:
    found = [ATTENTION.get(n).factory for n in list_attention()]
    return tuple(c for c in found if isinstance(c, type))


def _run_exporter(
    model: nn.Module, x: Tensor, path: str, opset: int, dynamic: bool, dynamo: bool
) -> list[str]:
    names = _output_names(model, x)
    kwargs: dict[str, Any] = {"input_names": ["input"], "output_names": names}
    if dynamo:
        if dynamic:
            dims = {0: torch.export.Dim("batch", min=1)}
            if x.dim() == 4:
                dims.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
            kwargs["dynamic_shapes"] = (dims,)
        kwargs.update(dynamo=True, optimize=True)
    else:
        if dynamic:
            axes = {0: "batch", 2: "height", 3: "width"} if x.dim() == 4 else {0: "batch"}
            kwargs["dynamic_axes"] = {"input": axes, **{n: {0: "batch"} for n in names}}
        kwargs["dynamo"] = False
    with warnings.catch_warnings():
        # The TorchScript-based exporter announces its deprecation on every call; tracer
        # warnings concern Python values frozen into the graph, which the onnxruntime check
        # at other sizes is there to catch.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (x,), path, opset_version=opset, **kwargs)
    return names


def export_onnx(
    model: nn.Module,
    example_input: Tensor | Sequence[int],
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    dynamic: bool = False,
    dynamo: bool = False,
) -> str:
    """Writes ``model`` as an ONNX file (atomically: a temporary file, then a rename).

    Args:
        model: any attnlab model or module (exported in eval mode; its mode is restored).
        example_input: an input tensor, or its shape (a random tensor is made).
        path: the ``.onnx`` file to write.
        opset: the ONNX opset version (default 17; with ``dynamo=True`` 18, the lowest that
            exporter writes: it cannot convert its graphs down reliably).
        dynamic: symbolic batch (and height and width of 4-D inputs).
        dynamo: use the ``torch.export``-based exporter (needs ``onnxscript``).

    Returns:
        The path written, as a string.

    Raises:
        ExportError: the exporter failed; the message names the failing module.
        TypeError: ``example_input`` is neither a tensor nor a shape.
        ValueError: ``opset`` is out of range.
    """
    if opset is None:
        opset = DYNAMO_MIN_OPSET if dynamo else DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or not 9 <= opset <= 23:
        raise ValueError(f"export_onnx: opset must be an int in 9…23, got {opset!r}")
    if dynamo and opset < DYNAMO_MIN_OPSET:
        raise ValueError(
            f"export_onnx: dynamo=True writes opset {DYNAMO_MIN_OPSET} or newer, got {opset}; "
            f"use dynamo=False for older opsets"
        )
    x = make_input(example_input)
    if dynamo:
        try:
            import onnxscript  # noqa: F401
        except ImportError as err:
            raise ExportError(
                "export_onnx: dynamo=True needs the onnxscript package (pip install onnxscript); "
                "dynamo=False uses the TorchScript-based exporter, which needs only onnx"
            ) from err
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(suffix=".onnx", dir=folder)
    os.close(handle)
    try:
        with export_mode(model):
            try:
                _run_exporter(model, x, tmp, opset, dynamic, dynamo)
            except Exception as err:
                where = _culprit(model, x, opset, dynamic, dynamo)
                other = "dynamo=False" if dynamo else "dynamo=True (needs onnxscript)"
                raise ExportError(
                    f"export_onnx: {where} cannot be exported at opset {opset}: "
                    f"{str(err).splitlines()[0] if str(err) else type(err).__name__}. "
                    f"Try another opset (--opset), {other}, or replace that module"
                ) from err
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def onnx_op_types(path: str | os.PathLike) -> list[str]:
    """The operator types of an ONNX file's graph, in graph order (needs ``onnx``)."""
    import onnx

    return [node.op_type for node in onnx.load(os.fspath(path)).graph.node]


def run_onnx(path: str | os.PathLike, x: Tensor) -> list[Tensor]:
    """Runs an exported file in onnxruntime (CPU) on ``x``; one tensor per output."""
    import onnxruntime

    ort_session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    feed = {ort_session.get_inputs()[0].name: x.detach().cpu().float().numpy()}
    return [torch.from_numpy(out) for out in ort_session.run(None, feed)]


def _flatten(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return list(out.values())
    return list(out)


def check_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    x: Tensor,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs on ``x``.

    PyTorch runs ``model`` as it was exported (eval mode, reference backend, plain position
    attention). Each output must satisfy max|onnx − torch| ≤ atol + rtol·max|torch|: the two
    runtimes sum in different orders, so float32 rounding grows with the values' scale.

    Raises:
        ValueError: the outputs differ by more than that, or in number or shape.
    """
    with export_mode(model), torch.no_grad():
        expected = _flatten(model(x))
    got = run_onnx(path, x)
    if len(got) != len(expected):
        raise ValueError(
            f"check_onnx: {os.fspath(path)} gives {len(got)} outputs, PyTorch {len(expected)}"
        )
    worst = 0.0
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        if a.shape != b.shape:
            raise ValueError(
                f"check_onnx: {os.fspath(path)} output {i} has shape {tuple(a.shape)}, "
                f"PyTorch {tuple(b.shape)} (input {tuple(x.shape)})"
            )
        if not a.numel():
            continue
        error, scale = float((a - b.float()).abs().max()), float(b.float().abs().max())
        worst = max(worst, error)
        if error > atol + rtol * scale:
            raise ValueError(
                f"check_onnx: {os.fspath(path)} output {i} differs from PyTorch by {error:.3g} "
                f"(allowed: {atol} + {rtol}·{scale:.3g}, the largest |value|; "
                f"input {tuple(x.shape)})"
            )
    return worst
