// A residual block's tail with its last BatchNorm folded into a channel gate:
// out = relu(x·scale[b,c] + shift[b,c] + residual), where x is the block's last convolution's
// output and scale, shift hold the norm's affine map times the gate (computed on B×C tensors
// in PyTorch). The norm's batch statistics and the gate's pooled descriptor both come from the
// per-row moments of x, so x is read once for the statistics and once for the output.
//
// row_moments:    per (b, c), the mean and the biased variance over positions.
// affine_relu:    the tail's forward, one read of x and residual, one write.
// relu_grad_sums: d = g·[out > 0] (the ReLU's backward, also the residual's gradient), and per
//                 (b, c) the sums of d and of d·x, from which the scale's and shift's
//                 gradients follow.
// affine_grad:    dx = d·p[b,c] + (x − m[b,c])·q[b,c] + r[b,c]: the direct term and the
//                 moments' terms of the input gradient in one pass.
#include <algorithm>

#include "common.h"
#include "ops.h"

namespace attnlab {
namespace {

// One pass per row: sums of d = x − x₀ and d² (x₀, the row's first value, keeps the variance's
// cancellation small) in x's type over blocks of kBlock values, the blocks' sums in double.
constexpr int64_t kBlock = 256;

template <typename T>
void moments_kernel(const T* x, int64_t rows, int64_t P, T* mean, T* var) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* __restrict__ row = x + i * P;
      const T x0 = row[0];
      double s = 0, q = 0;
      for (int64_t p0 = 0; p0 < P; p0 += kBlock) {
        const int64_t n = std::min(kBlock, P - p0);
        const T* __restrict__ r = row + p0;
        T bs = 0, bq = 0;
#pragma omp simd reduction(+ : bs, bq)
        for (int64_t p = 0; p < n; ++p) {
          const T d = r[p] - x0;
          bs += d, bq += d * d;
        }
        s += bs, q += bq;
      }
      const double m = s / P, v = q / P - m * m;
      mean[i] = static_cast<T>(x0 + m);
      var[i] = static_cast<T>(v > 0 ? v : 0);
    }
  });
}

template <typename T>
void affine_relu_kernel(const T* x, const T* scale, const T* shift, const T* res, T* out,
                        int64_t rows, int64_t P) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T a = scale[i], b = shift[i];
      const T* __restrict__ r = x + i * P;
      const T* __restrict__ q = res + i * P;
      T* __restrict__ o = out + i * P;
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) {
        const T v = r[p] * a + b + q[p];
        o[p] = v < T(0) ? T(0) : v;  // as relu: NaN stays NaN
      }
    }
  });
}

template <typename T>
void relu_grad_sums_kernel(const T* g, const T* out, const T* x, T* d, T* s1, T* s2,
                           int64_t rows, int64_t P) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* __restrict__ gr = g + i * P;
      const T* __restrict__ o = out + i * P;
      const T* __restrict__ r = x + i * P;
      T* __restrict__ dr = d + i * P;
      double a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
      for (int64_t p = 0; p < P; ++p) {
        const T v = o[p] > T(0) ? gr[p] : T(0);
        dr[p] = v;
        a += v;
        b += static_cast<double>(v) * r[p];
      }
      s1[i] = static_cast<T>(a);
      s2[i] = static_cast<T>(b);
    }
  });
}

template <typename T>
void affine_grad_kernel(const T* d, const T* x, const T* pc, const T* mc, const T* qc,
                        const T* rc, T* dx, int64_t rows, int64_t P) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T p_ = pc[i], m = mc[i], q = qc[i], r_ = rc[i];
      const T* __restrict__ dr = d + i * P;
      const T* __restrict__ r = x + i * P;
      T* __restrict__ o = dx + i * P;
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) o[p] = dr[p] * p_ + (r[p] - m) * q + r_;
    }
  });
}

int64_t rows_of(const Tensor& x) { return x.size(0) * x.size(1); }
int64_t positions_of(const Tensor& x) { return x.size(2) * x.size(3); }

}  // namespace

std::tuple<Tensor, Tensor> row_moments(const Tensor& x) {
  check_full(x, "row_moments", "x");
  TORCH_CHECK(positions_of(x) > 0, "attnlab_kernels::row_moments: x has no positions");
  Tensor mean = at::empty({x.size(0), x.size(1)}, x.options());
  Tensor var = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "row_moments", [&] {
    moments_kernel<scalar_t>(x.data_ptr<scalar_t>(), rows_of(x), positions_of(x),
                             mean.data_ptr<scalar_t>(), var.data_ptr<scalar_t>());
  });
  return {mean, var};
}

Tensor affine_relu(const Tensor& x, const Tensor& scale, const Tensor& shift,
                   const Tensor& residual) {
  const char* op = "affine_relu";
  check_full(x, op, "x");
  check_small(scale, x, x.size(1), op, "scale");
  check_small(shift, x, x.size(1), op, "shift");
  check_like(residual, x, op, "residual");
  Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "norm_tail", [&] {
    affine_relu_kernel<scalar_t>(x.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                                 shift.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(),
                                 out.data_ptr<scalar_t>(), rows_of(x), positions_of(x));
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor> relu_grad_sums(const Tensor& g, const Tensor& out,
                                                  const Tensor& x) {
  const char* op = "relu_grad_sums";
  check_full(x, op, "x");
  check_like(g, x, op, "g");
  check_like(out, x, op, "out");
  Tensor d = at::empty_like(x);
  Tensor s1 = at::empty({x.size(0), x.size(1)}, x.options());
  Tensor s2 = at::empty_like(s1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "norm_tail", [&] {
    relu_grad_sums_kernel<scalar_t>(g.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                    x.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(),
                                    s1.data_ptr<scalar_t>(), s2.data_ptr<scalar_t>(),
                                    rows_of(x), positions_of(x));
  });
  return {d, s1, s2};
}

Tensor affine_grad(const Tensor& d, const Tensor& x, const Tensor& p, const Tensor& m,
                   const Tensor& q, const Tensor& r) {
  const char* op = "affine_grad";
  check_full(x, op, "x");
  check_like(d, x, op, "d");
  const int64_t C = x.size(1);
  check_small(p, x, C, op, "p");
  check_small(m, x, C, op, "m");
  check_small(q, x, C, op, "q");
  check_small(r, x, C, op, "r");
  Tensor dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "norm_tail", [&] {
    affine_grad_kernel<scalar_t>(d.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                 p.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(),
                                 q.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                                 dx.data_ptr<scalar_t>(), rows_of(x), positions_of(x));
  });
  return dx;
}

}  // namespace attnlab
