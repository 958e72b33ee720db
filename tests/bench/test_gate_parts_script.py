"""benchmarks/gate_parts.py: ResNet-50's block shapes and the floor's bookkeeping (tiny sizes)."""

import pytest
from _scripts import load_script

from attnlab import kernels


@pytest.fixture(scope="module")
def script():
    return load_script("gate_parts")


def test_the_sixteen_bottleneck_outputs_of_resnet50(script):
    shapes = script.block_shapes(8, 160)
    assert len(shapes) == 16
    assert shapes[0] == (8, 256, 40, 40) and shapes[3] == (8, 512, 20, 20)
    assert shapes[7] == (8, 1024, 10, 10) and shapes[-1] == (8, 2048, 5, 5)
    assert sorted(set(shapes), key=shapes.index) == [
        (8, 256, 40, 40), (8, 512, 20, 20), (8, 1024, 10, 10), (8, 2048, 5, 5)
    ]  # fmt: skip
    assert [shapes.count(s) for s in sorted(set(shapes), key=shapes.index)] == [3, 4, 6, 3]


@pytest.mark.skipif(not kernels.available(), reason="CPU kernels unavailable")
def test_the_floor_is_the_parts_the_gate_adds(script):
    med = script.parts(batch=1, size=32, turns=2)
    names = {"plain network", "pools", "output pass", "plain tail", "small layers", "floor"}
    assert set(med) == names
    assert all(med[n] > 0 for n in names - {"floor"})
    added = med["pools"] + med["output pass"] - med["plain tail"] + med["small layers"]
    assert med["floor"] == pytest.approx(added)
