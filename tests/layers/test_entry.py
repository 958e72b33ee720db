"""The C entry in front of fused.residual_relu at inference (csrc/entry.h's residual_call).

It must run exactly what the Python path runs where it runs (the same operator call: equal
outputs, bit for bit), and decline — returning None, having run nothing — wherever anything
differs from the common case, so that the Python path decides (and gives its errors).
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_fused import _norm  # an eval-mode BatchNorm2d off its defaults (tests/layers: sys.path)

from attnlab import create_attention
from attnlab.layers import CBAM, capture_maps, fused

AVAILABLE = fused.available()
pytestmark = pytest.mark.skipif(
    not AVAILABLE, reason=f"fused kernels unavailable: {fused.build_error()}"
)

GATES = {
    "se": ("se", {}),
    "eca": ("eca", {}),
    "cbam": ("cbam", {}),
    "cbam-paper": ("cbam", {"preset": "paper"}),  # no spatial BatchNorm
    "cbam-official": ("cbam", {"preset": "official"}),  # spatial BatchNorm, max-first order
    "cbam-max-pool": ("cbam", {"pool_types": ("max",)}),
    "cbam-channel-only": ("cbam", {"spatial": False}),
}


def _gate(key: str, channels: int = 16, dtype=torch.float32) -> torch.nn.Module:
    name, kwargs = GATES[key]
    torch.manual_seed(0)
    module = create_attention(name, channels, **kwargs)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for m in module.modules():  # spatial BatchNorm: running statistics of its own
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.fill_(0.2)
                m.running_var.fill_(1.5)
    return module.to(dtype).eval()


@pytest.fixture
def entry(monkeypatch):
    """The C entry's answers, in order: "ran" or "declined"."""
    real = fused._state["entry"]
    assert real is not None, "the extension built without its C entry"
    log = []

    def recorded(*args):
        out = real(*args)
        log.append("declined" if out is None else "ran")
        return out

    monkeypatch.setitem(fused._state, "entry", recorded)
    return log


def _python_path(fn):
    """fn() with the C entry off: what residual_relu's Python gives."""
    real = fused._state["entry"]
    fused._state["entry"] = None
    try:
        return fn()
    finally:
        fused._state["entry"] = real


def _inputs(shape, layout="contiguous", dtype=torch.float32):
    torch.manual_seed(5)
    z, s = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    if layout == "channels_last":
        z, s = (
            z.contiguous(memory_format=torch.channels_last),
            s.contiguous(memory_format=torch.channels_last),
        )
    return z, s


@pytest.mark.parametrize("key", list(GATES))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm_kwargs", [None, {}, {"affine": False}])
def test_entry_runs_what_the_python_path_runs(key, layout, dtype, norm_kwargs, entry):
    module = _gate(key, dtype=dtype)
    z, s = _inputs((2, 16, 5, 7), layout, dtype)
    norm = None if norm_kwargs is None else _norm(16, dtype, **norm_kwargs)
    with torch.no_grad():
        first = fused.residual_relu(module, z, s, norm)  # makes the plan (the Python path)
        y = fused.residual_relu(module, z, s, norm)
        y_python = _python_path(lambda: fused.residual_relu(module, z, s, norm))
    assert entry == ["declined", "ran"]
    assert torch.equal(y, y_python) and torch.equal(first, y)
    assert y.is_contiguous(memory_format=_format(layout))


def _format(layout):
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def test_entry_takes_a_non_dense_input_as_the_python_path_does(entry):
    module = _gate("cbam")
    z, s = _inputs((2, 16, 7, 5))
    zt = z.transpose(2, 3)  # neither NCHW- nor channels-last-contiguous
    st = s.transpose(2, 3)
    with torch.no_grad():
        fused.residual_relu(module, zt, st, _norm(16))
        y = fused.residual_relu(module, zt, st, _norm(16))
        y_python = _python_path(lambda: fused.residual_relu(module, zt, st, _norm(16)))
    assert entry[-1] == "ran" and torch.equal(y, y_python)


def test_entry_runs_inside_a_resnet_at_inference(entry):
    model = __import__("attnlab").create_model("resnet50", attn="cbam", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)  # the plans
        entry.clear()
        y = model(x)
        y_python = _python_path(lambda: model(x))
    assert entry == ["ran"] * 16 and torch.equal(y, y_python)
    entry.clear()
    with torch.inference_mode():  # grad mode off too: the same call
        y_inference = model(x)
    assert entry == ["ran"] * 16 and torch.equal(y_inference, y)


