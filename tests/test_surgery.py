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


class SEGate(nn.Module):
    """A squeeze-excitation written plainly: two 1×1 convs C → C/4 → C."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.expand = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))


class InvertedResidual(nn.Module):
    """Expand, depthwise, SE, project; the shortcut only where shapes allow (MobileNet style),
    with a parameter-free drop layer ending the branch."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        mid = 4 * cin
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.depthwise = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.se = SEGate(mid)
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.drop = nn.Dropout(0.0)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(torch.relu(self.depthwise(torch.relu(self.expand(x))))))
        return x + self.drop(y) if self.has_skip else y


class DenseStage(nn.ModuleDict):
    """A container whose own forward runs every child and concatenates (DenseNet style)."""

    def __init__(self, cin: int) -> None:
        super().__init__({"a": nn.Conv2d(cin, 4, 3, 1, 1), "b": nn.Conv2d(cin + 4, 4, 3, 1, 1)})

    def forward(self, x):
        for layer in self.values():
            x = torch.cat([x, layer(x)], 1)
        return x


def mobile_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1), InvertedResidual(8, 8), InvertedResidual(8, 16, 2),
        InvertedResidual(16, 16), DenseStage(16), nn.Conv2d(24, 8, 1),
    ).eval()  # fmt: skip


def test_globs_match_one_segment_per_star():
    names = ["layer1", "layer1.0", "layer1.0.bn1", "layer2.0.bn1"]
    assert attnlab.surgery.match_paths(names, "layer*.*") == ["layer1.0"]
    assert attnlab.surgery.match_paths(names, "layer*.*.bn1") == ["layer1.0.bn1", "layer2.0.bn1"]
    assert attnlab.surgery.match_paths(names, "**.bn1") == ["layer1.0.bn1", "layer2.0.bn1"]
    report = attnlab.insert_attention(make_net(), "se", where=["layer*.*"])  # blocks only
    assert [i.path for i in report] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0"]


def test_an_explicit_block_path_puts_attention_on_its_branch():
    net = make_net()
    report = attnlab.insert_attention(net, "se", where=["layer3.0"])
    assert [(i.path, i.site, i.channels) for i in report] == [("layer3.0", "layer3.0.bn3", 64)]
    assert isinstance(net.layer3[0].attn, AttentionBlend)
    assert not hasattr(net.layer3[0], "output_attn")


def test_inverted_residuals_existing_se_and_replace_se():
    model = mobile_net()
    x = torch.randn(2, 3, 12, 12)
    before = model(x)
    report = attnlab.insert_attention(model, "eca", where="block")
    # Residual blocks: before the parameter-free drop; the strided block: its output.
    assert [(i.path, i.site, i.hook, i.channels, i.existing_se) for i in report] == [
        ("1", "1.drop", "input", 8, "1.se"),
        ("2", "2", "output", 16, "2.se"),
        ("3", "3.drop", "input", 16, "3.se"),
    ]
    assert "replace_se=True replaces it" in str(report)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    model = mobile_net()
    report = attnlab.insert_attention(model, "eca", where="block", replace_se=True)
    assert [(i.site, i.channels, i.replaced) for i in report] == [
        ("1.se", 32, True), ("2.se", 32, True), ("3.se", 64, True)
    ]  # fmt: skip
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    # At α = 1 the SE's output is replaced by the new attention's.
    with torch.no_grad():
        model[1].attn.alpha.fill_(1.0)
    block, h = model[1], model[0](x)
    hidden = torch.relu(block.depthwise(torch.relu(block.expand(h))))
    expected = h + block.project(block.attn.attention(hidden))
    torch.testing.assert_close(block(h), expected)


class Wrapped(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def test_a_container_running_its_children_keeps_the_attention_on_an_ancestor():
    with pytest.raises(ValueError, match="'4': it runs its own children and every ancestor"):
        attnlab.insert_attention(mobile_net(), "se", where=["4"])
    model = Wrapped(mobile_net())
    x = torch.randn(2, 3, 12, 12)
    before = model(x)
    report = attnlab.insert_attention(model, "se", where=["net.4"])
    assert [(i.path, i.channels) for i in report] == [("net.4", 4)]  # its last conv's width
    assert list(model.net[4].keys()) == ["a", "b"]  # not run as a third layer
    assert isinstance(model.output_attn_net_4, AttentionBlend)
    with pytest.raises(ValueError, match=r"tensor at 'net.4' has shape \(2, 24, 6, 6\)"):
        model(x)  # the block's output has 24 channels, not its last conv's 4
    model = Wrapped(mobile_net())
    attnlab.insert_attention(model, "se", where=["net.4"], channels=24)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)


def test_stages_by_probe_and_a_site_of_the_wrong_width():
    report = attnlab.insert_attention(mobile_net(), "se", where="stage")
    assert [(i.path, i.channels) for i in report] == [("1", 8)]  # 12×12 run; the last run left
    model = mobile_net()
    attnlab.insert_attention(model, "se", where=["0"], channels=5)
    with pytest.raises(ValueError, match=r"tensor at '0' has shape \(1, 8, 12, 12\)"):
        model(torch.randn(1, 3, 12, 12))
