// The backward passes of the gate product out = (x·cw + cb)·sw with the pools that feed the
// gates (cb, a folded norm's shift, optional: 0 where not given).
//
// With y = x·cw + cb, the gradient reaching y is dy = g·sw + sa + [y == smx]·se, where sa =
// ∂L/∂mean / C and se = ∂L/∂max / count are the spatial pools' terms (the caller has run the
// spatial gate's own backward on the pooled maps); without a spatial gate dy = g.
//
// gate_grad_spatial: ∂L/∂sw[b,p] = Σ_c g·y.
// gate_grad_channel: ∂L/∂cw[b,c] = Σ_p x·dy (sums in double).
// gate_grad_affine:  ∂L/∂cw[b,c] and ∂L/∂cb[b,c] = Σ_p dy in the same pass.
// gate_grad_input:   ∂L/∂x = dy·cw + ca + [x == cmx]·ce (+ (x − cm)·cq), ca and ce the channel
//                    pools' terms, cq the folded norm's variance term.
// Ties are tested with the same products the forward pools took, so they match exactly.
#include <algorithm>
#include <vector>

#include "common.h"
#include "ops.h"

namespace attnlab {
namespace {

// Whether the spatial terms are given: all four or none.
bool spatial_terms(const Tensor& x, const c10::optional<Tensor>& sw,
                   const c10::optional<Tensor>& sa, const c10::optional<Tensor>& se,
                   const c10::optional<Tensor>& smx, const char* op) {
  const int64_t P = x.size(2) * x.size(3);
  const auto given = [](const c10::optional<Tensor>& t) { return t.has_value() && t->defined(); };
  const int n = given(sw) + given(sa) + given(se) + given(smx);
  TORCH_CHECK(n == 0 || n == 4, "attnlab_kernels::", op,
              ": sw, sa, se and smx must be given together or not at all");
  check_small(sw, x, P, op, "sw");
  check_small(sa, x, P, op, "sa");
  check_small(se, x, P, op, "se");
  check_small(smx, x, P, op, "smx");
  return n == 4;
}

template <typename T>
void grad_spatial_kernel(const T* g, const T* x, const T* cw, const T* cb, int64_t B, int64_t C,
                         int64_t P, T* out) {
  const int64_t nt = tiles(P);
  at::parallel_for(0, B * nt, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> sv(kTile);
    double* __restrict__ s = sv.data();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nt, p0 = (i % nt) * kTile, n = std::min(kTile, P - p0);
      const int64_t off = b * C * P + p0;
      for (int64_t p = 0; p < n; ++p) s[p] = 0;
      for (int64_t c = 0; c < C; ++c) {
        const T* __restrict__ gr = g + off + c * P;
        const T* __restrict__ xr = x + off + c * P;
        const T w = cw[b * C + c], t = cb ? cb[b * C + c] : T(0);
#pragma omp simd
        for (int64_t p = 0; p < n; ++p) s[p] += gr[p] * (xr[p] * w + t);
      }
      T* __restrict__ o = out + b * P + p0;
      for (int64_t p = 0; p < n; ++p) o[p] = static_cast<T>(s[p]);
    }
  });
}

// dy for one row (b, c) into d (P values).
template <typename T>
inline void row_dy(const T* __restrict__ g, const T* __restrict__ x, T w, T t,
                   const T* __restrict__ sw, const T* __restrict__ sa, const T* __restrict__ se,
                   const T* __restrict__ smx, int64_t P, T* __restrict__ d) {
#pragma omp simd
  for (int64_t p = 0; p < P; ++p)
    d[p] = g[p] * sw[p] + sa[p] + ((x[p] * w + t) == smx[p] ? se[p] : T(0));
}

template <typename T>
void grad_channel_kernel(const T* g, const T* x, const T* cw, const T* cb, const T* sw,
                         const T* sa, const T* se, const T* smx, int64_t B, int64_t C, int64_t P,
                         T* out, T* out_shift) {
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> dv(sw ? P : 0);
    T* __restrict__ d = dv.data();
    for (int64_t bc = begin; bc < end; ++bc) {
      const T* __restrict__ gr = g + bc * P;
      const T* __restrict__ xr = x + bc * P;
      double s = 0, s0 = 0;
      if (sw) {
        const int64_t b = bc / C;
        const T t = cb ? cb[bc] : T(0);
        row_dy(gr, xr, cw[bc], t, sw + b * P, sa + b * P, se + b * P, smx + b * P, P, d);
        gr = d;
      }
      if (out_shift) {
#pragma omp simd reduction(+ : s, s0)
        for (int64_t p = 0; p < P; ++p) s += xr[p] * gr[p], s0 += gr[p];
        out_shift[bc] = static_cast<T>(s0);
      } else {
#pragma omp simd reduction(+ : s)
        for (int64_t p = 0; p < P; ++p) s += xr[p] * gr[p];
      }
      out[bc] = static_cast<T>(s);
    }
  });
}

