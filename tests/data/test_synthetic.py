"""Tests for the procedural scenes: determinism, label consistency, task modes, bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from attnlab.data.synthetic import (
    CLASS_GLYPHS,
    DEFAULT_LENGTHS,
    DIFFICULTIES,
    Difficulty,
    SyntheticScenes,
    _mix64,
)

_TENSORS = ("image", "mask", "boxes", "labels", "target_box")


def _same(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in _TENSORS) and a.label == b.label


def test_same_index_gives_the_same_scene():
    a, b = SyntheticScenes(length=20), SyntheticScenes(length=20)
    for i in (0, 7, 19):
        assert _same(a.scene(i), a.scene(i))
        assert _same(a.scene(i), b.scene(i))


def test_seeds_splits_and_indices_give_different_scenes():
    base = SyntheticScenes().scene(3).image
    assert not torch.equal(base, SyntheticScenes(seed=1).scene(3).image)
    assert not torch.equal(base, SyntheticScenes(split="val").scene(3).image)
    assert not torch.equal(base, SyntheticScenes(split="test").scene(3).image)
    assert not torch.equal(base, SyntheticScenes().scene(4).image)


def test_seed_mix_is_a_fixed_formula():
    # Changing _mix64 would silently change every dataset: pin its values.
    assert _mix64(0, 0, 0) == 0x4055F401560F0C17
    assert _mix64(1, 2, 3) == 0x2467A8145B6F886D
    assert len({_mix64(s, p, i) for s in range(3) for p in range(3) for i in range(50)}) == 450
    assert _mix64(-1, 0, 0) == _mix64((1 << 64) - 1, 0, 0)


def test_same_scene_in_another_process():
    code = (
        "import torch; from attnlab.data.synthetic import SyntheticScenes as S; "
        "s = S(split='val', seed=5).scene(11); "
        "print(s.image.double().sum().item(), s.image.double().pow(2).sum().item(), s.label)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    s = SyntheticScenes(split="val", seed=5).scene(11)
    expected = f"{s.image.double().sum().item()} {s.image.double().pow(2).sum().item()} {s.label}"
    assert out.stdout.strip() == expected


@pytest.mark.parametrize("difficulty", list(DIFFICULTIES))
@pytest.mark.parametrize(("num_targets", "num_distractors"), [(1, None), (3, None), (3, 8)])
def test_masks_boxes_and_labels_agree(difficulty, num_targets, num_distractors):
    size = 32
    ds = SyntheticScenes(
        length=25,
        difficulty=difficulty,
        num_targets=num_targets,
        num_distractors=num_distractors,
        size=size,
    )
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(len(ds)):
        s = ds.scene(i)
        assert s.boxes.shape == (num_targets, 4) and s.boxes.dtype == torch.float32
        assert s.labels.shape == (num_targets,) and s.labels.dtype == torch.int64
        assert s.mask.shape == (size, size) and s.mask.dtype == torch.int64
        assert int(s.mask.min()) >= 0 and int(s.mask.max()) <= ds.num_classes
        x0, y0, x1, y1 = s.boxes.unbind(1)
        assert bool(((x0 >= 0) & (y0 >= 0) & (x1 <= size) & (y1 <= size)).all())
        assert bool(((x1 > x0) & (y1 > y0)).all())
        # The label is the class of the target box, which is one of the boxes.
        t = [k for k in range(num_targets) if torch.equal(s.boxes[k], s.target_box)]
        assert t and any(int(s.labels[k]) == s.label for k in t)
        assert 0 <= s.label < ds.num_classes
        # Every pixel of class c lies inside some box of class c.
        for c in s.mask.unique().tolist():
            if c == 0:
                continue
            on = s.mask == c
            inside = torch.zeros_like(on)
            for (bx0, by0, bx1, by1), lab in zip(s.boxes.tolist(), s.labels.tolist(), strict=True):
                if lab == c - 1:
                    inside |= (xs >= bx0) & (xs < bx1) & (ys >= by0) & (ys < by1)
            assert bool(inside[on].all()), f"scene {i}: class {c - 1} pixels outside its boxes"
        if num_targets == 1:
            assert set(s.mask.unique().tolist()) == {0, s.label + 1}
            bx0, by0, bx1, by1 = s.target_box.tolist()
            on = s.mask > 0
            assert bool(((xs >= bx0) & (xs < bx1) & (ys >= by0) & (ys < by1))[on].all())
            # The box is tight around the target's visible pixels.
            assert xs[on].min() == bx0 and xs[on].max() + 1 == bx1
            assert ys[on].min() == by0 and ys[on].max() + 1 == by1


def test_image_range_dtype_and_default_lengths():
    for split, length in DEFAULT_LENGTHS.items():
        assert len(SyntheticScenes(split=split)) == length
    ds = SyntheticScenes(length=10, num_classes=10)
    assert ds.classes == list(CLASS_GLYPHS) and ds.num_classes == 10
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert float(image.min()) >= 0 and float(image.max()) <= 1
        assert isinstance(label, int) and 0 <= label < 10
    labels = [SyntheticScenes(length=200, num_classes=4)[i][1] for i in range(200)]
    assert set(labels) == {0, 1, 2, 3}  # every class appears


def test_task_modes():
    image, label = SyntheticScenes(task="classification")[0]
    assert image.shape == (3, 32, 32) and isinstance(label, int)
    image, mask = SyntheticScenes(task="segmentation")[0]
    assert mask.shape == (32, 32) and mask.dtype == torch.int64
    image, target = SyntheticScenes(task="detection", num_targets=2)[0]
    assert set(target) == {"boxes", "labels"}
    assert target["boxes"].shape == (2, 4) and target["labels"].shape == (2,)


def test_transform_applies_to_the_image():
    ds = SyntheticScenes(length=4, transform=lambda x: x * 2 - 1)
    assert torch.equal(ds[1][0], ds.scene(1).image * 2 - 1)
    ds.transform = None  # settable after construction, as build_datasets does
    assert torch.equal(ds[1][0], ds.scene(1).image)


@pytest.mark.parametrize("size", [16, 48, 64])
def test_other_sizes(size):
    s = SyntheticScenes(size=size, length=5, num_targets=2).scene(4)
    assert s.image.shape == (3, size, size) and s.mask.shape == (size, size)
    assert float(s.boxes.max()) <= size and bool((s.mask > 0).any())


def test_custom_difficulty():
    plain = Difficulty((0, 0), (0.5, 0.5), 0.0, 0.0, 0.5, 1.0, 0.0, (1.0, 1.0), (0.0, 0.0))
    s = SyntheticScenes(difficulty=plain).scene(0)
    # White glyph on black, no noise: the image is the mask up to anti-aliased edges.
    assert bool((s.image[:, s.mask > 0] > 0.5).all())
    assert bool((s.image[:, s.mask == 0] < 0.5).all())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"split": "validation"}, "split"),
        ({"task": "depth"}, "task"),
        ({"difficulty": "impossible"}, "difficulty"),
        ({"size": 15}, "size"),
        ({"size": 32.0}, "size"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 11}, "num_classes"),
        ({"length": 0}, "length"),
        ({"num_targets": 0}, "num_targets"),
        ({"num_distractors": -1}, "num_distractors"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SyntheticScenes(**kwargs)


def test_bad_arguments_list_the_allowed_values():
    with pytest.raises(ValueError, match="'train', 'val', 'test'"):
        SyntheticScenes(split="dev")
    with pytest.raises(ValueError, match="2..10"):
        SyntheticScenes(num_classes=12)


@pytest.mark.parametrize("index", [-1, 5, 2.0])
def test_bad_index(index):
    ds = SyntheticScenes(length=5)
    with pytest.raises(ValueError, match="index must be an integer in 0..4"):
        ds[index]


def test_dataloader():
    ds = SyntheticScenes(length=20)
    images, labels = next(iter(DataLoader(ds, batch_size=8, shuffle=True, num_workers=0)))
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,)
    seg = DataLoader(SyntheticScenes(length=8, task="segmentation"), batch_size=4)
    assert next(iter(seg))[1].shape == (4, 32, 32)
    det = DataLoader(
        SyntheticScenes(length=8, task="detection"), batch_size=4, collate_fn=lambda b: b
    )
    assert len(next(iter(det))) == 4


def test_occluders_only_hide_part_of_the_target():
    """An occluder is drawn last, from the last random numbers: the same scene without it is
    identical except where it hides the target, and it hides less than the whole target."""
    import dataclasses

    plain = dataclasses.replace(DIFFICULTIES["cluttered"], occluders=(0, 0))
    hidden = dataclasses.replace(DIFFICULTIES["cluttered"], occluders=(2, 2))
    changed = 0
    for i in range(20):
        a = SyntheticScenes(split="val", length=20, difficulty=plain).scene(i)
        b = SyntheticScenes(split="val", length=20, difficulty=hidden).scene(i)
        assert a.label == b.label
        target_a, target_b = a.mask == a.label + 1, b.mask == b.label + 1
        assert bool((target_b <= target_a).all()) and int(target_b.sum()) > 0
        visible = target_b  # target pixels no occluder covers: the same image there
        assert torch.equal(a.image[:, visible], b.image[:, visible])
        changed += int(target_a.sum() - target_b.sum()) > 0
    assert changed >= 10  # the occluders do cover the target, most of the time


@pytest.mark.parametrize("name", ["cluttered", "cluttered-hard"])
def test_compare_presets_draw_more_clutter_than_default(name):
    # More distractors per scene than "default", at both ends of the range, and smaller targets.
    d, default = DIFFICULTIES[name], DIFFICULTIES["default"]
    assert d.distractors[0] > default.distractors[0] and d.distractors[1] > default.distractors[1]
    assert d.scale[1] < default.scale[1]
    s = SyntheticScenes(split="test", length=4, difficulty=name, task="detection").scene(0)
    assert s.boxes.shape == (1, 4) and s.image.shape == (3, 32, 32)


@pytest.mark.slow
def test_easy_scenes_are_learnable():
    """A short run of a plain ResNet-20 on "easy" scenes gets well above chance."""
    import attnlab

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        k = 6

        def load(split, n):
            ds = SyntheticScenes(split=split, length=n, difficulty="easy", num_classes=k)
            xs, ys = zip(*(ds[i] for i in range(n)), strict=True)
            return torch.stack(xs), torch.tensor(ys)

        x, y = load("train", 500)
        xv, yv = load("val", 300)
        mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
        x, xv = (x - mean) / std, (xv - mean) / std
        model = attnlab.create_model("resnet20", num_classes=k)
        epochs, batch = 3, 32
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=2e-3, total_steps=epochs * -(-len(x) // batch), pct_start=0.25
        )
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(x)).split(batch):
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xv).argmax(1) == yv).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    # Measured 0.90-0.99 over torch seeds 0-3 (1.00 with 1,000 scenes); chance is 1/6.
    assert acc > 2 / k, f"accuracy {acc:.3f} after {epochs} epochs on easy scenes"


def test_medium_scenes_are_clearer_than_default():
    # "medium" keeps the default rule (0-2 look-alike distractors, any rotation) with larger
    # glyphs, less texture and noise and more contrast.
    medium, default = DIFFICULTIES["medium"], DIFFICULTIES["default"]
    assert medium.distractors == default.distractors and medium.rotation == default.rotation
    assert medium.scale[0] > default.scale[0] and medium.scale[1] > default.scale[1]
    assert medium.background < default.background and medium.noise < default.noise
    assert medium.contrast > default.contrast


@pytest.mark.parametrize("augment", [True, False])
def test_build_datasets_augment_switch(augment):
    from attnlab.data import build_datasets

    train, val, _ = build_datasets("synthetic", train_size=8, val_size=4, augment=augment)
    torch.manual_seed(0)
    draws = [torch.stack([train[i][0] for i in range(8)]) for _ in range(3)]
    same = all(torch.equal(draws[0], d) for d in draws[1:])
    assert same is not augment  # random crops differ between draws; without them, never
    assert torch.equal(val[0][0], val[0][0])


def test_train_config_passes_augment_to_the_data():
    import tempfile

    from attnlab.engine import distributed
    from attnlab.engine.config import TrainConfig
    from attnlab.engine.tasks.classify import ClassifyTask

    for augment in (True, False):
        config = TrainConfig(train_size=8, val_size=4, augment=augment, out=tempfile.mkdtemp())
        train, _ = ClassifyTask(config).build_data(distributed.setup("cpu"))
        torch.manual_seed(0)
        draws = [torch.stack([train[i][0] for i in range(8)]) for _ in range(3)]
        assert all(torch.equal(draws[0], d) for d in draws[1:]) is not augment
