"""Procedural scenes of glyphs among look-alike distractors: no files, deterministic, fast.

Each scene is an RGB image with a textured background (a colour field, two random gratings and
pixel noise) and a few flat-coloured glyphs at random positions, sizes (a diameter drawn from the
difficulty's range), rotations and colours. Glyphs come from two disjoint families:

- **class glyphs**, the first K of :data:`CLASS_GLYPHS` (circle, square, triangle, cross, ring,
  star, diamond, bar, crescent, tee);
- **distractor glyphs**, :data:`DISTRACTOR_GLYPHS`, never a class, several drawn to look like one
  (half disk, square frame, triangle frame, broken ring, ellipse, tripod, four-point star, ell).

**The rule.** A scene holds exactly one class glyph, the *target*, among distractors. The
classification label is the target's class: the network has to find the one object that is a
class glyph and name it, while the distractors put class-like evidence elsewhere in the image, so
features pooled over the whole image without regard to *where* they come from are misleading.
Segmentation masks and detection boxes cover class glyphs only; ``num_targets > 1`` puts several
class glyphs in a scene (for segmentation and detection), and the classification label is then
the class of the largest one (most pixels). Class glyphs are drawn after (on top of) the
distractors; only a difficulty's *occluders* (flat squares, at most a quarter of the target's
square each) are drawn over a class glyph, and the pixels they hide leave its mask and box.
Objects are placed apart where they fit (up to 16 tries each). Every class glyph is
mirror-symmetric, so horizontal flips keep labels.

Every scene comes from its own ``torch.Generator`` seeded by a stable 64-bit mix of
(``seed``, ``split``, ``index``) (splitmix64, not Python's salted ``hash``), so ``scene(i)`` is
the same in every call and process, and the three splits are independent streams. Drawing is
vectorised: each glyph is rendered once (supersampled, per resolution) and all objects of a scene
are drawn by one ``grid_sample`` at per-object rotated, scaled and shifted coordinates; a 32×32
scene takes about 0.6 ms on one CPU core (64×64: about 0.9 ms).

Difficulties (:data:`DIFFICULTIES`, or pass a :class:`Difficulty`):

- ``"easy"``: the target alone, 50-70 % of the image wide, turned by at most 20°, near-white on
  a dark, almost plain background;
- ``"medium"``: the rule of ``"default"`` with larger, clearer glyphs: 0-2 distractors, glyphs
  40-55 % of the image wide, less texture and noise, more contrast. ``attnlab compare``'s
  default task: trained on 300 scenes, a ResNet-20 fits them within its short schedule and
  levels off at 70-90 % validation accuracy (data-limited, not step-limited);
- ``"default"``: 0-2 distractors, glyphs 34-50 % of the image wide, lighter than a textured
  background: harder to fit than ``"medium"``; a ResNet-20 needs thousands of scenes and
  more than 20 epochs to approach its plateau;
- ``"hard"``: 2-4 distractors, smaller glyphs, stronger texture and noise (for longer runs);
- ``"cluttered"``: between ``"default"`` and ``"hard"``: 1-3 distractors, targets 32-46 % of
  the image wide, and sometimes one occluder over the target; ``attnlab compare``'s harder
  split for models trained on ``"medium"`` or ``"default"`` scenes;
- ``"cluttered-hard"``: 5-8 distractors placed closer,
  smaller targets, stronger clutter and noise, one or two occluders over the target.

Example:
    >>> from attnlab.data.synthetic import SyntheticScenes
    >>> ds = SyntheticScenes(split="train", length=100)
    >>> image, label = ds[0]
    >>> tuple(image.shape), image.dtype, 0 <= label < ds.num_classes
    ((3, 32, 32), torch.float32, True)
    >>> s = ds.scene(0)
    >>> int(s.labels[0]) == s.label, tuple(s.mask.shape)
    (True, (32, 32))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from numbers import Integral
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .glyphs import CLASS_GLYPHS, DISTRACTOR_GLYPHS, templates

SPLITS = ("train", "val", "test")
TASKS = ("classification", "segmentation", "detection")
DEFAULT_LENGTHS = {"train": 5000, "val": 1000, "test": 1000}
MIN_CLASSES, MAX_CLASSES = 2, len(CLASS_GLYPHS)
MIN_SIZE = 16
_TRIES = 16  # candidate positions per object when placing objects apart
_MIN_DIAMETER = 5.0  # pixels; below this the glyphs are no longer told apart


@dataclass(frozen=True)
class Difficulty:
    """Knobs of a difficulty level.

    Args:
        distractors: inclusive range of the number of distractors per scene.
        scale: range of an object's diameter as a fraction of the image size.
        background: amplitude of the background texture (colour field and gratings).
        noise: standard deviation of the per-pixel Gaussian noise.
        contrast: smallest largest-channel difference between an object's colour and the mean
            background colour (colours closer than this are shifted by half the range).
        separation: wanted centre distance over the sum of two objects' radii when placing.
        rotation: objects turn by a uniform angle in [-rotation, rotation] degrees.
        object_colours: range of each colour channel of an object.
        background_colours: range of each channel of the background's base colour.
        occluders: inclusive range of the number of occluders: flat squares of a random
            colour painted over the target (centred at a random point of its box), the only
            things drawn on top of a class glyph.
        occluder_size: range of an occluder's side as a fraction of the target's diameter
            (at most 0.5, so an occluder hides at most a quarter of the target's square).
    """

    distractors: tuple[int, int]
    scale: tuple[float, float]
    background: float
    noise: float
    contrast: float
    separation: float
    rotation: float = 180.0
    object_colours: tuple[float, float] = (0.0, 1.0)
    background_colours: tuple[float, float] = (0.0, 1.0)
    occluders: tuple[int, int] = (0, 0)
    occluder_size: tuple[float, float] = (0.3, 0.5)


# Objects are lighter than the background: with random polarity (any object on any ground) a
# ResNet-20 stayed at chance for 4 epochs of 5000 scenes even without distractors. "easy" also
# keeps glyphs nearly upright and almost grey-level, so that a few hundred steps learn it.
DIFFICULTIES = {
    "easy": Difficulty((0, 0), (0.5, 0.7), 0.03, 0.02, 0.3, 1.0, 20.0, (0.85, 1.0), (0.0, 0.15)),
    # "medium": "default"'s scenes with larger, clearer glyphs (less texture and noise, more
    # contrast), so that a small network fits a few hundred of them within a short schedule.
    "medium": Difficulty((0, 2), (0.4, 0.55), 0.12, 0.03, 0.2, 0.9, 180.0, (0.7, 1.0), (0.0, 0.3)),
    "default": Difficulty(
        (0, 2), (0.34, 0.5), 0.15, 0.04, 0.15, 0.9, 180.0, (0.7, 1.0), (0.0, 0.3)
    ),
    "hard": Difficulty((2, 4), (0.26, 0.4), 0.35, 0.06, 0.2, 0.8, 180.0, (0.5, 1.0), (0.0, 0.5)),
    # Occluded scenes: "cluttered" for training, "cluttered-hard" for the robustness column of
    # ``attnlab compare`` (many close look-alikes, strong clutter, one or two occluders).
    "cluttered": Difficulty(
        (1, 3), (0.32, 0.46), 0.18, 0.05, 0.15, 0.85, 180.0, (0.65, 1.0), (0.0, 0.3), (0, 1)
    ),
    "cluttered-hard": Difficulty(
        (5, 8), (0.24, 0.34), 0.4, 0.08, 0.12, 0.7, 180.0, (0.5, 1.0), (0.0, 0.45), (1, 2)
    ),
}


@dataclass
class Scene:
    """One scene and its labels for every task.

    Attributes:
        image: 3×S×S float32 in [0, 1].
        label: class of the target object, 0..K-1.
        mask: S×S int64; 0 background (distractors included), c + 1 where a class-c object is the
            topmost object at the pixel.
        boxes: N×4 float32 xyxy pixel boxes (x1, y1 exclusive), one per class object.
        labels: N int64 classes of those boxes.
        target_box: 4 float32, the target's box.
    """

    image: Tensor
    label: int
    mask: Tensor
    boxes: Tensor
    labels: Tensor
    target_box: Tensor


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates (x, y), each S×S, in pixels."""
    t = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(t, t, indexing="ij")
    return x, y


def _mix64(*values: int) -> int:
    """Stable 64-bit hash of integers (splitmix64 chained); the same in every process."""
    mask = (1 << 64) - 1
    h = 0x9E3779B97F4A7C15
    for value in values:
        z = (h ^ (value & mask)) + 0x9E3779B97F4A7C15 & mask
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & mask
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & mask
        h = z ^ (z >> 31)
    return h >> 1  # 63 bits: a valid manual_seed everywhere


def _place(
    radii: list[float], order: list[int], cand: list, size: int, sep: float
) -> list[tuple[float, float]]:
    """Centres for objects placed in ``order``; each takes its first candidate clear of those
    already placed (centre distance ≥ sep·(r_i + r_j)), else the least overlapping one."""
    centres: list[tuple[float, float]] = [(0.0, 0.0)] * len(radii)
    placed: list[tuple[float, float, float]] = []
    for i in order:
        r = radii[i]
        span = size - 2 * r
        best, best_slack = (0.0, 0.0), -math.inf
        for fx, fy in cand[i]:
            x, y = r + fx * span, r + fy * span
            slack = min(
                (math.hypot(x - px, y - py) - sep * (r + pr) for px, py, pr in placed),
                default=math.inf,
            )
            if slack > best_slack:
                best, best_slack = (x, y), slack
            if slack >= 0:
                break
        centres[i] = best
        placed.append((*best, r))
    return centres


def _background(g: torch.Generator, size: int, amp: float, colours: tuple[float, float]) -> Tensor:
    """Base colour + smooth colour field + two random gratings, 3×S×S (not clamped)."""
    p = torch.rand(15, generator=g, dtype=torch.float32).tolist()
    lo, hi = colours
    base = torch.tensor(p[0:3], dtype=torch.float32).view(3, 1, 1) * (hi - lo) + lo
    field = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float32) - 0.5
    field = F.interpolate(field, size=(size, size), mode="bilinear", align_corners=False)[0]
    # Each grating is sin(wx·x + wy·y + phase) = sin(A)cos(B) + cos(A)sin(B), from 1-D factors.
    q = torch.tensor(p[3:9], dtype=torch.float32).view(2, 3, 1)  # (frequency, angle, phase) × 2
    freq, angle, phase = 2 * math.pi * (1.5 + 4.5 * q[:, 0]) / size, math.pi * q[:, 1], q[:, 2]
    t = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    a = freq * torch.cos(angle) * t + 2 * math.pi * phase  # 2×S, along x (columns)
    b = freq * torch.sin(angle) * t  # 2×S, along y (rows)
    gratings = b.cos()[:, :, None] * a.sin()[:, None] + b.sin()[:, :, None] * a.cos()[:, None]
    tint = torch.tensor(p[9:15], dtype=torch.float32).view(2, 3, 1, 1) - 0.5  # grating colours
    texture = (tint * gratings.unsqueeze(1)).sum(0)  # 2×S×S gratings → 3×S×S
    return base + amp * (field + 0.5 * texture)


