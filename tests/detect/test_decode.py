"""Decoding: hand-built head outputs decode to the boxes they encode; filtering, NMS, caps."""

from __future__ import annotations

import pytest
import torch
from _yolo_encode import empty_outputs, put_box  # tests/detect is on sys.path

from attnlab.detect.decode import decode_outputs, postprocess
from attnlab.models.yolov4_tiny import ANCHOR_MASKS, ANCHORS


def decode(outputs, **kwargs):
    return postprocess(decode_outputs(outputs, ANCHORS, ANCHOR_MASKS), **kwargs)


def test_known_boxes_decode_exactly():
    outputs = empty_outputs(2, 4, 128)
    put_box(outputs, 0, 0, 1, (10.0, 20.0, 110.0, 100.0), 2)  # stride 32, anchor 4
    put_box(outputs, 0, 1, 0, (40.0, 44.0, 64.0, 70.0), 1)  # stride 16, anchor 1
    put_box(outputs, 1, 1, 2, (0.5, 3.0, 90.0, 60.0), 3)
    dets = decode(outputs, conf_threshold=0.5)
    assert len(dets) == 2
    order = dets[0]["labels"].argsort()
    torch.testing.assert_close(
        dets[0]["boxes"][order],
        torch.tensor([[40.0, 44.0, 64.0, 70.0], [10.0, 20.0, 110.0, 100.0]]),
        rtol=1e-5,
        atol=1e-3,
    )
    assert dets[0]["labels"][order].tolist() == [1, 2]
    assert dets[0]["scores"].min() > 0.99
    torch.testing.assert_close(
        dets[1]["boxes"], torch.tensor([[0.5, 3.0, 90.0, 60.0]]), rtol=1e-5, atol=1e-3
    )
    assert dets[1]["labels"].tolist() == [3]


def test_confidence_is_objectness_times_class():
    outputs = empty_outputs(1, 2, 64)
    put_box(outputs, 0, 1, 0, (8.0, 8.0, 40.0, 40.0), 0, obj=0.0)  # σ(0) = 0.5
    dets = decode(outputs, conf_threshold=0.4)
    assert dets[0]["scores"].tolist() == pytest.approx([0.5], abs=1e-4)
    assert decode(outputs, conf_threshold=0.6)[0]["boxes"].shape == (0, 4)


def test_nms_and_max_det():
    outputs = empty_outputs(1, 2, 128)
    box = (20.0, 20.0, 60.0, 60.0)
    put_box(outputs, 0, 1, 0, box, 0)
    put_box(outputs, 0, 1, 1, box, 0, obj=3.0)  # duplicate, lower score: suppressed
    put_box(outputs, 0, 1, 2, box, 1, obj=2.0)  # same box, other class: kept
    dets = decode(outputs, conf_threshold=0.1)[0]
    assert dets["labels"].tolist() == [0, 1]
    assert dets["scores"][0] > dets["scores"][1]
    assert len(decode(outputs, conf_threshold=0.1, max_det=1)[0]["boxes"]) == 1
    assert len(decode(outputs, conf_threshold=0.1, iou_threshold=1.0)[0]["boxes"]) == 3


def test_decoded_shape_and_errors():
    outputs = empty_outputs(3, 5, 64)
    decoded = decode_outputs(outputs, ANCHORS, ANCHOR_MASKS)
    assert decoded.shape == (3, 3 * (2 * 2 + 4 * 4), 10)
    with pytest.raises(ValueError, match="one of each per level"):
        decode_outputs(outputs[:1], ANCHORS, ANCHOR_MASKS)
    with pytest.raises(ValueError, match="multiple"):
        decode_outputs([torch.zeros(1, 20, 2, 2), outputs[1]], ANCHORS, ANCHOR_MASKS)
