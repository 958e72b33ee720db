"""insert_attention on networks attnlab did not build: identity at insertion, placement,
report, and errors that name the module path."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import attnlab
from attnlab.surgery import AttentionBlend


class PlainBasic(nn.Module):
    """A torchvision-style BasicBlock written with plain torch modules."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + shortcut)


class PlainBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, 4 * mid, 1, bias=False), nn.BatchNorm2d(4 * mid)
        self.relu = nn.ReLU()
        self.downsample = nn.Sequential(
            nn.Conv2d(cin, 4 * mid, 1, stride, bias=False), nn.BatchNorm2d(4 * mid)
        )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.downsample(x))


class PlainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(PlainBasic(16, 16), PlainBasic(16, 16))
        self.layer2 = nn.Sequential(PlainBasic(16, 32, 2), PlainBasic(32, 32))
        self.layer3 = nn.Sequential(PlainBottleneck(32, 16, 2))
        self.head = nn.Linear(64, 5)
        self.heads = nn.ModuleList([nn.Linear(64, 2)])

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(x.mean((2, 3)))


def make_net(seed: int = 0) -> PlainNet:
    torch.manual_seed(seed)
    net = PlainNet()
    with torch.no_grad():  # "pretrained": non-trivial BN statistics and affine parameters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("name", attnlab.list_attention())
@pytest.mark.parametrize("where", ["block", "stage", ["layer2.*.bn2", "layer3"]])
def test_identity_at_insertion_then_training_moves_away(name, where):
    net = make_net()
    x = torch.randn(4, 3, 16, 12)
    before = net(x)
    report = attnlab.insert_attention(net, name, where=where)
    assert report, "nothing inserted"
    after = net(x)
    assert (after - before).abs().max() < 1e-6
    optimiser = torch.optim.SGD(net.parameters(), lr=0.5)
    net.train()
    loss = (net(x) - torch.randn(4, 5, generator=torch.Generator().manual_seed(1))).square().mean()
    loss.backward()
    optimiser.step()
    net.eval()
    assert (net(x) - before).abs().max() > 1e-4


def test_block_report_and_placement():
    net = make_net()
    report = attnlab.insert_attention(net, "se", where="block")
    assert [(i.path, i.site, i.channels) for i in report] == [
        ("layer1.0", "layer1.0.bn2", 16),
        ("layer1.1", "layer1.1.bn2", 16),
        ("layer2.0", "layer2.0.bn2", 32),
        ("layer2.1", "layer2.1.bn2", 32),
        ("layer3.0", "layer3.0.bn3", 64),
    ]
    assert all(i.attention == "SE" and i.identity_init for i in report)
    assert "layer3.0.bn3" in str(report)
    # The attention acts on bn3's output, before the addition.
    block = net.layer3[0]
    assert isinstance(block.attn, AttentionBlend)
    with torch.no_grad():
        block.attn.alpha.fill_(1.0)
    x = torch.randn(2, 32, 8, 8)
    inner = block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))))
    bn = block.bn3  # calling it would run the hook: apply its eval-mode formula directly
    raw = nn.functional.batch_norm(
        block.conv3(inner), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
    )
    expected = block.relu(block.attn.attention(raw) + block.downsample(x))
    torch.testing.assert_close(block(x), expected)


def test_original_keys_are_kept_so_pretrained_weights_still_load():
    net = make_net()
    original = net.state_dict()
    attnlab.insert_attention(net, "cbam", where="block")
    attnlab.insert_attention(net, "bam", where="stage")
    keys = net.state_dict()
    assert set(original) <= set(keys)
    new = set(keys) - set(original)
    assert all(".attn." in k or ".output_attn." in k for k in new)
    fresh = make_net(seed=5)
    attnlab.insert_attention(fresh, "cbam", where="block")
    attnlab.insert_attention(fresh, "bam", where="stage")
    report = attnlab.load_weights(fresh, original)
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.new_attention) == sorted(new)


def test_stage_and_pattern_resolution():
    net = make_net()
    report = attnlab.insert_attention(net, "bam", where="stage")
    assert [(i.path, i.channels) for i in report] == [("layer1", 16), ("layer2", 32)]
    assert isinstance(net.layer1[-1], AttentionBlend)  # a Sequential runs it last
    report = attnlab.insert_attention(make_net(), "eca", where=["layer*.0.bn1", "stem.0"])
    assert [(i.path, i.channels) for i in report] == [
        ("layer1.0.bn1", 16),
        ("layer2.0.bn1", 32),
        ("layer3.0.bn1", 16),
        ("stem.0", 16),
    ]


def test_identity_init_off_and_modules_already_identity():
    net = make_net()
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    attnlab.insert_attention(net, "se", identity_init=False)
    assert (net(x) - before).abs().max() > 1e-3  # a sigmoid gate is not an identity
    net = make_net()
    report = attnlab.insert_attention(net, "pam", where="stage")  # γ = 0: no blend needed
    assert not isinstance(net.layer1[-1], AttentionBlend) and report[0].attention == (
        "PositionAttention"
    )
    assert (net(x) - before).abs().max() < 1e-6


def test_attnlab_models_use_their_block_slot():
    model = attnlab.create_model("resnet18", num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    report = attnlab.insert_attention(model, "cbam", kernel_size=3)
    assert len(report) == 8 and isinstance(model.layer1[0].attn, AttentionBlend)
    assert model.layer1[0].attn.attention.spatial_gate.kernel_size == 3
    assert (model(x) - before).abs().max() < 1e-6
    with pytest.raises(ValueError, match="block 'layer1.0' already has attention"):
        attnlab.insert_attention(model, "se")


def test_inserted_model_deep_copies():
    net = make_net()
    attnlab.insert_attention(net, "se", identity_init=False)
    clone = copy.deepcopy(net)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(clone(x), net(x))
    with torch.no_grad():
        clone.layer1[0].attn.fc2.bias.add_(5.0)
    assert (clone(x) - net(x)).abs().max() > 1e-4  # the copy's hook uses the copy's module


@pytest.mark.parametrize(
    ("where", "needle"),
    [
        (["layer9"], "no module matches 'layer9'"),
        (["heads"], "cannot place attention after 'heads'"),
        (["stem.2"], "cannot infer the output channels of 'stem.2'"),
        ("everywhere", "where must be 'block', 'stage' or a list"),
    ],
)
def test_errors_name_the_module_path(where, needle):
    with pytest.raises(ValueError, match=needle):
        attnlab.insert_attention(make_net(), "se", where=where)


def test_models_without_blocks_or_stages_are_refused():
    mlp = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    with pytest.raises(ValueError, match="no residual blocks recognised in Sequential"):
        attnlab.insert_attention(mlp, "se")
    with pytest.raises(ValueError, match="no stages found"):
        attnlab.insert_attention(mlp, "se", where="stage")
    with pytest.raises(ValueError, match="unknown attention 'xx'"):
        attnlab.insert_attention(make_net(), "xx")
    with pytest.raises(ValueError, match="must name an attention module"):
        attnlab.insert_attention(make_net(), None)
    net = make_net()
    attnlab.insert_attention(net, "se", where=["layer3"])
    with pytest.raises(ValueError, match="'layer3' already has output attention"):
        attnlab.insert_attention(net, "se", where=["layer3"])
    assert (
        attnlab.insert_attention(make_net(), "se", where=["stem.2"], channels=16)[0].channels == 16
    )
