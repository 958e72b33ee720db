"""Export never traces the kernels' fast path: a fused model under the ``fast`` backend exports
the modules' reference equations (standard ONNX operators), equal to PyTorch's output."""

from __future__ import annotations

import onnx
import pytest
import torch

import attnlab
from attnlab import kernels
from attnlab.export import check_onnx, export_onnx, run_onnx


@pytest.mark.skipif(not kernels.available(), reason="the CPU kernels do not build here")
@pytest.mark.parametrize("attn", ["cbam", "se"])  # the gate's tail; the folded norm
def test_fused_model_under_fast_backend_exports_reference_path(tmp_path, attn):
    torch.manual_seed(0)
    model = attnlab.create_model("resnet20", attn=attn, num_classes=4, zero_init_last=False)
    model.eval()
    reference = attnlab.create_model("resnet20", attn=attn, num_classes=4)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    assert kernels.fuse(model) > 0
    path = tmp_path / "fused.onnx"
    x = torch.randn(2, 3, 32, 32)
    with kernels.backend("fast"):
        export_onnx(model, x, path, dynamic=True)
        assert kernels.get_backend() == "fast"  # restored after the export
        check_onnx(model, path, torch.randn(1, 3, 40, 24))
    assert {n.domain for n in onnx.load(str(path)).graph.node} <= {"", "ai.onnx"}
    with torch.no_grad(), kernels.backend("reference"):
        expected = reference(x)
    torch.testing.assert_close(run_onnx(path, x)[0], expected, rtol=1e-4, atol=1e-4)
