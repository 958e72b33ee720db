"""Glyphs of the synthetic scenes: boolean shape masks and their anti-aliased templates.

Each glyph is a boolean function of local coordinates u, v in [-1, 1] (u right, v down),
inside the unit disk so that any rotation stays inside the object's square. Class glyphs are
mirror-symmetric (horizontal flips keep labels); several distractor glyphs are drawn to look
like a class glyph (a half disk, a square frame, a broken ring, …).
:func:`templates` renders them all, supersampled 4×, as coverage maps for ``grid_sample``.

Example:
    >>> from attnlab.data.glyphs import CLASS_GLYPHS, DISTRACTOR_GLYPHS, templates
    >>> tuple(templates(8).shape) == (len(CLASS_GLYPHS) + len(DISTRACTOR_GLYPHS), 1, 8, 8)
    True
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

# fmt: off
CLASS_GLYPHS = ("circle", "square", "triangle", "cross", "ring", "star", "diamond", "bar",
                "crescent", "tee")
DISTRACTOR_GLYPHS = ("half_disk", "square_frame", "triangle_frame", "broken_ring", "ellipse",
                     "tripod", "star4", "ell")
# fmt: on


def _polygon(u: Tensor, v: Tensor, pts: list[tuple[float, float]]) -> Tensor:
    """Even-odd point-in-polygon test over the grid."""
    inside = torch.zeros_like(u, dtype=torch.bool)
    for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True):
        crosses = (y1 > v) != (y2 > v)
        x_at = x1 + (x2 - x1) * (v - y1) / (y2 - y1 if y2 != y1 else 1e-12)
        inside ^= crosses & (u < x_at)
    return inside


def _regular(n: int, radius: float, inner: float | None = None, turn: float = -90.0) -> list:
    """Vertices of a regular n-gon (or an n-point star with ``inner`` radius)."""
    pts = []
    for k in range(n * (2 if inner else 1)):
        r = inner if inner and k % 2 else radius
        a = math.radians(turn) + k * math.pi / (n if inner else n / 2)
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _box(u: Tensor, v: Tensor, x0: float, x1: float, y0: float, y1: float) -> Tensor:
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)


def _glyph(name: str, u: Tensor, v: Tensor) -> Tensor:
    r = torch.sqrt(u * u + v * v)
    square = u.abs().maximum(v.abs())
    if name == "circle":
        return r <= 0.9
    if name == "square":
        return square <= 0.66
    if name == "triangle":
        return _polygon(u, v, _regular(3, 0.95, turn=-90.0))
    if name == "cross":
        return _box(u, v, -0.27, 0.27, -0.9, 0.9) | _box(u, v, -0.9, 0.9, -0.27, 0.27)
    if name == "ring":
        return (r <= 0.9) & (r >= 0.52)
    if name == "star":
        return _polygon(u, v, _regular(5, 0.97, inner=0.42))
    if name == "diamond":
        return u.abs() / 0.95 + v.abs() / 0.55 <= 1
    if name == "bar":
        return _box(u, v, -0.9, 0.9, -0.3, 0.3)
    if name == "crescent":
        return (r <= 0.9) & ((u - 0.45) ** 2 + v * v >= 0.72**2)
    if name == "tee":
        return _box(u, v, -0.66, 0.66, -0.75, -0.3) | _box(u, v, -0.22, 0.22, -0.3, 0.85)
    if name == "half_disk":
        return (r <= 0.9) & (v >= -0.2)
    if name == "square_frame":
        return (square <= 0.66) & (square >= 0.36)
    if name == "triangle_frame":
        return _polygon(u, v, _regular(3, 0.95)) & ~_polygon(u, v, _regular(3, 0.45))
    if name == "broken_ring":
        return (r <= 0.9) & (r >= 0.52) & ~((u > 0) & (v.abs() < 0.3))
    if name == "ellipse":
        return (u / 0.92) ** 2 + (v / 0.5) ** 2 <= 1
    if name == "tripod":
        arms = torch.zeros_like(r, dtype=torch.bool)
        for a in (-90.0, 30.0, 150.0):
            c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
            along, across = u * c + v * s, -u * s + v * c
            arms |= (along >= 0) & (along <= 0.9) & (across.abs() <= 0.22)
        return arms | (r <= 0.3)
    if name == "star4":
        return _polygon(u, v, _regular(4, 0.95, inner=0.3, turn=0.0))
    if name == "ell":
        return _box(u, v, -0.6, -0.15, -0.75, 0.6) | _box(u, v, -0.6, 0.6, 0.15, 0.6)
    raise KeyError(name)


@lru_cache(maxsize=8)
def templates(resolution: int) -> Tensor:
    """Coverage (alpha) of every glyph on a resolution² grid over [-1, 1]², as G×1×R×R.

    Supersampled 4× then averaged, so edges are anti-aliased; texel centres match
    ``grid_sample(align_corners=False)``.
    """
    ss = 4
    n = resolution * ss
    t = (torch.arange(n, dtype=torch.float64) * 2 + 1) / n - 1
    v, u = torch.meshgrid(t, t, indexing="ij")  # rows are v (down), columns u (right)
    glyphs = [_glyph(name, u, v) for name in CLASS_GLYPHS + DISTRACTOR_GLYPHS]
    fine = torch.stack(glyphs).unsqueeze(1).float()  # G×1×(R·ss)×(R·ss)
    return F.avg_pool2d(fine, ss)  # G×1×R×R