# Each case: (setup(module, z, s, norm) -> (z, s, norm, cleanup)), where the C entry must
# decline; the Python path then gives the same as with the entry off.
def _hook_on_gate(m, z, s, n):
    h = m.register_forward_hook(lambda *a: None)
    return z, s, n, h.remove


def _global_hook(m, z, s, n):
    h = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    return z, s, n, h.remove


def _hook_on_norm(m, z, s, n):
    h = n.register_forward_pre_hook(lambda *a: None)
    return z, s, n, h.remove


def _norm_training(m, z, s, n):
    return z, s, n.train(), None


def _norm_without_statistics(m, z, s, n):
    return z, s, torch.nn.BatchNorm2d(16, track_running_stats=False).eval(), None


def _norm_subclass(m, z, s, n):
    class Mine(torch.nn.BatchNorm2d):
        pass

    return z, s, Mine(16).eval(), None


def _norm_other_dtype(m, z, s, n):
    return z, s, n.double(), None


def _reference_backend(m, z, s, n):
    previous = fused._state["backend"]
    fused.set_backend("reference")
    return z, s, n, lambda: fused._state.__setitem__("backend", previous)


def _env(value):
    def setup(m, z, s, n):
        mp = pytest.MonkeyPatch()
        mp.setenv("ATTNLAB_BACKEND", value)
        return z, s, n, mp.undo

    return setup


def _shortcut_other_shape(m, z, s, n):
    return z, s[:, :, :1, :1], n, None


def _shortcut_other_dtype(m, z, s, n):
    return z, s.double(), n, None


def _order(m, z, s, n):
    m.order = "spatial-channel"
    return z, s, n, None


def _replaced_parameter(m, z, s, n):
    fc = m.channel_gate.fc1
    fc.weight = torch.nn.Parameter(fc.weight.detach() * 2)
    return z, s, n, None


def _pool_setting(m, z, s, n):
    m.channel_gate.pool_types = ("avg",)
    return z, s, n, None


def _spatial_norm_training(m, z, s, n):
    m.spatial_gate.norm.train()
    return z, s, n, None


def _observed_map(m, z, s, n):
    h = m.channel_gate.channel_map.register_forward_hook(lambda *a: None)
    return z, s, n, h.remove


def _parameter_dtype(m, z, s, n):
    m.spatial_gate.conv.weight.data = m.spatial_gate.conv.weight.data.double()
    return z, s, n, None


DECLINES = {
    "hook on the gate": _hook_on_gate,
    "global module hook": _global_hook,
    "hook on the norm": _hook_on_norm,
    "norm in training mode": _norm_training,
    "norm without running statistics": _norm_without_statistics,
    "norm of a subclass": _norm_subclass,
    "norm of another dtype": _norm_other_dtype,
    "reference backend": _reference_backend,
    "ATTNLAB_BACKEND=reference": _env("reference"),
    "ATTNLAB_BACKEND spelled otherwise": _env(" Fast "),
    "shortcut of another shape": _shortcut_other_shape,
    "shortcut of another dtype": _shortcut_other_dtype,
    "other order": _order,
    "replaced parameter": _replaced_parameter,
    "changed pool setting": _pool_setting,
    "spatial norm in training mode": _spatial_norm_training,
    "observed map": _observed_map,
    "parameter of another dtype": _parameter_dtype,
}


