// The gate product: out = (x·cw[b,c])·sw[b,p] (sw optional), and with a residual r of x's
// shape the residual block's tail in the same pass: out = relu((x·cw)·sw + r). One read of
// x (and r) and one write of out, row by row.
#include "common.h"
#include "ops.h"

namespace attnlab {
namespace {

// relu as PyTorch's: NaN stays NaN.
template <typename T>
inline T relu_of(T v) {
  return v < T(0) ? T(0) : v;
}

template <typename T>
void apply_kernel(const T* x, const T* cw, const T* sw, const T* res, T* out, int64_t B,
                  int64_t C, int64_t P) {
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const T w = cw[bc];
      const T* __restrict__ r = x + bc * P;
      const T* __restrict__ s = sw ? sw + (bc / C) * P : nullptr;
      const T* __restrict__ q = res ? res + bc * P : nullptr;
      T* __restrict__ o = out + bc * P;
      if (q && s) {
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) o[p] = relu_of((r[p] * w) * s[p] + q[p]);
      } else if (q) {
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) o[p] = relu_of(r[p] * w + q[p]);
      } else if (s) {
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) o[p] = (r[p] * w) * s[p];
      } else {
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) o[p] = r[p] * w;
      }
    }
  });
}

Tensor apply(const Tensor& x, const Tensor& cw, const c10::optional<Tensor>& sw,
             const Tensor* res, const char* op) {
  check_full(x, op, "x");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  check_small(cw, x, C, op, "cw");
  check_small(sw, x, P, op, "sw");
  if (res) check_like(*res, x, op, "residual");
  Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_apply", [&] {
    apply_kernel<scalar_t>(x.data_ptr<scalar_t>(), cw.data_ptr<scalar_t>(),
                           ptr_or_null<scalar_t>(sw), res ? res->data_ptr<scalar_t>() : nullptr,
                           out.data_ptr<scalar_t>(), B, C, P);
  });
  return out;
}

}  // namespace

Tensor gate_apply(const Tensor& x, const Tensor& cw, const c10::optional<Tensor>& sw) {
  return apply(x, cw, sw, nullptr, "gate_apply");
}

Tensor gate_apply_relu(const Tensor& x, const Tensor& cw, const c10::optional<Tensor>& sw,
                       const Tensor& residual) {
  return apply(x, cw, sw, &residual, "gate_apply_relu");
}

}  // namespace attnlab