def render_scene(
    g: torch.Generator,
    *,
    size: int,
    num_classes: int,
    difficulty: Difficulty,
    num_targets: int = 1,
    num_distractors: int | None = None,
) -> Scene:
    """Draws one scene with the random numbers of ``g`` (see the module docstring)."""
    d = difficulty
    if num_distractors is None:
        lo, hi = d.distractors
        num_distractors = int(torch.randint(lo, hi + 1, (1,), generator=g)) if hi > lo else lo
    n_d, n = num_distractors, num_distractors + num_targets
    glyph = torch.cat(
        [
            torch.randint(len(DISTRACTOR_GLYPHS), (n_d,), generator=g) + len(CLASS_GLYPHS),
            torch.randint(num_classes, (num_targets,), generator=g),
        ]
    )  # distractors first: class glyphs are drawn last, on top
    params = torch.rand(n, 5, generator=g, dtype=torch.float32)  # diameter, angle, colour (3)
    cand = torch.rand(n, _TRIES, 2, generator=g).tolist()
    lo_s, hi_s = d.scale
    diam = (size * (lo_s + (hi_s - lo_s) * params[:, 0])).clamp(min=_MIN_DIAMETER)
    radii = (diam / 2).tolist()
    order = list(range(n_d, n)) + list(range(n_d))  # targets get the free space first
    centres = _place(radii, order, cand, size, d.separation)
    centres = torch.tensor(centres, dtype=torch.float32)  # n×2 (x, y)

    # Template coordinates of every pixel centre p for every object: R(-θ)·(p - c)/r, n×S×S each
    # (elementwise: cheaper than affine_grid's batched matmul at these sizes).
    theta = math.radians(d.rotation) * (2 * params[:, 1] - 1)
    cos, sin = torch.cos(theta).view(n, 1, 1), torch.sin(theta).view(n, 1, 1)
    x, y = _pixel_grid(size)
    r = (diam / 2).view(n, 1, 1)
    dx, dy = (x - centres[:, 0:1, None]) / r, (y - centres[:, 1:2, None]) / r
    grid = torch.stack([cos * dx + sin * dy, cos * dy - sin * dx], -1)  # n×S×S×2 (u, v)
    resolution = max(8, 4 * math.ceil(float(diam.max()) / 4))
    shapes = templates(resolution)[glyph]  # n×1×R×R
    alpha = F.grid_sample(shapes, grid, mode="bilinear", align_corners=False)[:, 0]  # n×S×S

    image = _background(g, size, d.background, d.background_colours)
    lo_c, hi_c = d.object_colours
    colours = lo_c + (hi_c - lo_c) * params[:, 2:5]
    bg_mean = image.mean((1, 2))
    close = (colours - bg_mean).abs().amax(1) < d.contrast
    colours = torch.where(close.unsqueeze(1), (colours + 0.5) % 1.0, colours)
    for i in range(n):  # painter's order
        image = torch.lerp(image, colours[i].view(3, 1, 1), alpha[i : i + 1])
    noise = d.noise * torch.randn(3, size, size, generator=g, dtype=torch.float32)
    if d.occluders[1] > 0:  # only then: the other difficulties keep their random stream
        image, alpha = _occlude(g, image, alpha, n_d, diam, d)
    image = (image + noise).clamp_(0, 1)

    # An object's pixels: coverage ≥ 0.5, or its best-covered pixel if none reaches 0.5.
    # An object hidden everywhere (by occluders) has no pixels.
    hits = (alpha >= alpha.amax((1, 2), keepdim=True).clamp(max=0.5)) & (alpha > 0)  # n×S×S
    top = (hits * torch.arange(1, n + 1).view(n, 1, 1)).amax(0)  # 1 + topmost object, 0 none
    value = torch.cat([torch.zeros(1 + n_d, dtype=torch.long), glyph[n_d:] + 1])
    mask = value[top]  # S×S

    own = hits[n_d:]  # T×S×S
    ar = torch.arange(size)
    rows, cols = own.any(2), own.any(1)  # T×S
    boxes = torch.stack(
        [
            torch.where(cols, ar, size).amin(1),
            torch.where(rows, ar, size).amin(1),
            torch.where(cols, ar, -1).amax(1) + 1,
            torch.where(rows, ar, -1).amax(1) + 1,
        ],
        1,
    ).float()  # T×4 xyxy
    labels = glyph[n_d:].clone()
    t = int(own.sum((1, 2)).argmax())
    return Scene(image, int(labels[t]), mask, boxes, labels, boxes[t].clone())


