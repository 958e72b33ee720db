"""Which path the gate modules take: the backend switch, the environment, the fallbacks."""

from __future__ import annotations

import pytest
import torch

from attnlab import kernels
from attnlab.layers import CBAM

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="CPU kernels unavailable")


def test_backend_names_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="attnlab backend must be one of"):
        kernels.set_backend("fastest")
    monkeypatch.setenv("ATTNLAB_BACKEND", "turbo")
    with pytest.raises(ValueError, match="ATTNLAB_BACKEND must be one of"):
        kernels.get_backend()


def test_environment_and_context_manager(monkeypatch):
    monkeypatch.setenv("ATTNLAB_BACKEND", " Reference ")
    assert kernels.get_backend() == "reference"
    assert not kernels.enabled(torch.randn(2, 4, 3, 3), CBAM(4))
    with kernels.backend("auto"):
        assert kernels.get_backend() == "auto"
    assert kernels.get_backend() == "reference"
    monkeypatch.delenv("ATTNLAB_BACKEND")
    assert kernels.get_backend() == "auto"


@needs_kernels
def test_cpu_inputs_the_kernels_take():
    m = CBAM(8)
    assert kernels.enabled(torch.randn(2, 8, 3, 3), m)
    assert kernels.enabled(torch.randn(2, 8, 3, 3, dtype=torch.float64), m)
    assert not kernels.enabled(torch.randn(2, 8, 3, 3).to(torch.bfloat16), m)
    assert not kernels.enabled(torch.randn(2, 8, 3, 3).to(memory_format=torch.channels_last), m)
    assert not kernels.enabled(torch.randn(2, 8, 3), m)
    assert not kernels.enabled(torch.randn(0, 8, 3, 3), m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not kernels.enabled(torch.randn(2, 8, 3, 3), m)


def test_other_devices_take_the_reference_path():
    x = torch.empty(2, 8, 3, 3, device="meta")
    assert not kernels.enabled(x, CBAM(8))
    with kernels.backend("fast"):
        assert not kernels.enabled(x, CBAM(8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_defaults_to_the_reference_path():
    x = torch.randn(2, 8, 3, 3, device="cuda")
    assert not kernels.enabled(x, CBAM(8).cuda())


@needs_kernels
def test_channels_last_falls_back_to_the_same_result():
    m = CBAM(8).eval()
    x = torch.randn(2, 8, 5, 4)
    with torch.no_grad():
        y = m(x)
        y_last = m(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y_last, y, rtol=1e-5, atol=1e-6)


def test_compile_traces_the_reference_path():
    m = CBAM(8).eval()
    x = torch.randn(2, 8, 5, 4)
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), rtol=1e-5, atol=1e-6)