template <typename T>
void grad_input_kernel(const T* g, const T* x, const T* cw, const T* sw, const T* sa,
                       const T* se, const T* smx, const T* ca, const T* ce, const T* cmx,
                       const T* cb, const T* cm, const T* cq, int64_t B, int64_t C, int64_t P,
                       T* out) {
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const T* __restrict__ xr = x + bc * P;
      T* o = out + bc * P;
      const T w = cw[bc], a = ca[bc], e = ce[bc], m = cmx[bc];
      const T* d = g + bc * P;  // dy: g, or the spatial terms' sum written into o first
      if (sw) {
        const int64_t b = bc / C;
        const T t = cb ? cb[bc] : T(0);
        row_dy(d, xr, w, t, sw + b * P, sa + b * P, se + b * P, smx + b * P, P, o);
        d = o;
      }
      if (cq) {
        const T mu = cm[bc], q = cq[bc];
#pragma omp simd
        for (int64_t p = 0; p < P; ++p)
          o[p] = d[p] * w + a + (xr[p] == m ? e : T(0)) + (xr[p] - mu) * q;
      } else {
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) o[p] = d[p] * w + a + (xr[p] == m ? e : T(0));
      }
    }
  });
}

}  // namespace

Tensor gate_grad_spatial(const Tensor& g, const Tensor& x, const Tensor& cw,
                         const c10::optional<Tensor>& cb) {
  check_full(x, "gate_grad_spatial", "x");
  check_like(g, x, "gate_grad_spatial", "g");
  check_small(cw, x, x.size(1), "gate_grad_spatial", "cw");
  check_small(cb, x, x.size(1), "gate_grad_spatial", "cb");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  Tensor out = at::empty({B, P}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grad_spatial", [&] {
    grad_spatial_kernel<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                  cw.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(cb), B, C, P,
                                  out.data_ptr<scalar_t>());
  });
  return out;
}

namespace {

std::tuple<Tensor, Tensor> grad_channel(const Tensor& g, const Tensor& x, const Tensor& cw,
                                        const c10::optional<Tensor>& sw,
                                        const c10::optional<Tensor>& sa,
                                        const c10::optional<Tensor>& se,
                                        const c10::optional<Tensor>& smx,
                                        const c10::optional<Tensor>& cb, bool shift,
                                        const char* op) {
  check_full(x, op, "x");
  check_like(g, x, op, "g");
  check_small(cw, x, x.size(1), op, "cw");
  check_small(cb, x, x.size(1), op, "cb");
  spatial_terms(x, sw, sa, se, smx, op);
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  Tensor out = at::empty({B, C}, x.options());
  Tensor out_shift = at::empty({shift ? B : 0, shift ? C : 0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grad_channel", [&] {
    grad_channel_kernel<scalar_t>(
        g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), cw.data_ptr<scalar_t>(),
        ptr_or_null<scalar_t>(cb), ptr_or_null<scalar_t>(sw), ptr_or_null<scalar_t>(sa),
        ptr_or_null<scalar_t>(se), ptr_or_null<scalar_t>(smx), B, C, P,
        out.data_ptr<scalar_t>(), shift ? out_shift.data_ptr<scalar_t>() : nullptr);
  });
  return {out, out_shift};
}

}  // namespace

Tensor gate_grad_channel(const Tensor& g, const Tensor& x, const Tensor& cw,
                         const c10::optional<Tensor>& sw, const c10::optional<Tensor>& sa,
                         const c10::optional<Tensor>& se, const c10::optional<Tensor>& smx) {
  return std::get<0>(grad_channel(g, x, cw, sw, sa, se, smx, c10::nullopt, false,
                                  "gate_grad_channel"));
}

std::tuple<Tensor, Tensor> gate_grad_affine(const Tensor& g, const Tensor& x, const Tensor& cw,
                                            const c10::optional<Tensor>& sw,
                                            const c10::optional<Tensor>& sa,
                                            const c10::optional<Tensor>& se,
                                            const c10::optional<Tensor>& smx,
                                            const c10::optional<Tensor>& cb) {
  return grad_channel(g, x, cw, sw, sa, se, smx, cb, true, "gate_grad_affine");
}

Tensor gate_grad_input(const Tensor& g, const Tensor& x, const Tensor& cw,
                       const c10::optional<Tensor>& sw, const c10::optional<Tensor>& sa,
                       const c10::optional<Tensor>& se, const c10::optional<Tensor>& smx,
                       const Tensor& ca, const Tensor& ce, const Tensor& cmx,
                       const c10::optional<Tensor>& cb, const c10::optional<Tensor>& cm,
                       const c10::optional<Tensor>& cq) {
  const char* op = "gate_grad_input";
  check_full(x, op, "x");
  check_like(g, x, op, "g");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  check_small(cw, x, C, op, "cw");
  check_small(ca, x, C, op, "ca");
  check_small(ce, x, C, op, "ce");
  check_small(cmx, x, C, op, "cmx");
  check_small(cb, x, C, op, "cb");
  check_small(cm, x, C, op, "cm");
  check_small(cq, x, C, op, "cq");
  TORCH_CHECK(cm.has_value() == cq.has_value(), "attnlab_kernels::", op,
              ": cm and cq must be given together or not at all");
  spatial_terms(x, sw, sa, se, smx, op);
  Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grad_input", [&] {
    grad_input_kernel<scalar_t>(
        g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), cw.data_ptr<scalar_t>(),
        ptr_or_null<scalar_t>(sw), ptr_or_null<scalar_t>(sa), ptr_or_null<scalar_t>(se),
        ptr_or_null<scalar_t>(smx), ca.data_ptr<scalar_t>(), ce.data_ptr<scalar_t>(),
        cmx.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(cb), ptr_or_null<scalar_t>(cm),
        ptr_or_null<scalar_t>(cq), B, C, P, out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace attnlab