def _occlude(
    g: torch.Generator, image: Tensor, alpha: Tensor, n_d: int, diam: Tensor, d: Difficulty
) -> tuple[Tensor, Tensor]:
    """Paints ``d.occluders`` flat squares over the first class glyph (the target when there
    is one); covered pixels leave every object's coverage (``alpha``: n×S×S)."""
    lo, hi = d.occluders
    count = int(torch.randint(lo, hi + 1, (1,), generator=g)) if hi > lo else lo
    if count == 0:
        return image, alpha
    size = image.shape[-1]
    p = torch.rand(count, 6, generator=g, dtype=torch.float32)  # side, centre (2), colour (3)
    x, y = _pixel_grid(size)
    own = alpha[n_d] >= 0.5  # the target's pixels (S×S)
    if not own.any():
        return image, alpha
    rows, cols = own.any(1).nonzero()[:, 0], own.any(0).nonzero()[:, 0]
    box = torch.stack([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float()
    lo_s, hi_s = d.occluder_size
    alpha = alpha.clone()
    for k in range(count):
        half = float(diam[n_d]) * (lo_s + (hi_s - lo_s) * p[k, 0]) / 2
        cx = box[0] + (box[2] - box[0]) * p[k, 1]
        cy = box[1] + (box[3] - box[1]) * p[k, 2]
        cover = ((x - cx).abs() <= half) & ((y - cy).abs() <= half)  # S×S
        image = torch.where(cover, p[k, 3:6].view(3, 1, 1), image)
        alpha[:, cover] = 0.0
    return image, alpha


def _choice(owner: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}: {name} must be one of {list(allowed)}, got {value!r}")


def _check_int(owner: str, name: str, value: Any, low: int, alternative: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{owner}: {name} must be {alternative}an integer ≥ {low}, got {value!r}")


class SyntheticScenes(Dataset):
    """Procedural scenes for classification, segmentation or detection.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (independent random streams).
        length: number of scenes (default: 5000 for train, 1000 for val and test).
        size: image side S in pixels (≥ 16).
        num_classes: K, the first K of :data:`CLASS_GLYPHS` (2..10).
        difficulty: a name of :data:`DIFFICULTIES` (``"easy"``, ``"medium"``, ``"default"``,
            ``"hard"``, ``"cluttered"``, ``"cluttered-hard"``) or a :class:`Difficulty`.
        seed: generator seed; the scenes are a function of (seed, split, index).
        task: what an item is: ``"classification"`` → (image, label),
            ``"segmentation"`` → (image, mask), ``"detection"`` → (image,
            {"boxes": N×4, "labels": N}).
        transform: callable applied to the image only (so, for segmentation and detection,
            nothing geometric); may be set after construction.
        num_targets: class objects per scene (1 for classification; more for dense tasks).
        num_distractors: fixed number of distractors (default: the difficulty's range).
    """

    def __init__(
        self,
        *,
        split: str = "train",
        length: int | None = None,
        size: int = 32,
        num_classes: int = 6,
        difficulty: str | Difficulty = "default",
        seed: int = 0,
        task: str = "classification",
        transform: Callable[[Tensor], Tensor] | None = None,
        num_targets: int = 1,
        num_distractors: int | None = None,
    ) -> None:
        owner = "SyntheticScenes"
        _choice(owner, "split", split, SPLITS)
        _choice(owner, "task", task, TASKS)
        if not isinstance(difficulty, Difficulty):
            _choice(owner, "difficulty", difficulty, tuple(DIFFICULTIES))
        for name, value, low in (("size", size, MIN_SIZE), ("num_targets", num_targets, 1)):
            _check_int(owner, name, value, low)
        if not isinstance(num_classes, int) or not MIN_CLASSES <= num_classes <= MAX_CLASSES:
            raise ValueError(
                f"{owner}: num_classes must be an integer in {MIN_CLASSES}..{MAX_CLASSES} "
                f"(one per glyph in CLASS_GLYPHS), got {num_classes!r}"
            )
        for name, value, low in (("length", length, 1), ("num_distractors", num_distractors, 0)):
            if value is not None:
                _check_int(owner, name, value, low, "None or ")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{owner}: seed must be an integer, got {seed!r}")
        self.split, self.task, self.size, self.seed = split, task, size, seed
        self.length = DEFAULT_LENGTHS[split] if length is None else length
        self.num_classes = num_classes
        self.classes = list(CLASS_GLYPHS[:num_classes])
        self.difficulty = difficulty
        self._difficulty = (
            difficulty if isinstance(difficulty, Difficulty) else DIFFICULTIES[difficulty]
        )
        self.num_targets, self.num_distractors = num_targets, num_distractors
        self.transform = transform

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        """The scene at ``index`` (0 ≤ index < len), identical in every call and process."""
        if (
            isinstance(index, bool)
            or not isinstance(index, Integral)
            or not 0 <= index < self.length
        ):
            raise ValueError(
                f"SyntheticScenes: index must be an integer in 0..{self.length - 1} "
                f"({self.split} split of length {self.length}), got {index!r}"
            )
        g = torch.Generator().manual_seed(_mix64(self.seed, SPLITS.index(self.split), int(index)))
        # One thread: on tensors this small, intra-op threads (grid_sample, indexing, MKL) cost
        # far more to wake than they save, 5-50× per scene on a busy machine. The setting is
        # restored at once, so a training step in the same process keeps its threads.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return render_scene(
                g,
                size=self.size,
                num_classes=self.num_classes,
                difficulty=self._difficulty,
                num_targets=self.num_targets,
                num_distractors=self.num_distractors,
            )
        finally:
            torch.set_num_threads(threads)

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        s = self.scene(int(index) if isinstance(index, Tensor) else index)
        image = self.transform(s.image) if self.transform is not None else s.image
        if self.task == "classification":
            return image, s.label
        if self.task == "segmentation":
            return image, s.mask
        return image, {"boxes": s.boxes, "labels": s.labels}

    def __repr__(self) -> str:
        return (
            f"SyntheticScenes(split={self.split!r}, length={self.length}, size={self.size}, "
            f"num_classes={self.num_classes}, difficulty={self.difficulty!r}, seed={self.seed}, "
            f"task={self.task!r})"
        )
