// Global pools of the gate modules.
//
// channel_pool: per (b, c), the mean and the max over positions, and the number of positions
//   equal to the max (the max pool's gradient is split evenly among them, as amax's is).
// spatial_pool: per (b, p), the mean and the max over channels of y = x·cw, and the number of
//   channels equal to the max.
// Sums accumulate in double: the pools feed gates whose gradients are sums over a whole map.
#include <algorithm>
#include <vector>

#include "common.h"
#include "ops.h"

namespace attnlab {
namespace {

template <typename T>
void channel_pool_kernel(const T* x, int64_t rows, int64_t P, T* avg, T* mx, T* cnt) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* __restrict__ row = x + i * P;
      double s = 0;
      T m = row[0];
#pragma omp simd reduction(+ : s) reduction(max : m)
      for (int64_t p = 0; p < P; ++p) {
        s += row[p];
        m = row[p] > m ? row[p] : m;
      }
      avg[i] = static_cast<T>(s / P);
      if (!mx) continue;
      T k = 0;
#pragma omp simd reduction(+ : k)
      for (int64_t p = 0; p < P; ++p) k += row[p] == m ? T(1) : T(0);
      mx[i] = m;
      cnt[i] = k;
    }
  });
}

template <typename T>
void spatial_pool_kernel(const T* x, const T* cw, int64_t B, int64_t C, int64_t P, T* mean,
                         T* mx, T* cnt) {
  const int64_t nt = tiles(P);
  at::parallel_for(0, B * nt, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> sv(kTile);
    std::vector<T> mv(kTile), kv(kTile);
    double* __restrict__ s = sv.data();
    T* __restrict__ m = mv.data();
    T* __restrict__ k = kv.data();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nt, p0 = (i % nt) * kTile, n = std::min(kTile, P - p0);
      const T* __restrict__ xb = x + b * C * P + p0;
      const T* __restrict__ w = cw + b * C;
      for (int64_t p = 0; p < n; ++p) s[p] = 0, m[p] = xb[p] * w[0], k[p] = 0;
      for (int64_t c = 0; c < C; ++c) {
        const T* __restrict__ r = xb + c * P;
        const T wc = w[c];
#pragma omp simd
        for (int64_t p = 0; p < n; ++p) {
          const T y = r[p] * wc;
          s[p] += y;
          k[p] = y > m[p] ? T(1) : k[p] + (y == m[p] ? T(1) : T(0));
          m[p] = y > m[p] ? y : m[p];
        }
      }
      T* __restrict__ mo = mean + b * P + p0;
      T* __restrict__ xo = mx + b * P + p0;
      T* __restrict__ ko = cnt + b * P + p0;
      for (int64_t p = 0; p < n; ++p)
        mo[p] = static_cast<T>(s[p] / C), xo[p] = m[p], ko[p] = k[p];
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> channel_pool(const Tensor& x, bool with_max) {
  check_full(x, "channel_pool", "x");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  TORCH_CHECK(P > 0, "attnlab_kernels::channel_pool: x has no positions");
  Tensor avg = at::empty({B, C}, x.options());
  Tensor mx = at::empty({with_max ? B : 0, with_max ? C : 0}, x.options());
  Tensor cnt = at::empty({with_max ? B : 0, with_max ? C : 0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_pool", [&] {
    channel_pool_kernel<scalar_t>(x.data_ptr<scalar_t>(), B * C, P, avg.data_ptr<scalar_t>(),
                                  with_max ? mx.data_ptr<scalar_t>() : nullptr,
                                  with_max ? cnt.data_ptr<scalar_t>() : nullptr);
  });
  return {avg, mx, cnt};
}

std::tuple<Tensor, Tensor, Tensor> spatial_pool(const Tensor& x, const Tensor& cw) {
  check_full(x, "spatial_pool", "x");
  check_small(cw, x, x.size(1), "spatial_pool", "cw");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  TORCH_CHECK(C > 0, "attnlab_kernels::spatial_pool: x has no channels");
  Tensor mean = at::empty({B, P}, x.options());
  Tensor mx = at::empty({B, P}, x.options());
  Tensor cnt = at::empty({B, P}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spatial_pool", [&] {
    spatial_pool_kernel<scalar_t>(x.data_ptr<scalar_t>(), cw.data_ptr<scalar_t>(), B, C, P,
                                  mean.data_ptr<scalar_t>(), mx.data_ptr<scalar_t>(),
                                  cnt.data_ptr<scalar_t>());
  });
  return {mean, mx, cnt};
}

}  // namespace attnlab
