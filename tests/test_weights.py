"""load_weights: matching by name, reports, shape refusals, files."""

from __future__ import annotations

import pytest
import torch

import attnlab


def test_plain_weights_into_a_model_with_attention():
    plain = attnlab.create_model("resnet18", num_classes=10)
    model = attnlab.create_model("resnet18", attn="cbam", stage_attn="bam", num_classes=10)
    report = attnlab.load_weights(model, plain.state_dict())
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(plain.state_dict())
    assert report.new_attention and all(
        ".attn." in k or k.startswith("stage_attn.") for k in report.new_attention
    )
    torch.testing.assert_close(model.layer2[1].conv1.weight, plain.layer2[1].conv1.weight)
    assert "new attention" in str(report)
    with pytest.raises(ValueError, match="load_weights \\(strict\\)"):
        attnlab.load_weights(model, plain.state_dict(), strict=True)


def test_missing_and_unexpected_are_reported():
    model = attnlab.create_model("resnet18", num_classes=10)
    state = model.state_dict()
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    report = attnlab.load_weights(attnlab.create_model("resnet18", num_classes=10), state)
    assert report.missing == ["layer1.0.conv1.weight"] and report.unexpected == ["extra.weight"]
    assert report.new_attention == []


def test_shape_mismatch_names_the_key_and_both_shapes():
    source = attnlab.create_model("resnet18", num_classes=10).state_dict()
    target = attnlab.create_model("resnet18", num_classes=5)
    with pytest.raises(
        ValueError, match=r"'fc\.weight': the model has \(5, 512\), the weights have \(10, 512\)"
    ):
        attnlab.load_weights(target, source)
    with pytest.raises(ValueError, match="shape mismatch for 'layer1.0.attn.fc1.weight'"):
        attnlab.load_weights(
            attnlab.create_model("resnet18", attn="se"),
            attnlab.create_model(
                "resnet18", attn="se", attn_kwargs={"rd_ratio": 1 / 4}
            ).state_dict(),
        )


def test_files_checkpoints_and_ddp_prefixes(tmp_path):
    source = attnlab.create_model("resnet20", attn="se")
    path = tmp_path / "ckpt.pt"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": state, "config": source.config, "epoch": 3}, path)
    target = attnlab.create_model("resnet20", attn="se")
    report = attnlab.load_weights(target, path, strict=True)
    assert len(report.loaded) == len(source.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))
    with pytest.raises(FileNotFoundError, match="no such file: .*absent.pt"):
        attnlab.load_weights(target, tmp_path / "absent.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*broken.pt"):
        attnlab.load_weights(target, broken)
    with pytest.raises(TypeError, match="non-tensor entries"):
        attnlab.load_weights(target, {"conv1.weight": [1, 2]})
