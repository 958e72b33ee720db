"""ONNX export: every attention module, ResNets, YOLOv4-tiny and DANet, run in onnxruntime.

Outputs are compared with PyTorch's within 1e-4 + 1e-4·max|value| (check_onnx: float32 networks
of a few dozen layers, where onnxruntime's kernels sum in another order than PyTorch's), at the
exported size and, with dynamic axes, at another batch and spatial size.
"""

from __future__ import annotations

import copy

import onnx
import pytest
import torch

import attnlab
from attnlab.export import (
    POOLING_OPS,
    ExportError,
    check_onnx,
    export_mode,
    export_onnx,
    onnx_op_types,
    run_onnx,
)
from attnlab.layers import CBAM, SE, CrissCrossAttention, MultiSpectralAttention, PositionAttention


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Parameters and BatchNorm statistics away from their initial values: zero-initialised
    scales (γ of DANet, zero_init_last) would otherwise turn the attention off."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():  # γ of PAM/CAM, zero biases: a scale that lets attention through
                p.copy_(torch.rand(p.shape, generator=g) * 0.4 + 0.1)
        for m in model.modules():
            if getattr(m, "running_var", None) is not None:  # BatchNorm statistics
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def small_resnet18(attn: str | None) -> torch.nn.Module:
    model = attnlab.create_model(
        "resnet18", attn=attn, num_classes=5, widths=(16, 32, 64, 128), zero_init_last=False
    )
    return randomized(model)


def round_trip(model, path, shape, other_shapes=(), dynamic=True, **kwargs) -> list[str]:
    export_onnx(model, shape, path, dynamic=dynamic, **kwargs)
    onnx.checker.check_model(str(path))
    # Standard operators only: no custom (kernel) operator was traced into the graph.
    assert {node.domain for node in onnx.load(str(path)).graph.node} <= {"", "ai.onnx"}
    for s in (shape, *other_shapes):
        check_onnx(model, path, torch.randn(*s))  # raises beyond the tolerance
    return onnx_op_types(path)


def test_gates_pool_by_reduce_ops(tmp_path):
    """CBAM's global pools become ReduceMean/ReduceMax, never an (adaptive) pooling op."""
    ops = round_trip(randomized(CBAM(16)), tmp_path / "cbam.onnx", (2, 16, 9, 7), [(1, 16, 5, 12)])
    assert "ReduceMean" in ops and "ReduceMax" in ops
    assert not set(ops) & set(POOLING_OPS)
    ops = round_trip(randomized(SE(16)), tmp_path / "se.onnx", (1, 16, 4, 4), [(3, 16, 7, 2)])
    assert "ReduceMean" in ops and not set(ops) & set(POOLING_OPS)


@pytest.mark.parametrize("attn", [None, "cbam", "pam"])  # the others: in the sweep below
def test_resnet18_round_trip(tmp_path, attn):
    model = small_resnet18(attn)
    ops = round_trip(model, tmp_path / "r.onnx", (1, 3, 64, 64), [(2, 3, 96, 64)])
    # The stem's 3×3 max pool is the only pooling operator; the head's pool is a mean.
    assert [op for op in ops if op in POOLING_OPS] == ["MaxPool"]
    assert "ReduceMean" in ops


# DANet's channel attention (CAM) takes a softmax of unscaled energies, sums over all H·W
# positions (as in the paper), which amplifies float32 rounding: in a randomized ResNet-18 with
# CAM in every block, PyTorch's own float32 output can differ from float64 by 1e-3 to 1e-1 for
# some weight draws. For it, onnxruntime is held to PyTorch's float32 accuracy instead of 1e-4.
ILL_CONDITIONED_IN_FLOAT32 = {"cam"}


