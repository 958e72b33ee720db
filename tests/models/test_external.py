"""tv:<name> and timm:<name> models: built without weights, attention inserted, a config that
rebuilds them (and so checkpoints), clear errors for unknown names and a missing timm."""

from __future__ import annotations

import sys

import pytest
import torch

import attnlab
from attnlab.engine.checkpoint import load_model, save_checkpoint
from attnlab.surgery import AttentionBlend

pytest.importorskip("torchvision")


def test_tv_model_rebuilds_from_its_config_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = attnlab.create_model("tv:mobilenet_v3_small", attn="eca", stage_attn="bam",
                                 num_classes=4).eval()  # fmt: skip
    x = torch.randn(2, 3, 32, 32)  # CIFAR-sized input: the last stage is 1×1
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 4)
    blocks = [i for i in model.insertions if i.attention == "ECA"]
    stages = [i for i in model.insertions if i.attention == "BAM"]
    assert len(blocks) == 11 and len(stages) == 3  # 11 inverted residuals, 4 stages
    assert model.config["name"] == "tv:mobilenet_v3_small"
    assert model.config["num_classes"] == 4 and model.config["stage_attn"] == "bam"
    rebuilt = attnlab.create_model(**model.config).eval()
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())  # strict: the same keys
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), y)
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": model.config})
    loaded, _ = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y)


def test_tv_model_gets_a_feature_info_for_grad_cam():
    from attnlab.viz.gradcam import default_layer

    model = attnlab.create_model("tv:resnet18", attn="se", num_classes=3)
    assert [(f["name"], f["channels"], f["stride"]) for f in model.feature_info] == [
        ("layer1", 64, 4), ("layer2", 128, 8), ("layer3", 256, 16), ("layer4", 512, 32)
    ]  # fmt: skip
    assert default_layer(model) == "layer4"
    assert isinstance(model.layer1[0].attn, AttentionBlend)


def test_timm_model_options_reach_timm_and_the_insertion():
    pytest.importorskip("timm")
    model = attnlab.create_model("timm:efficientnet_b0", attn="ca", num_classes=5, in_chans=1,
                                 replace_se=True, drop_rate=0.1)  # fmt: skip
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    assert model.config["in_chans"] == 1 and model.config["drop_rate"] == 0.1
    assert model.drop_rate == 0.1  # timm's own option
    assert all(i.replaced and i.site.endswith(".se") for i in model.insertions)
    assert model.feature_info[-1]["name"] == "blocks.6"  # timm's entries get attnlab's keys


@pytest.mark.parametrize(
    ("name", "error", "needle"),
    [
        ("tv:resnet5", ValueError, r"unknown tv model 'resnet5'; close matches: tv:resnet50"),
        ("timm:efficientnet_b9x", ValueError, r"close matches: timm:efficientnet_b"),
        ("tx:resnet18", ValueError, r"unknown model source 'tx' in 'tx:resnet18'; valid: timm, tv"),
    ],
)
def test_unknown_names_list_close_matches(name, error, needle):
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    with pytest.raises(error, match=needle):
        attnlab.create_model(name, num_classes=2)


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'attnlab\[timm\]'"):
        attnlab.create_model("timm:resnet18")


def test_bad_options_name_the_model():
    with pytest.raises(ValueError, match="tv:resnet18: torchvision models take 3 input channels"):
        attnlab.create_model("tv:resnet18", in_chans=1)
    with pytest.raises(ValueError, match="no residual blocks recognised in VGG"):
        attnlab.create_model("tv:vgg11", attn="se", num_classes=2)


def test_train_config_accepts_external_names():
    from attnlab.engine.config import TrainConfig

    assert TrainConfig(model="tv:resnet18").model == "tv:resnet18"
    with pytest.raises(ValueError, match="TrainConfig.model: unknown tv model 'resnet5'"):
        TrainConfig(model="tv:resnet5")


@pytest.mark.slow
def test_cli_trains_evaluates_and_predicts_an_external_model(tmp_path, capsys):
    from PIL import Image

    from attnlab.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "tv:mobilenet_v3_small", "--attn", "cbam", "--epochs", "1",
                 "--train-size", "16", "--val-size", "8", "--batch-size", "8",
                 "--out", str(out)]) == 0  # fmt: skip
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["model_config"]["name"] == "tv:mobilenet_v3_small"
    assert checkpoint["model_config"]["attn"] == "cbam"
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--json"]) == 0
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)
    assert main(["predict", "--checkpoint", str(out / "last.pt"), str(image), "--topk", "2"]) == 0
    assert "x.png" in capsys.readouterr().out


def test_bench_refuses_an_unknown_external_model_in_one_line(capsys):
    from attnlab.cli import main

    assert main(["bench", "models", "--quick", "--model", "tv:resnet5"]) == 2
    assert "--model: unknown tv model 'resnet5'; close matches: tv:resnet50" in (
        capsys.readouterr().err
    )
