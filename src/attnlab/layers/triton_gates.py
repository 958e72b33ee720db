"""Triton kernels for the gate modules' full-size passes on CUDA (SE, ECA, CBAM, Coordinate
Attention).

The same operations, with the same signatures and results, as the C++ operators
``torch.ops.attnlab_fast.*`` that :mod:`attnlab.layers.fused` combines on the CPU (its
``_GateProduct`` and ``_CoordProduct`` autograd functions and the inference paths of
``gate_product`` and ``coord_product``): on a CUDA tensor ``fused`` calls these instead. Each
reads and writes a full-size B×C×H×W tensor at most once; the small layers between them (the
MLP, the 7×7 conv, the BatchNorm, the sigmoid) are the module's own, run by PyTorch.

- ``channel_pool``: per (b, c), the mean and max over positions and the count of entries equal
  to the max (the max pool's gradient is split evenly among them, as ``amax``'s).
- ``spatial_pool``: per (b, p), the mean and max over channels of x·cw and the count.
- ``gate_apply``: (x·cw)·sw.
- ``gate_grad_spatial``: Σ_c g·(x·cw) per (b, p).
- ``gate_grad_channel``: Σ_p dy·x per (b, c), dy = g·sw + sa + (x·cw == smx ? se : 0), or g.
- ``gate_grad_input``: dy·cw + ca + (x == cmx ? ce : 0).
- ``coord_pool``, ``coord_apply``, ``coord_grad_gates``, ``coord_grad_input``: Coordinate
  Attention's, in the C++ operators' layouts (B×C×L for NCHW, B×L×C for channels-last).

Full-size tensors are NCHW-contiguous or channels-last; a kernel walks a sample as a C×P plane
(P = H·W) through its strides, in tiles whose long side runs along the contiguous axis.
Sums and maxima are taken in the input's dtype (float32 or float64), each tile lane summing a
strided part of a row and the lanes then added as a tree. The max ties are tested with the
same expressions the forward used (x, or x·cw), so they are found exactly.

Not tuned on a GPU: no task has had one so far (see the README). Correctness is tested on the
CPU in Triton's interpreter (``TRITON_INTERPRET=1``, set before this module is imported) by
``tests/layers/test_triton_gates.py``, and on CUDA by the same tests where one exists.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Elements per tile (a power of two): 4096 float32 = 16 KB of registers spread over the
# program's warps.
_TILE = 4096


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _plane(t: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """t (B×C×H×W) and its strides as a C×P plane per sample: (t, sB, sC, sP)."""
    b, c, h, w = t.shape
    if not (h == 1 or t.stride(2) == w * t.stride(3)):
        t = t.contiguous()
    return t, t.stride(0), t.stride(1), t.stride(3)


def _tiles(c: int, p: int, s_c: int, s_p: int) -> tuple[int, int]:
    """(BC, BP): the tile's long side along the contiguous axis (positions for NCHW)."""
    if s_p == 1 or s_c != 1:
        bp = min(_pow2(p), 256)
        return max(1, min(_pow2(c), _TILE // bp)), bp
    bc = min(_pow2(c), 256)
    return bc, max(1, min(_pow2(p), _TILE // bc))


def _small(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A B×C or B×P term, contiguous in the kernel's dtype (a dummy when absent)."""
    if t is None:
        return like.new_empty(1)
    return t.to(like.dtype).contiguous()


def _check_full(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"attnlab triton: {what} must be B×C×H×W, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"attnlab triton: {what} must be float32 or float64, got {x.dtype}")


# ---------------------------------------------------------------------------------------------
# Reductions over positions, one program per (sample, block of channels): the channel pool
# and the channel gate's gradient.


@triton.jit
def _over_p_kernel(
    x_ptr, g_ptr, cw_ptr, sw_ptr, sa_ptr, se_ptr, smx_ptr,
    o1_ptr, o2_ptr, o3_ptr,
    C, P, sB, sC, sP, gB, gC, gP,
    GRAD: tl.constexpr, WITH_MAX: tl.constexpr, SPATIAL: tl.constexpr,
    BC: tl.constexpr, BP: tl.constexpr,
):  # fmt: skip
    # GRAD = 0: o1 = mean_p x, o2 = max_p x, o3 = #{p : x == max} (WITH_MAX)
    # GRAD = 1: o1 = Σ_p dy·x with dy = g·sw + sa + (x·cw == smx ? se : 0) (SPATIAL), else g
    b = tl.program_id(0).to(tl.int64)  # (offsets past 2^31 elements)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    c_ok = c < C
    xb = x_ptr + b * sB + c[:, None] * sC
    gb = g_ptr + b * gB + c[:, None] * gC
    ty = x_ptr.dtype.element_ty
    s = tl.zeros([BC, BP], dtype=ty)
    m = tl.full([BC, BP], float("-inf"), dtype=ty)
    k = tl.zeros([BC, BP], dtype=ty)
    if GRAD and SPATIAL:
        w = tl.load(cw_ptr + b * C + c, mask=c_ok, other=0.0)
    for p0 in range(0, P, BP):
        p = p0 + tl.arange(0, BP)
        p_ok = p < P
        ok = c_ok[:, None] & p_ok[None, :]
        v = tl.load(xb + p[None, :] * sP, mask=ok, other=0.0)
        if GRAD:
            dy = tl.load(gb + p[None, :] * gP, mask=ok, other=0.0)
            if SPATIAL:
                q = b * P + p
                s1 = tl.load(sw_ptr + q, mask=p_ok, other=0.0)
                s2 = tl.load(sa_ptr + q, mask=p_ok, other=0.0)
                s3 = tl.load(se_ptr + q, mask=p_ok, other=0.0)
                s4 = tl.load(smx_ptr + q, mask=p_ok, other=0.0)
                tie = (v * w[:, None]) == s4[None, :]
                dy = dy * s1[None, :] + s2[None, :] + tl.where(tie, s3[None, :], 0.0)
            s += tl.where(ok, dy * v, 0.0)
        else:
            s += v
            if WITH_MAX:
                vm = tl.where(ok, v, float("-inf"))
                k = tl.where(vm > m, 1.0, tl.where(ok & (vm == m), k + 1.0, k))
                m = tl.maximum(m, vm)
    if GRAD:
        tl.store(o1_ptr + b * C + c, tl.sum(s, 1), mask=c_ok)
    else:
        tl.store(o1_ptr + b * C + c, tl.sum(s, 1) / P, mask=c_ok)
        if WITH_MAX:
            mx = tl.max(m, 1)
            tl.store(o2_ptr + b * C + c, mx, mask=c_ok)
            tl.store(o3_ptr + b * C + c, tl.sum(tl.where(m == mx[:, None], k, 0.0), 1), mask=c_ok)


# Reductions over channels, one program per (sample, block of positions): the spatial pool of
# x·cw and the spatial gate's gradient.


@triton.jit
def _over_c_kernel(
    x_ptr, g_ptr, cw_ptr, o1_ptr, o2_ptr, o3_ptr,
    C, P, sB, sC, sP, gB, gC, gP,
    GRAD: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr,
):  # fmt: skip
    # GRAD = 0: o1 = mean_c x·cw, o2 = max_c x·cw, o3 = #{c : x·cw == max}
    # GRAD = 1: o1 = Σ_c g·(x·cw)
    b = tl.program_id(0).to(tl.int64)  # (offsets past 2^31 elements)
    p = tl.program_id(1) * BP + tl.arange(0, BP)
    p_ok = p < P
    xb = x_ptr + b * sB + p[None, :] * sP
    gb = g_ptr + b * gB + p[None, :] * gP
    ty = x_ptr.dtype.element_ty
    s = tl.zeros([BC, BP], dtype=ty)
    m = tl.full([BC, BP], float("-inf"), dtype=ty)
    k = tl.zeros([BC, BP], dtype=ty)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        c_ok = c < C
        ok = c_ok[:, None] & p_ok[None, :]
        w = tl.load(cw_ptr + b * C + c, mask=c_ok, other=0.0)
        v = tl.load(xb + c[:, None] * sC, mask=ok, other=0.0) * w[:, None]
        if GRAD:
            gv = tl.load(gb + c[:, None] * gC, mask=ok, other=0.0)
            s += tl.where(ok, gv * v, 0.0)
        else:
            s += v
            vm = tl.where(ok, v, float("-inf"))
            k = tl.where(vm > m, 1.0, tl.where(ok & (vm == m), k + 1.0, k))
            m = tl.maximum(m, vm)
    if GRAD:
        tl.store(o1_ptr + b * P + p, tl.sum(s, 0), mask=p_ok)
    else:
        tl.store(o1_ptr + b * P + p, tl.sum(s, 0) / C, mask=p_ok)
        mx = tl.max(m, 0)
        tl.store(o2_ptr + b * P + p, mx, mask=p_ok)
        tl.store(o3_ptr + b * P + p, tl.sum(tl.where(m == mx[None, :], k, 0.0), 0), mask=p_ok)


# Elementwise passes, one program per (sample, block of channels, block of positions).


@triton.jit
def _pointwise_kernel(
    x_ptr, g_ptr, cw_ptr, sw_ptr, sa_ptr, se_ptr, smx_ptr, ca_ptr, ce_ptr, cmx_ptr, out_ptr,
    C, P, sB, sC, sP, gB, gC, gP, oB, oC, oP,
    GRAD: tl.constexpr, SPATIAL: tl.constexpr, CMAX: tl.constexpr,
    BC: tl.constexpr, BP: tl.constexpr,
):  # fmt: skip
    # GRAD = 0: out = (x·cw)·sw (SPATIAL), else x·cw
    # GRAD = 1: out = dy·cw + ca + (x == cmx ? ce : 0) (CMAX), dy as in _over_p_kernel
    b = tl.program_id(0).to(tl.int64)  # (offsets past 2^31 elements)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    p = tl.program_id(2) * BP + tl.arange(0, BP)
    c_ok, p_ok = c < C, p < P
    ok = c_ok[:, None] & p_ok[None, :]
    w = tl.load(cw_ptr + b * C + c, mask=c_ok, other=0.0)[:, None]
    q = b * P + p
    if GRAD and not (SPATIAL or CMAX):
        x = tl.zeros([BC, BP], dtype=x_ptr.dtype.element_ty)  # SE, ECA: x is not needed
    else:
        x = tl.load(x_ptr + b * sB + c[:, None] * sC + p[None, :] * sP, mask=ok, other=0.0)
    if GRAD:
        dy = tl.load(g_ptr + b * gB + c[:, None] * gC + p[None, :] * gP, mask=ok, other=0.0)
        if SPATIAL:
            s1 = tl.load(sw_ptr + q, mask=p_ok, other=0.0)[None, :]
            s2 = tl.load(sa_ptr + q, mask=p_ok, other=0.0)[None, :]
            s3 = tl.load(se_ptr + q, mask=p_ok, other=0.0)[None, :]
            s4 = tl.load(smx_ptr + q, mask=p_ok, other=0.0)[None, :]
            dy = dy * s1 + s2 + tl.where(x * w == s4, s3, 0.0)
        a = tl.load(ca_ptr + b * C + c, mask=c_ok, other=0.0)[:, None]
        out = dy * w + a
        if CMAX:
            cm = tl.load(cmx_ptr + b * C + c, mask=c_ok, other=0.0)[:, None]
            e = tl.load(ce_ptr + b * C + c, mask=c_ok, other=0.0)[:, None]
            out += tl.where(x == cm, e, 0.0)
    else:
        out = x * w
        if SPATIAL:
            out = out * tl.load(sw_ptr + q, mask=p_ok, other=0.0)[None, :]
    tl.store(out_ptr + b * oB + c[:, None] * oC + p[None, :] * oP, out, mask=ok)


def _grid3(b: int, c: int, p: int, bc: int, bp: int) -> tuple[int, int, int]:
    return b, triton.cdiv(c, bc), triton.cdiv(p, bp)


def channel_pool(x: torch.Tensor, with_max: bool):
    """(mean over positions, max or empty, count of entries at the max or empty), each B×C."""
    _check_full(x, "x")
    x, sb, sc, sp = _plane(x)
    b, c, h, w = x.shape
    p = h * w
    avg = x.new_empty(b, c)
    mx = x.new_empty(b, c) if with_max else x.new_empty(0, 0)
    cnt = x.new_empty(b, c) if with_max else x.new_empty(0, 0)
    bc, bp = _tiles(c, p, sc, sp)
    _over_p_kernel[(b, triton.cdiv(c, bc))](
        x, x, avg, avg, avg, avg, avg, avg, mx if with_max else avg, cnt if with_max else avg,
        c, p, sb, sc, sp, sb, sc, sp,
        GRAD=False, WITH_MAX=with_max, SPATIAL=False, BC=bc, BP=bp,
    )  # fmt: skip
    return avg, mx, cnt


def spatial_pool(x: torch.Tensor, cw: torch.Tensor):
    """(mean, max, count at the max) over channels of x·cw, each B×P."""
    _check_full(x, "x")
    x, sb, sc, sp = _plane(x)
    b, c, h, w = x.shape
    p = h * w
    cw = _small(cw, x)
    mean, mx, cnt = (x.new_empty(b, p) for _ in range(3))
    bc, bp = _tiles(c, p, sc, sp)
    _over_c_kernel[(b, triton.cdiv(p, bp))](
        x, x, cw, mean, mx, cnt, c, p, sb, sc, sp, sb, sc, sp, GRAD=False, BC=bc, BP=bp
    )
    return mean, mx, cnt


def gate_apply(x: torch.Tensor, cw: torch.Tensor, sw: torch.Tensor | None) -> torch.Tensor:
    """(x·cw[b, c])·sw[b, p] (sw None: x·cw), in x's layout."""
    _check_full(x, "x")
    x, sb, sc, sp = _plane(x)
    b, c, h, w = x.shape
    out = torch.empty_like(x)
    ob, oc, op = out.stride(0), out.stride(1), out.stride(3)  # (empty_like: x's strides)
    cw_, sw_ = _small(cw, x), _small(sw, x)
    bc, bp = _tiles(c, h * w, sc, sp)
    _pointwise_kernel[_grid3(b, c, h * w, bc, bp)](
        x, x, cw_, sw_, sw_, sw_, sw_, cw_, cw_, cw_, out,
        c, h * w, sb, sc, sp, sb, sc, sp, ob, oc, op,
        GRAD=False, SPATIAL=sw is not None, CMAX=False, BC=bc, BP=bp,
    )  # fmt: skip
    return out


def gate_grad_spatial(g: torch.Tensor, x: torch.Tensor, cw: torch.Tensor) -> torch.Tensor:
    """Σ_c g·(x·cw), B×P."""
    _check_full(x, "x")
    _check_grad(g, x)
    x, sb, sc, sp = _plane(x)
    g, gb, gc, gp = _plane(g)
    b, c, h, w = x.shape
    out = x.new_empty(b, h * w)
    bc, bp = _tiles(c, h * w, sc, sp)
    _over_c_kernel[(b, triton.cdiv(h * w, bp))](
        x, g, _small(cw, x), out, out, out, c, h * w, sb, sc, sp, gb, gc, gp,
        GRAD=True, BC=bc, BP=bp,
    )  # fmt: skip
    return out


def gate_grad_channel(g, x, cw, sw, sa, se, smx) -> torch.Tensor:
    """Σ_p dy·x, B×C: dy = g·sw + sa + (x·cw == smx ? se : 0) with the spatial terms (all four
    given), else g."""
    _check_full(x, "x")
    _check_grad(g, x)
    spatial = _spatial_terms(sw, sa, se, smx)
    x, sb, sc, sp = _plane(x)
    g, gb, gc, gp = _plane(g)
    b, c, h, w = x.shape
    out = x.new_empty(b, c)
    terms = [_small(t, x) for t in (cw, sw, sa, se, smx)]
    bc, bp = _tiles(c, h * w, sc, sp)
    _over_p_kernel[(b, triton.cdiv(c, bc))](
        x, g, *terms, out, out, out, c, h * w, sb, sc, sp, gb, gc, gp,
        GRAD=True, WITH_MAX=False, SPATIAL=spatial, BC=bc, BP=bp,
    )  # fmt: skip
    return out


def gate_grad_input(g, x, cw, sw, sa, se, smx, ca, ce, cmx) -> torch.Tensor:
    """dy·cw + ca + (x == cmx ? ce : 0), dy as in :func:`gate_grad_channel`; in x's layout."""
    _check_full(x, "x")
    _check_grad(g, x)
    spatial = _spatial_terms(sw, sa, se, smx)
    x, sb, sc, sp = _plane(x)
    g, gb, gc, gp = _plane(g)
    b, c, h, w = x.shape
    out = torch.empty_like(x)
    ob, oc, op = out.stride(0), out.stride(1), out.stride(3)  # (empty_like: x's strides)
    terms = [_small(t, x) for t in (cw, sw, sa, se, smx, ca, ce, cmx)]
    bc, bp = _tiles(c, h * w, sc, sp)
    _pointwise_kernel[_grid3(b, c, h * w, bc, bp)](
        x, g, *terms, out, c, h * w, sb, sc, sp, gb, gc, gp, ob, oc, op,
        GRAD=True, SPATIAL=spatial, CMAX=cmx is not None, BC=bc, BP=bp,
    )  # fmt: skip
    return out


def _check_grad(g: torch.Tensor, x: torch.Tensor) -> None:
    if g.shape != x.shape or g.dtype != x.dtype or g.device != x.device:
        raise ValueError(
            f"attnlab triton: grad must match x (got {tuple(g.shape)} {g.dtype} on {g.device}, "
            f"x {tuple(x.shape)} {x.dtype} on {x.device})"
        )


def _spatial_terms(*terms) -> bool:
    given = [t is not None for t in terms]
    if any(given) and not all(given):
        raise ValueError("attnlab triton: the spatial terms sw, sa, se, smx come together")
    return all(given)


# ---------------------------------------------------------------------------------------------
# Coordinate Attention: out = x · a_h[b, c, h] · a_w[b, c, w]. One program per (sample, block
# of channels) walks the rows h of its channels: a row's sum over w gives the per-row term, and
# the column sums over h accumulate in the tile (W up to _TILE / BC).


@triton.jit
def _coord_rows_kernel(
    x_ptr, g_ptr, ah_ptr, aw_ptr, o1_ptr, o2_ptr,
    C, H, W, sB, sC, sH, sW, gB, gC, gH, gW, hB, hC, hL, wB, wC, wL,
    GRAD: tl.constexpr, BC: tl.constexpr, BW: tl.constexpr,
):  # fmt: skip
    # GRAD = 0: o1[b,c,h] = mean_w x, o2[b,c,w] = mean_h x
    # GRAD = 1: o1[b,c,h] = Σ_w (g·aw)·x, o2[b,c,w] = Σ_h g·(x·ah)
    b = tl.program_id(0).to(tl.int64)  # (offsets past 2^31 elements)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    j = tl.arange(0, BW)
    c_ok, j_ok = c < C, j < W
    ok = c_ok[:, None] & j_ok[None, :]
    col = tl.zeros([BC, BW], dtype=x_ptr.dtype.element_ty)
    if GRAD:
        aw = tl.load(aw_ptr + b * wB + c[:, None] * wC + j[None, :] * wL, mask=ok, other=0.0)
    for h in range(0, H):
        x = tl.load(x_ptr + b * sB + c[:, None] * sC + h * sH + j[None, :] * sW, mask=ok, other=0.0)
        row_at = o1_ptr + b * hB + c * hC + h * hL
        if GRAD:
            gv = tl.load(g_ptr + b * gB + c[:, None] * gC + h * gH + j[None, :] * gW, mask=ok,
                         other=0.0)  # fmt: skip
            ah = tl.load(ah_ptr + b * hB + c * hC + h * hL, mask=c_ok, other=0.0)
            tl.store(row_at, tl.sum(tl.where(ok, (gv * aw) * x, 0.0), 1), mask=c_ok)
            col += tl.where(ok, gv * (x * ah[:, None]), 0.0)
        else:
            tl.store(row_at, tl.sum(x, 1) / W, mask=c_ok)
            col += x
    col_at = o2_ptr + b * wB + c[:, None] * wC + j[None, :] * wL
    if GRAD:
        tl.store(col_at, col, mask=ok)
    else:
        tl.store(col_at, col / H, mask=ok)


@triton.jit
def _coord_pointwise_kernel(
    x_ptr, ah_ptr, aw_ptr, dh_ptr, dw_ptr, out_ptr,
    C, H, W, sB, sC, sH, sW, oB, oC, oH, oW, hB, hC, hL, wB, wC, wL,
    GRAD: tl.constexpr, BC: tl.constexpr, BW: tl.constexpr,
):  # fmt: skip
    # GRAD = 0: out = x·ah·aw; GRAD = 1 (x is g): out = (g·aw)·ah + dh[b,c,h] + dw[b,c,w]
    b = tl.program_id(0).to(tl.int64)  # (offsets past 2^31 elements)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    h = tl.program_id(2)
    c_ok = c < C
    ah = tl.load(ah_ptr + b * hB + c * hC + h * hL, mask=c_ok, other=0.0)[:, None]
    if GRAD:
        dh = tl.load(dh_ptr + b * hB + c * hC + h * hL, mask=c_ok, other=0.0)[:, None]
    for j0 in range(0, W, BW):
        j = j0 + tl.arange(0, BW)
        ok = c_ok[:, None] & (j < W)[None, :]
        small = b * wB + c[:, None] * wC + j[None, :] * wL
        aw = tl.load(aw_ptr + small, mask=ok, other=0.0)
        x = tl.load(x_ptr + b * sB + c[:, None] * sC + h * sH + j[None, :] * sW, mask=ok, other=0.0)
        if GRAD:
            out = (x * aw) * ah + dh + tl.load(dw_ptr + small, mask=ok, other=0.0)
        else:
            out = (x * ah) * aw
        tl.store(out_ptr + b * oB + c[:, None] * oC + h * oH + j[None, :] * oW, out, mask=ok)


def _last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _coord_input(x: torch.Tensor, what: str = "x") -> tuple[torch.Tensor, bool]:
    """x checked, NCHW-contiguous or channels-last, and whether it is channels-last."""
    _check_full(x, what)
    last = _last(x)
    return (x if last or x.is_contiguous() else x.contiguous()), last


def _coord_layout(t: torch.Tensor, last: bool) -> tuple[int, int, int]:
    """Strides (b, c, l) of a per-row or per-column term in the C++ operators' layout."""
    return (t.stride(0), t.stride(2), t.stride(1)) if last else tuple(t.stride())


def _coord_tiles(c: int, w: int) -> tuple[int, int]:
    bw = _pow2(w)
    return max(1, min(_pow2(c), _TILE // bw)), bw


def _check_coord(x: torch.Tensor, ah: torch.Tensor, aw: torch.Tensor, last: bool) -> None:
    b, c, h, w = x.shape
    eh, ew = ((b, h, c), (b, w, c)) if last else ((b, c, h), (b, c, w))
    if tuple(ah.shape) != eh or tuple(aw.shape) != ew:
        raise ValueError(
            f"attnlab triton: coordinate gates must be {eh} and {ew}, got "
            f"{tuple(ah.shape)} and {tuple(aw.shape)}"
        )


def coord_pool(x: torch.Tensor):
    """(mean over w, mean over h): B×C×H and B×C×W (channels-last: B×H×C and B×W×C)."""
    x, last = _coord_input(x)
    b, c, h, w = x.shape
    ph = x.new_empty((b, h, c) if last else (b, c, h))
    pw = x.new_empty((b, w, c) if last else (b, c, w))
    bc, bw = _coord_tiles(c, w)
    _coord_rows_kernel[(b, triton.cdiv(c, bc))](
        x, x, ph, pw, ph, pw, c, h, w, *x.stride(), *x.stride(),
        *_coord_layout(ph, last), *_coord_layout(pw, last), GRAD=False, BC=bc, BW=bw,
    )  # fmt: skip
    return ph, pw


def coord_apply(x: torch.Tensor, ah: torch.Tensor, aw: torch.Tensor) -> torch.Tensor:
    """x·a_h·a_w in x's layout (the gates in coord_pool's layout)."""
    x, last = _coord_input(x)
    _check_coord(x, ah, aw, last)
    ah, aw = ah.contiguous(), aw.contiguous()
    b, c, h, w = x.shape
    out = torch.empty_like(x)
    bc, bw = _coord_tiles(c, min(w, 256))
    _coord_pointwise_kernel[(b, triton.cdiv(c, bc), h)](
        x, ah, aw, ah, aw, out, c, h, w, *x.stride(), *out.stride(),
        *_coord_layout(ah, last), *_coord_layout(aw, last), GRAD=False, BC=bc, BW=bw,
    )  # fmt: skip
    return out


def coord_grad_gates(g: torch.Tensor, x: torch.Tensor, ah: torch.Tensor, aw: torch.Tensor):
    """(Σ_w (g·aw)·x, Σ_h g·(x·ah)) in the gates' layout."""
    _check_grad(g, x)
    x, last = _coord_input(x)
    g = g.contiguous(memory_format=torch.channels_last if last else torch.contiguous_format)
    _check_coord(x, ah, aw, last)
    ah, aw = ah.contiguous(), aw.contiguous()
    b, c, h, w = x.shape
    dah, daw = torch.empty_like(ah), torch.empty_like(aw)
    bc, bw = _coord_tiles(c, w)
    _coord_rows_kernel[(b, triton.cdiv(c, bc))](
        x, g, ah, aw, dah, daw, c, h, w, *x.stride(), *g.stride(),
        *_coord_layout(ah, last), *_coord_layout(aw, last), GRAD=True, BC=bc, BW=bw,
    )  # fmt: skip
    return dah, daw


def coord_grad_input(g, ah, aw, dh, dw) -> torch.Tensor:
    """(g·aw)·ah + dh[b,c,h] + dw[b,c,w] in g's layout (the terms in coord_pool's layout)."""
    g, last = _coord_input(g, "grad")
    _check_coord(g, ah, aw, last)
    _check_coord(g, dh, dw, last)
    ah, aw, dh, dw = (t.to(g.dtype).contiguous() for t in (ah, aw, dh, dw))
    b, c, h, w = g.shape
    out = torch.empty_like(g)
    bc, bw = _coord_tiles(c, min(w, 256))
    _coord_pointwise_kernel[(b, triton.cdiv(c, bc), h)](
        g, ah, aw, dh, dw, out, c, h, w, *g.stride(), *out.stride(),
        *_coord_layout(ah, last), *_coord_layout(aw, last), GRAD=True, BC=bc, BW=bw,
    )  # fmt: skip
    return out
