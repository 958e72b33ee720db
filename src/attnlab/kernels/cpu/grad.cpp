// The backward passes of the gate product out = (x·cw)·sw with the pools that feed the gates.
//
// With y = x·cw, the gradient reaching y is dy = g·sw + sa + [y == smx]·se, where sa = ∂L/∂mean
// / C and se = ∂L/∂max / count are the spatial pools' terms (the caller has run the spatial
// gate's own backward on the pooled maps); without a spatial gate dy = g.
//
// gate_grad_spatial: ∂L/∂sw[b,p] = Σ_c g·y.
// gate_grad_channel: ∂L/∂cw[b,c] = Σ_p x·dy (sums in double).
// gate_grad_input:   ∂L/∂x = dy·cw + ca + [x == cmx]·ce, ca and ce the channel pools' terms.
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
void grad_spatial_kernel(const T* g, const T* x, const T* cw, int64_t B, int64_t C, int64_t P,
                         T* out) {
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
        const T w = cw[b * C + c];
#pragma omp simd
        for (int64_t p = 0; p < n; ++p) s[p] += gr[p] * (xr[p] * w);
      }
      T* __restrict__ o = out + b * P + p0;
      for (int64_t p = 0; p < n; ++p) o[p] = static_cast<T>(s[p]);
    }
  });
}

// dy for one row (b, c) into d (P values).
template <typename T>
inline void row_dy(const T* __restrict__ g, const T* __restrict__ x, T w, const T* __restrict__ sw,
                   const T* __restrict__ sa, const T* __restrict__ se, const T* __restrict__ smx,
                   int64_t P, T* __restrict__ d) {
#pragma omp simd
  for (int64_t p = 0; p < P; ++p)
    d[p] = g[p] * sw[p] + sa[p] + ((x[p] * w) == smx[p] ? se[p] : T(0));
}

template <typename T>
void grad_channel_kernel(const T* g, const T* x, const T* cw, const T* sw, const T* sa,
                         const T* se, const T* smx, int64_t B, int64_t C, int64_t P, T* out) {
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> dv(sw ? P : 0);
    T* __restrict__ d = dv.data();
    for (int64_t bc = begin; bc < end; ++bc) {
      const T* __restrict__ gr = g + bc * P;
      const T* __restrict__ xr = x + bc * P;
      double s = 0;
      if (sw) {
        const int64_t b = bc / C;
        row_dy(gr, xr, cw[bc], sw + b * P, sa + b * P, se + b * P, smx + b * P, P, d);
        gr = d;
      }
#pragma omp simd reduction(+ : s)
      for (int64_t p = 0; p < P; ++p) s += xr[p] * gr[p];
      out[bc] = static_cast<T>(s);
    }
  });
}

template <typename T>
void grad_input_kernel(const T* g, const T* x, const T* cw, const T* sw, const T* sa,
                       const T* se, const T* smx, const T* ca, const T* ce, const T* cmx,
                       int64_t B, int64_t C, int64_t P, T* out) {
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const T* __restrict__ gr = g + bc * P;
      const T* __restrict__ xr = x + bc * P;
      T* __restrict__ o = out + bc * P;
      const T w = cw[bc], a = ca[bc], e = ce[bc], m = cmx[bc];
      if (sw) {
        const int64_t b = bc / C;
        row_dy(gr, xr, w, sw + b * P, sa + b * P, se + b * P, smx + b * P, P, o);
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) o[p] = o[p] * w + a + (xr[p] == m ? e : T(0));
      } else {
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) o[p] = gr[p] * w + a + (xr[p] == m ? e : T(0));
      }
    }
  });
}

}  // namespace

Tensor gate_grad_spatial(const Tensor& g, const Tensor& x, const Tensor& cw) {
  check_full(x, "gate_grad_spatial", "x");
  check_like(g, x, "gate_grad_spatial", "g");
  check_small(cw, x, x.size(1), "gate_grad_spatial", "cw");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  Tensor out = at::empty({B, P}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grad_spatial", [&] {
    grad_spatial_kernel<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                  cw.data_ptr<scalar_t>(), B, C, P, out.data_ptr<scalar_t>());
  });
  return out;
}

Tensor gate_grad_channel(const Tensor& g, const Tensor& x, const Tensor& cw,
                         const c10::optional<Tensor>& sw, const c10::optional<Tensor>& sa,
                         const c10::optional<Tensor>& se, const c10::optional<Tensor>& smx) {
  const char* op = "gate_grad_channel";
  check_full(x, op, "x");
  check_like(g, x, op, "g");
  check_small(cw, x, x.size(1), op, "cw");
  spatial_terms(x, sw, sa, se, smx, op);
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  Tensor out = at::empty({B, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grad_channel", [&] {
    grad_channel_kernel<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                  cw.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(sw),
                                  ptr_or_null<scalar_t>(sa), ptr_or_null<scalar_t>(se),
                                  ptr_or_null<scalar_t>(smx), B, C, P, out.data_ptr<scalar_t>());
  });
  return out;
}

Tensor gate_grad_input(const Tensor& g, const Tensor& x, const Tensor& cw,
                       const c10::optional<Tensor>& sw, const c10::optional<Tensor>& sa,
                       const c10::optional<Tensor>& se, const c10::optional<Tensor>& smx,
                       const Tensor& ca, const Tensor& ce, const Tensor& cmx) {
  const char* op = "gate_grad_input";
  check_full(x, op, "x");
  check_like(g, x, op, "g");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  check_small(cw, x, C, op, "cw");
  check_small(ca, x, C, op, "ca");
  check_small(ce, x, C, op, "ce");
  check_small(cmx, x, C, op, "cmx");
  spatial_terms(x, sw, sa, se, smx, op);
  Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grad_input", [&] {
    grad_input_kernel<scalar_t>(
        g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), cw.data_ptr<scalar_t>(),
        ptr_or_null<scalar_t>(sw), ptr_or_null<scalar_t>(sa), ptr_or_null<scalar_t>(se),
        ptr_or_null<scalar_t>(smx), ca.data_ptr<scalar_t>(), ce.data_ptr<scalar_t>(),
        cmx.data_ptr<scalar_t>(), B, C, P, out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace attnlab