def assert_as_accurate_as_pytorch(model, path, x):
    """max|onnx − float64| ≤ 2·max|PyTorch float32 − float64| + 1e-4."""
    with export_mode(model), torch.no_grad():
        single = model(x).double()
        double = copy.deepcopy(model).double()(x.double())
    onnx_error = float((run_onnx(path, x)[0].double() - double).abs().max())
    torch_error = float((single - double).abs().max())
    assert onnx_error <= 2 * torch_error + 1e-4, (onnx_error, torch_error)


@pytest.mark.slow
@pytest.mark.parametrize("attn", attnlab.list_attention())
def test_every_registered_attention_in_resnet18(tmp_path, attn):
    torch.manual_seed(0)
    model, path = small_resnet18(attn), tmp_path / "r.onnx"
    shapes = [(1, 3, 64, 64), (2, 3, 96, 64)]
    if attn in ILL_CONDITIONED_IN_FLOAT32:
        export_onnx(model, shapes[0], path, dynamic=True)
        onnx.checker.check_model(str(path))
        for shape in shapes:
            assert_as_accurate_as_pytorch(model, path, torch.randn(shape))
        ops = onnx_op_types(path)
    else:
        ops = round_trip(model, path, shapes[0], shapes[1:])
    assert [op for op in ops if op in POOLING_OPS] == ["MaxPool"]  # the stem's, nothing else


def test_criss_cross_masks_the_centre_without_eye_like(tmp_path):
    """The centre mask is a comparison of two ranges: no EyeLike (onnxruntime has no float
    kernel for it), and the column length stays symbolic (non-square maps at other sizes)."""
    ops = round_trip(randomized(CrissCrossAttention(16)), tmp_path / "c.onnx", (1, 16, 9, 7),
                     [(2, 16, 5, 12), (1, 16, 1, 3)])  # fmt: skip
    assert "EyeLike" not in ops and "Range" in ops and "Equal" in ops


@pytest.mark.parametrize("kwargs", [{}, {"dct_size": (7, 14)}, {"preset": "native"}])
def test_fca_exports_with_dynamic_size(tmp_path, kwargs):
    """FcaNet's pooling to the DCT grid is folded into its basis (built in the graph from the
    input's size): sizes below, at, above and between multiples of the grid, no pooling op."""
    model = randomized(MultiSpectralAttention(32, **kwargs))
    ops = round_trip(model, tmp_path / "f.onnx", (1, 32, 9, 7),
                     [(2, 32, 7, 14), (1, 32, 1, 1), (3, 32, 30, 23)])  # fmt: skip
    assert not set(ops) & set(POOLING_OPS) and "MatMul" in ops
    assert not [op for op in ops if "Pool" in op]  # no adaptive pooling either


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
@pytest.mark.parametrize("attn", ["se", "cbam"])  # every module: in the ResNet-18 sweep
def test_resnets_with_each_attention(tmp_path, name, attn):
    widths = {"resnet20": (16, 32, 64), "resnet50": (8, 16, 32, 64)}[name]
    model = randomized(
        attnlab.create_model(name, attn=attn, widths=widths, num_classes=4, zero_init_last=False)
    )
    round_trip(model, tmp_path / "r.onnx", (1, 3, 32, 32), [(3, 3, 40, 56)])


@pytest.mark.parametrize("phi", [2, pytest.param(0, marks=pytest.mark.slow)] + [
    pytest.param(p, marks=pytest.mark.slow) for p in (1, 3, 4)
])  # fmt: skip
def test_yolov4_tiny_raw_heads(tmp_path, phi):
    model = randomized(attnlab.create_model("yolov4_tiny", num_classes=3, phi=phi))
    path = tmp_path / "y.onnx"
    round_trip(model, path, (1, 3, 64, 64), [(2, 3, 96, 64)])
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["output0", "output1"]  # stride 32, stride 16


