"""``attnlab export``: checkpoint → ONNX file, compared in onnxruntime; errors exit with 2."""

from __future__ import annotations

import onnx
import pytest
import torch

import attnlab
from attnlab.cli import main
from attnlab.engine.checkpoint import save_checkpoint
from attnlab.export import check_onnx


def write_checkpoint(path, **extra):
    model = attnlab.create_model("resnet20", attn="cbam", num_classes=4)
    state = {"model": model.state_dict(), "model_config": model.config, **extra}
    save_checkpoint(path, state)
    return model


def test_export_dynamic_and_check(tmp_path, capsys):
    checkpoint = tmp_path / "best.pt"
    model = write_checkpoint(checkpoint, data_info={"image_size": 32})
    assert main(["export", "--checkpoint", str(checkpoint), "--dynamic"]) == 0
    out = tmp_path / "best.onnx"
    onnx.checker.check_model(str(out))
    printed = capsys.readouterr().out
    assert "1×3×32×32" in printed and "2×3×64×64" in printed and "max |diff|" in printed
    check_onnx(model.eval(), out, torch.randn(3, 3, 40, 24))


def test_export_static_with_size_and_opset(tmp_path, capsys):
    checkpoint = tmp_path / "last.pt"
    write_checkpoint(checkpoint)
    target = tmp_path / "sub" / "m.onnx"
    args = ["export", "--checkpoint", str(checkpoint), "--out", str(target), "--opset", "13"]
    assert main([*args, "--input-size", "40", "--no-check"]) == 0
    graph = onnx.load(str(target))
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [13]
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 40, 40]
    assert "max |diff|" not in capsys.readouterr().out


def test_export_errors(tmp_path, capsys):
    checkpoint = tmp_path / "c.pt"
    write_checkpoint(checkpoint)
    assert main(["export", "--checkpoint", str(checkpoint)]) == 2  # no size recorded
    assert "--input-size" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err
    args = ["export", "--checkpoint", str(checkpoint), "--input-size", "32", "--opset", "2"]
    assert main(args) == 2
    assert "opset" in capsys.readouterr().err
    assert not (tmp_path / "c.onnx").exists()


@pytest.mark.parametrize("size", [0, -3])
def test_bad_input_size(tmp_path, size, capsys):
    checkpoint = tmp_path / "c.pt"
    write_checkpoint(checkpoint)
    assert main(["export", "--checkpoint", str(checkpoint), "--input-size", str(size)]) == 2
    assert "--input-size" in capsys.readouterr().err
