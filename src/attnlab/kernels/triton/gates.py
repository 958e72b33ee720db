"""Triton kernels for the gate product's full-size passes on CUDA (CBAM and its spatial gate;
Woo et al., arXiv 1807.06521).

The same operations, with the same signatures and results, as the C++ operators
``torch.ops.attnlab_kernels.*`` (:mod:`attnlab.kernels.cpu`) that :mod:`attnlab.kernels.gate`
combines: on a CUDA tensor it calls these instead, with ``ATTNLAB_BACKEND=fast`` (the default
on CUDA is the reference path). Each reads and writes a full-size B×C×H×W tensor at most once;
the small layers between them (the MLP, the 7×7 conv, the BatchNorm, the sigmoid) are the
module's own, run by PyTorch.

- ``channel_pool``: per (b, c), the mean and max over positions and the count of entries equal
  to the max (the max pool's gradient is split evenly among them, as ``amax``'s).
- ``spatial_pool``: per (b, p), the mean and max over channels of x·cw and the count.
- ``gate_apply``: (x·cw)·sw.
- ``gate_grad_spatial``: Σ_c g·(x·cw) per (b, p).
- ``gate_grad_channel``: Σ_p dy·x per (b, c), dy = g·sw + sa + (x·cw == smx ? se : 0), or g.
- ``gate_grad_input``: dy·cw + ca + (x == cmx ? ce : 0).

Full-size tensors are NCHW-contiguous or channels-last; a kernel walks a sample as a C×P plane
(P = H·W) through its strides, in tiles whose long side runs along the contiguous axis.
Sums and maxima are taken in the input's dtype (float32 or float64), each tile lane summing a
strided part of a row and the lanes then added as a tree. The max ties are tested with the
same expressions the forward used (x, or x·cw), so they are found exactly.

Not tuned on a GPU. Correctness is tested on the CPU in Triton's interpreter
(``TRITON_INTERPRET=1``, set before this module is imported) by ``tests/kernels/test_triton.py``,
and on CUDA by the same tests where one exists.

Example:
    >>> import importlib.util
    >>> importlib.util.find_spec("triton") is None or callable(gate_apply)
    True
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