def test_danet_exports_position_attention_plainly(tmp_path):
    """PAM runs as MatMul + Softmax (its plain formulation), at any input size."""
    model = randomized(attnlab.create_model("danet_resnet20", num_classes=3))
    pam = next(m for m in model.modules() if isinstance(m, PositionAttention))
    pam.block_size = 16  # PyTorch takes the blocked kernel at these sizes
    path = tmp_path / "d.onnx"
    ops = round_trip(model, path, (1, 3, 32, 32), [(2, 3, 48, 40)])
    assert ops.count("Softmax") == 2 and "MatMul" in ops  # PAM and CAM
    # The same result as PyTorch's blocked kernel (PAM's own path at this budget).
    x = torch.randn(2, 3, 40, 32)
    with torch.no_grad():
        blocked = model(x)
    # check_onnx's tolerance: 1e-4 + 1e-4·max|value| (these logits reach the hundreds).
    error = float((run_onnx(path, x)[0] - blocked).abs().max())
    assert error <= 1e-4 + 1e-4 * float(blocked.abs().max())
    assert pam.block_size == 16  # restored


def test_export_mode_restores_and_uses_reference_path():
    model = small_resnet18("cbam").train()
    with export_mode(model):
        assert not model.training
    assert model.training


def test_static_export_fixes_the_size(tmp_path):
    model, path = small_resnet18("se"), tmp_path / "s.onnx"
    round_trip(model, path, (1, 3, 64, 64), dynamic=False)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        check_onnx(model, path, torch.randn(2, 3, 64, 64))


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="example_input"):
        export_onnx(SE(8), "1x8x4x4", tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="example_input"):
        export_onnx(SE(8), (1, 8, 0, 4), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(SE(8), (1, 8, 4, 4), tmp_path / "x.onnx", opset=3)
    with pytest.raises(ValueError, match="dynamo=True writes opset 18"):
        export_onnx(SE(8), (1, 8, 4, 4), tmp_path / "x.onnx", opset=17, dynamo=True)
    assert not list(tmp_path.iterdir())


class Unexportable(torch.nn.Module):
    """A module whose forward calls an operator that has no ONNX conversion."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.special.i1e(x.mean((2, 3), keepdim=True))


def test_unexportable_operator_names_the_module(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), Unexportable())
    with pytest.raises(ExportError, match=r"^export_onnx: 1 \(Unexportable\) .*opset 17.*--opset"):
        export_onnx(model, (1, 3, 8, 8), tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())  # no partial file left


@pytest.mark.slow
def test_dynamo_exporter(tmp_path):
    """The torch.export-based exporter (PyTorch's default; tens of seconds for a network, so a
    module here): the same operators, dynamic batch and size."""
    pytest.importorskip("onnxscript", reason="dynamo=True needs onnxscript")
    ops = round_trip(randomized(CBAM(16)), tmp_path / "d.onnx", (2, 16, 9, 7), [(1, 16, 5, 12)],
                     dynamo=True)  # fmt: skip
    assert "ReduceMean" in ops and "ReduceMax" in ops and not set(ops) & set(POOLING_OPS)
    imports = onnx.load(str(tmp_path / "d.onnx")).opset_import
    assert [o.version for o in imports if o.domain in ("", "ai.onnx")] == [18]


@pytest.mark.slow
@pytest.mark.parametrize("module_class", [CrissCrossAttention, MultiSpectralAttention])
def test_dynamo_exporter_keeps_sizes_symbolic(tmp_path, module_class):
    """The size-dependent graphs of cc (centre mask) and fca (pooling folded into the basis)
    under the torch.export-based exporter: symbolic batch, height and width."""
    pytest.importorskip("onnxscript", reason="dynamo=True needs onnxscript")
    ops = round_trip(randomized(module_class(16)), tmp_path / "d.onnx", (1, 16, 9, 7),
                     [(2, 16, 5, 12), (1, 16, 30, 23)], dynamo=True)  # fmt: skip
    assert "Range" in ops and "EyeLike" not in ops and not set(ops) & set(POOLING_OPS)