def _outcome(fn):
    """fn()'s result, or the type of the error it raised."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 (compared between the two paths)
        return type(err)


@pytest.mark.parametrize("case", list(DECLINES))
def test_entry_declines_and_the_python_path_decides(case, entry):
    module = _gate("cbam-official")
    z, s = _inputs((2, 16, 5, 7))
    norm = _norm(16)
    with torch.no_grad():
        fused.residual_relu(module, z, s, norm)  # the plan
    twin, twin_norm = copy.deepcopy(module), copy.deepcopy(norm)
    entry.clear()
    z1, s1, n1, cleanup = DECLINES[case](module, z, s, norm)
    z2, s2, n2, cleanup2 = DECLINES[case](twin, z, s, twin_norm)
    try:
        with torch.no_grad():
            y = _outcome(lambda: fused.residual_relu(module, z1, s1, n1))
            y_python = _outcome(lambda: _python_path(lambda: fused.residual_relu(twin, z2, s2, n2)))
    finally:
        for c in (cleanup2, cleanup):  # (the second setup saw the first's changes)
            if c is not None:
                c()
    assert entry == ["declined"]
    if isinstance(y, torch.Tensor):
        assert torch.equal(y, y_python)
    else:
        assert y is y_python  # None (the caller computes it) or the same error
    # nothing ran twice: the norms' statistics and steps as the Python path left them
    for a, b in zip(module.buffers(), twin.buffers(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(n1.buffers(), n2.buffers(), strict=True):
        assert torch.equal(a, b)


def test_entry_declines_where_the_python_path_raises(entry, monkeypatch):
    module = _gate("cbam")
    z, s = _inputs((2, 16, 5, 7))
    with torch.no_grad():
        fused.residual_relu(module, z, s, _norm(16))
        entry.clear()
        monkeypatch.setenv("ATTNLAB_BACKEND", "bogus")
        with pytest.raises(ValueError, match="ATTNLAB_BACKEND"):
            fused.residual_relu(module, z, s, _norm(16))
        monkeypatch.delenv("ATTNLAB_BACKEND")
        wrong = torch.randn(2, 8, 5, 7)
        with pytest.raises(ValueError, match="expected 16 input channels"):
            fused.residual_relu(module, wrong, wrong, None)
    assert entry == ["declined", "declined"]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")  # (torch 2.13)
def test_entry_declines_with_autograd_autocast_and_tracing(entry):
    module = _gate("cbam")
    z, s = _inputs((2, 16, 5, 7))
    norm = _norm(16)
    with torch.no_grad():
        fused.residual_relu(module, z, s, norm)
    entry.clear()
    y = fused.residual_relu(module, z.clone().requires_grad_(), s, norm)
    assert y.grad_fn is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused.residual_relu(module, z, s, norm) is None

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.norm = module, norm

        def forward(self, a, b):
            out = fused.residual_relu(self.attn, a, b, self.norm)
            return out if out is not None else torch.relu(self.attn(self.norm(a)) + b)

    with torch.no_grad():
        traced = torch.jit.trace(Block(), (z, s), check_trace=False)
    assert "attnlab_fast" not in str(traced.graph)
    assert entry == ["declined", "declined", "declined"]


def test_entry_leaves_a_one_value_batch_to_the_python_path(entry):
    module = _gate("cbam-official")
    z, s = _inputs((1, 16, 1, 1))
    with torch.no_grad():
        fused.residual_relu(module, z, s, _norm(16))
        y = fused.residual_relu(module, z, s, _norm(16))
        y_python = _python_path(lambda: fused.residual_relu(module, z, s, _norm(16)))
    assert entry == ["declined", "declined"] and torch.equal(y, y_python)


def test_entry_declines_for_a_subclass_and_the_plan_is_remade(entry):
    class Mine(CBAM):
        pass

    z, s = _inputs((2, 16, 5, 7))
    with torch.no_grad():
        assert fused.residual_relu(Mine(16).eval(), z, s) is None
        module = _gate("cbam")
        fused.residual_relu(module, z, s)
        fused.residual_relu(module, z, s)
        module.spatial_gate.conv.weight = torch.nn.Parameter(module.spatial_gate.conv.weight * 2)
        fused.residual_relu(module, z, s)  # the stale plan: declined, remade in Python
        y = fused.residual_relu(module, z, s)
        y_python = _python_path(lambda: fused.residual_relu(module, z, s))
    assert entry == ["declined", "declined", "ran", "declined", "ran"]
    assert torch.equal(y, y_python)


def test_entry_observed_maps_come_from_the_python_path(entry):
    module = _gate("cbam")
    z, s = _inputs((2, 16, 5, 7))
    with torch.no_grad():
        fused.residual_relu(module, z, s, _norm(16))
        with capture_maps(module) as maps:
            fused.residual_relu(module, z, s, _norm(16))
    assert entry[-1] == "declined" and len(maps) == 2


def test_entry_dry_run_returns_its_input():
    module = _gate("cbam")
    z, s = _inputs((2, 16, 5, 7))
    with torch.no_grad():
        fused.residual_relu(module, z, s)
        fused._state["module"].set_dry_run(True)
        try:
            out = fused.residual_relu(module, z, s)
        finally:
            fused._state["module"].set_dry_run(False)
        assert out is z
        assert not torch.equal(fused.residual_relu(module, z, s), z)
