// The backward passes of the gate product out = (x·cw)·sw with the pools that feed the gates.
//
// With y = x·cw, the gradient reaching y is dy = g·sw + sa + [y == smx]·se, where sa = ∂L/∂mean
// / C and se = ∂L/∂max / count are the spatial pools' terms (the caller has run the spatial
// gate's own backward on the pooled maps); without a spatial gate dy = g.
//
// gate_grad_product: the product's own terms in one read of g and x, before the gates' small
//   layers run backward: ∂L/∂sw[b,p] = Σ_c g·y and Σ_p g·x·sw (Σ_p g·x without sw), the
//   product's share of ∂L/∂cw. Given the block tail's output, g is first masked by its ReLU
//   (g = 0 where out ≤ 0, as threshold_backward) and the masked g is returned (else an empty
//   tensor: g is the caller's).
// gate_grad_pool:    the spatial pools' share of ∂L/∂cw, Σ_p x·(sa + [y == smx]·se) (reads x).
//   Together: ∂L/∂cw[b,c] = Σ_p x·dy (sums in double).
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
void grad_pool_kernel(const T* x, const T* cw, const T* sa, const T* se, const T* smx, int64_t B,
                      int64_t C, int64_t P, T* out) {
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / C;
      const T* __restrict__ xr = x + bc * P;
      const T* __restrict__ a = sa + b * P;
      const T* __restrict__ e = se + b * P;
      const T* __restrict__ m = smx + b * P;
      const T w = cw[bc];
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t p = 0; p < P; ++p) s += xr[p] * (a[p] + ((xr[p] * w) == m[p] ? e[p] : T(0)));
      out[bc] = static_cast<T>(s);
    }
  });
}

// One work item: sample b, positions [p0, p0 + n). Writes the masked gradient (with out), adds
// Σ_c g·x·cw into dsw (with dsw) and leaves Σ_p g·x·sw per channel in part (C values).
template <typename T>
void product_tile(const T* grad, const T* out, const T* x, const T* cw, const T* sw, T* gm,
                  T* dsw, int64_t b, int64_t p0, int64_t n, int64_t C, int64_t P, double* s,
                  double* part) {
  const int64_t off = b * C * P + p0;
  const T* __restrict__ w = cw + b * C;
  const T* __restrict__ sr = sw ? sw + b * P + p0 : nullptr;
  for (int64_t p = 0; p < n; ++p) s[p] = 0;
  for (int64_t c = 0; c < C; ++c) {
    const T* __restrict__ xr = x + off + c * P;
    const T* __restrict__ gr = grad + off + c * P;
    if (out) {  // the ReLU's mask, as threshold_backward: zero where out <= 0
      const T* __restrict__ orow = out + off + c * P;
      T* __restrict__ mrow = gm + off + c * P;
#pragma omp simd
      for (int64_t p = 0; p < n; ++p) mrow[p] = orow[p] <= T(0) ? T(0) : gr[p];
      gr = mrow;
    }
    const T wc = w[c];
    double acc = 0;
    if (sr) {
#pragma omp simd reduction(+ : acc)
      for (int64_t p = 0; p < n; ++p) {
        const T t = gr[p] * xr[p];
        s[p] += t * wc;
        acc += t * sr[p];
      }
    } else {
#pragma omp simd reduction(+ : acc)
      for (int64_t p = 0; p < n; ++p) acc += gr[p] * xr[p];
    }
    part[c] = acc;
  }
  if (dsw)
    for (int64_t p = 0; p < n; ++p) dsw[b * P + p0 + p] = static_cast<T>(s[p]);
}

template <typename T>
void grad_product_kernel(const T* grad, const T* out, const T* x, const T* cw, const T* sw,
                         int64_t B, int64_t C, int64_t P, T* gm, T* dsw, T* dcw) {
  const int64_t nt = tiles(P);
  std::vector<double> parts(B * nt * C);  // per (b, tile, c): Σ over the tile's positions
  at::parallel_for(0, B * nt, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> s(kTile);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nt, p0 = (i % nt) * kTile;
      product_tile(grad, out, x, cw, sw, gm, dsw, b, p0, std::min(kTile, P - p0), C, P,
                   s.data(), parts.data() + i * C);
    }
  });
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      double acc = 0;
      for (int64_t t = 0; t < nt; ++t) acc += parts[(b * nt + t) * C + c];
      dcw[b * C + c] = static_cast<T>(acc);
    }
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

std::tuple<Tensor, Tensor, Tensor> gate_grad_product(const Tensor& grad, const Tensor& x,
                                                     const Tensor& cw,
                                                     const c10::optional<Tensor>& sw,
                                                     const c10::optional<Tensor>& out) {
  const char* op = "gate_grad_product";
  check_full(x, op, "x");
  check_like(grad, x, op, "grad");
  const bool masked = out.has_value() && out->defined();
  if (masked) check_like(*out, x, op, "out");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  check_small(cw, x, C, op, "cw");
  check_small(sw, x, P, op, "sw");
  const bool spatial = sw.has_value() && sw->defined();
  Tensor gm = masked ? at::empty_like(x) : at::empty({0}, x.options());
  Tensor dsw = at::empty({spatial ? B : 0, spatial ? P : 0}, x.options());
  Tensor dcw = at::empty({B, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grad_product", [&] {
    grad_product_kernel<scalar_t>(
        grad.data_ptr<scalar_t>(), masked ? out->data_ptr<scalar_t>() : nullptr,
        x.data_ptr<scalar_t>(), cw.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(sw), B, C, P,
        masked ? gm.data_ptr<scalar_t>() : nullptr, spatial ? dsw.data_ptr<scalar_t>() : nullptr,
        dcw.data_ptr<scalar_t>());
  });
  return {gm, dsw, dcw};
}

Tensor gate_grad_pool(const Tensor& x, const Tensor& cw, const Tensor& sa, const Tensor& se,
                      const Tensor& smx) {
  const char* op = "gate_grad_pool";
  check_full(x, op, "x");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  check_small(cw, x, C, op, "cw");
  check_small(sa, x, P, op, "sa");
  check_small(se, x, P, op, "se");
  check_small(smx, x, P, op, "smx");
  Tensor out = at::empty({B, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grad_pool", [&] {
    grad_pool_kernel<scalar_t>(x.data_ptr<scalar_t>(), cw.data_ptr<scalar_t>(),
                               sa.data_ptr<scalar_t>(), se.data_ptr<scalar_t>(),
                               smx.data_ptr<scalar_t>(), B, C, P, out.data_ptr<scalar_t>());
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
