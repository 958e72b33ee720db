// Fused CPU kernels for the gate modules (SE, ECA, CBAM, Coordinate Attention).
//
// Each kernel reads and writes a full B×C×H×W activation at most once; the small per-channel
// (B×C) and per-position (B×P, P = H·W) tensors in between are computed in PyTorch by the
// module's own layers (the per-kernel ops), or inside the op (gate_forward / gate_backward,
// below). Inputs are NCHW-contiguous or channels-last (NHWC); full-size outputs
// take the input's layout. Small tensors are contiguous, B×C or B×P, except that the
// Coordinate Attention kernels take and give their per-row / per-column tensors as B×C×H and
// B×C×W for NCHW and B×H×C and B×W×C for NHWC (the caller transposes).
//
// Max pooling: the gradient is split evenly among the entries equal to the max, as PyTorch's
// amax does. The backward passes that read x count those entries (a count in the element type)
// and, for gate_backward, note the last one. The passes after them add the max pools' terms by
// that index where one entry is tied (so the input gradient's pass need not read x), and
// spatial_tie_terms / channel_tie_terms afterwards where more are.
//
// Registered as torch operators in the namespace attnlab_fast (see fused.py for the Python side
// and the fake implementations).

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "pool.h"
#include "rows.h"

namespace {

using at::Tensor;
constexpr int64_t kBlock = 256;  // positions or channels per task in the blocked loops

bool channels_last(const Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

void check_full(const Tensor& x, const char* what) {
  TORCH_CHECK(x.dim() == 4, "attnlab_fast: ", what, " must be 4-D, got ", x.dim(), "-D");
  TORCH_CHECK(x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "attnlab_fast: ", what, " must be contiguous or channels-last");
  TORCH_CHECK(x.device().is_cpu(), "attnlab_fast: ", what, " must be on the CPU");
}

void check_small(const Tensor& t, int64_t rows, int64_t cols, const char* what) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols && t.is_contiguous(),
              "attnlab_fast: ", what, " must be a contiguous ", rows, "x", cols, " tensor");
}

void check_small(const c10::optional<Tensor>& t, int64_t rows, int64_t cols, const char* what) {
  if (t.has_value() && t->defined()) check_small(*t, rows, cols, what);
}

void check_grad(const Tensor& g, const Tensor& x) {
  TORCH_CHECK(g.sizes() == x.sizes() && g.strides() == x.strides() && g.dtype() == x.dtype(),
              "attnlab_fast: grad must match x in shape, layout and dtype");
}

template <typename T>
const T* opt_ptr(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

// ---------------------------------------------------------------------------------------------
// Channel pool: avg[b,c] = mean_p x, max[b,c] = max_p x, count[b,c] = #{p : x == max}.
//
// Inner loops are branch-free (selects), so the compiler vectorises them; sums accumulate in
// double (gradients of the gate parameters are sums over every position).

// Running max with a count of the entries equal to it.
#define ATTNLAB_MAX_COUNT(v, m, k)                               \
  do {                                                           \
    const T v_ = (v);                                            \
    (k) = v_ > (m) ? T(1) : (k) + (v_ == (m) ? T(1) : T(0));     \
    (m) = v_ > (m) ? v_ : (m);                                   \
  } while (0)

// #{p : row[p] == m}, as a T.
template <typename T>
inline T count_equal(const T* __restrict__ row, int64_t P, T m) {
  T k = 0;
#pragma omp simd reduction(+ : k)
  for (int64_t p = 0; p < P; ++p) k += row[p] == m ? T(1) : T(0);
  return k;
}

// With norm (an eval-mode BatchNorm before the gate: na, nb per channel), x is the norm's
// input z and the pass pools the norm's output y = z·na + nb (norm_of), computed into a few
// rows (or positions) of scratch that stay in L1: y is never written to memory.
template <typename T>
inline T norm_of(T z, T a, T b) {
  return z * a + b;
}

template <typename T>
void channel_pool_kernel(const Tensor& x, Tensor& avg, Tensor& mx, Tensor& cnt, bool with_max,
                         bool with_count, const T* na = nullptr, const T* nb = nullptr) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* __restrict__ xp = x.data_ptr<T>();
  T* ap = avg.data_ptr<T>();
  T* mp = with_max ? mx.data_ptr<T>() : nullptr;
  T* kp = with_max && with_count ? cnt.data_ptr<T>() : nullptr;
  if (!channels_last(x)) {
    // n rows from src (P apart): those of rows first, first + 1, … of x.
    auto pool_rows = [&](const T* __restrict__ src, int64_t first, int64_t n) {
      int64_t j = 0;
      if constexpr (std::is_same<T, float>::value) {
        if (short_rows_vectorised && P >= 8 && P < 256) {  // late stages: 8 rows at a time
          j = mp ? short_rows_mean_max<true>(src, P, 0, n, ap + first, mp + first)
                 : short_rows_mean_max<false>(src, P, 0, n, ap + first, nullptr);
          for (int64_t i = 0; kp && i < j; ++i)
            kp[first + i] = count_equal(src + i * P, P, mp[first + i]);
        }
      }
      for (; j < n; ++j) {
        const int64_t bc = first + j;
        const T* __restrict__ row = src + j * P;
        double s = 0;
        T m = row[0];
        if (P < 64) {  // short rows (late stages): vector reductions cost more than they save
          T s4[4] = {0, 0, 0, 0}, m4[4] = {m, m, m, m};
          int64_t p = 0;
          for (; p + 4 <= P; p += 4)
            for (int q = 0; q < 4; ++q) {
              s4[q] += row[p + q];
              m4[q] = row[p + q] > m4[q] ? row[p + q] : m4[q];
            }
          for (; p < P; ++p) s4[0] += row[p], m4[0] = row[p] > m4[0] ? row[p] : m4[0];
          s = (double(s4[0]) + s4[1]) + (double(s4[2]) + s4[3]);
          m = std::max(std::max(m4[0], m4[1]), std::max(m4[2], m4[3]));
        } else if (!with_max) {
#pragma omp simd reduction(+ : s)
          for (int64_t p = 0; p < P; ++p) s += row[p];
        } else {  // one pass for both
#pragma omp simd reduction(+ : s) reduction(max : m)
          for (int64_t p = 0; p < P; ++p) {
            s += row[p];
            m = row[p] > m ? row[p] : m;
          }
        }
        ap[bc] = static_cast<T>(s / P);
        if (!with_max) continue;
        mp[bc] = m;
        if (kp) kp[bc] = count_equal(row, P, m);
      }
    };
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      if (!na) return pool_rows(xp + begin * P, begin, end - begin);
      const int64_t step = P < 256 ? 8 : 1;
      std::vector<T> normed(step * P);  // the norm's output of up to step rows
      T* __restrict__ o = normed.data();
      for (int64_t i0 = begin; i0 < end; i0 += step) {
        const int64_t i1 = std::min(end, i0 + step);
        for (int64_t i = i0; i < i1; ++i) {
          const T a = na[i % C], b = nb[i % C];
          const T* __restrict__ z = xp + i * P;
          T* __restrict__ y = o + (i - i0) * P;
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) y[p] = norm_of(z[p], a, b);
        }
        pool_rows(o, i0, i1 - i0);
      }
    });
    return;
  }
  const int64_t nblk = (C + kBlock - 1) / kBlock;
  at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> sv(kBlock);
    std::vector<T> mv(kBlock), kv(kBlock), yv(na ? kBlock : 0);
    double* __restrict__ s = sv.data();
    T* __restrict__ m = mv.data();
    T* __restrict__ k = kv.data();
    T* __restrict__ y = yv.data();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nblk, c0 = (i % nblk) * kBlock, n = std::min(kBlock, C - c0);
      const T* __restrict__ a = na ? na + c0 : nullptr;
      const T* __restrict__ sh = nb ? nb + c0 : nullptr;
      for (int64_t p = 0; p < P; ++p) {
        const T* __restrict__ r = xp + b * P * C + c0 + p * C;
        if (a) {  // the norm's output at this position, read back from L1 below
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) y[c] = norm_of(r[c], a[c], sh[c]);
          r = y;
        }
        if (p == 0)
          for (int64_t c = 0; c < n; ++c) s[c] = 0, m[c] = r[c], k[c] = 0;
        if (kp) {
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) {
            s[c] += r[c];
            ATTNLAB_MAX_COUNT(r[c], m[c], k[c]);
          }
        } else if (with_max) {
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) {
            s[c] += r[c];
            m[c] = r[c] > m[c] ? r[c] : m[c];
          }
        } else {
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) s[c] += r[c];
        }
      }
      for (int64_t c = 0; c < n; ++c) {
        ap[b * C + c0 + c] = static_cast<T>(s[c] / P);
        if (with_max) mp[b * C + c0 + c] = m[c];
        if (kp) kp[b * C + c0 + c] = k[c];
      }
    }
  });
}

// avg, max (with_max) and the count of entries reaching the max (with_count; else empty).
std::tuple<Tensor, Tensor, Tensor> channel_pool_impl(const Tensor& x, bool with_max,
                                                     bool with_count) {
  const auto B = x.size(0), C = x.size(1);
  const bool k = with_max && with_count;
  Tensor avg = at::empty({B, C}, x.options());
  Tensor mx = at::empty({with_max ? B : 0, with_max ? C : 0}, x.options());
  Tensor cnt = at::empty({k ? B : 0, k ? C : 0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_pool", [&] {
    channel_pool_kernel<scalar_t>(x, avg, mx, cnt, with_max, with_count);
  });
  return {avg, mx, cnt};
}

std::tuple<Tensor, Tensor, Tensor> channel_pool(const Tensor& x, bool with_max) {
  check_full(x, "x");
  return channel_pool_impl(x, with_max, true);
}

// ---------------------------------------------------------------------------------------------
// Spatial pool of y = x·cw over channels: mean[b,p], max[b,p], count[b,p].

// NCHW reductions across channels run on kLanes positions at a time, the partial results in
// registers, summing in T over chunks of kChunk channels (then into a second accumulator), so
// rounding grows with kChunk, not with C.
constexpr int64_t kLanes = 64, kChunk = 256;

// s[p] = Σ_c x[c,p]·w[c], m[p] = max_c x[c,p]·w[c] for the n ≤ kLanes positions at xb
// (rows P apart); N is n when known at compile time (kLanes), else 0. With na (and nb), x is
// a norm's input z and x = norm_of(z, na[c], nb[c]) its output.
template <typename T, int64_t N>
inline void weighted_sum_max(const T* __restrict__ xb, const T* __restrict__ w, int64_t C,
                             int64_t P, int64_t n, T* __restrict__ s, T* __restrict__ m,
                             const T* __restrict__ na, const T* __restrict__ nb) {
  const int64_t len = N ? N : n;
  T part[kLanes];
  for (int64_t p = 0; p < len; ++p) s[p] = 0, m[p] = -std::numeric_limits<T>::infinity();
  for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
    for (int64_t p = 0; p < len; ++p) part[p] = 0;
    for (int64_t c = c0, c1 = std::min(C, c0 + kChunk); c < c1; ++c) {
      const T wc = w[c];
      const T* __restrict__ r = xb + c * P;
      if (na) {
        const T a = na[c], b = nb[c];
#pragma omp simd
        for (int64_t p = 0; p < len; ++p) {
          const T v = norm_of(r[p], a, b) * wc;
          part[p] += v;
          m[p] = v > m[p] ? v : m[p];
        }
      } else {
#pragma omp simd
        for (int64_t p = 0; p < len; ++p) {
          const T v = r[p] * wc;
          part[p] += v;
          m[p] = v > m[p] ? v : m[p];
        }
      }
    }
#pragma omp simd
    for (int64_t p = 0; p < len; ++p) s[p] += part[p];
  }
}

// s[p] = Σ_c g[c,p]·x[c,p]·w[c] and, with mx, k[p] = #{c : x[c,p]·w[c] == mx[p]} and
// ix[p] = the last such c (as a T). With ob (a ReLU's output, rows P apart like g) the gradient
// is first masked, g·(o > 0), and written to zb: the ReLU's backward in the same pass.
// With na (and nb), x is a norm's input z and x = norm_of(z, na[c], nb[c]) its output (each
// channel's row normalised into yr, in L1, first).
template <typename T, int64_t N>
inline void weighted_dot_ties(const T* __restrict__ gb, const T* __restrict__ xb,
                              const T* __restrict__ w, int64_t C, int64_t P, int64_t n,
                              const T* __restrict__ mx, T* __restrict__ s, T* __restrict__ k,
                              T* __restrict__ ix, const T* __restrict__ ob, T* __restrict__ zb,
                              const T* __restrict__ na = nullptr,
                              const T* __restrict__ nb = nullptr) {
  const int64_t len = N ? N : n;
  T part[kLanes], yr[kLanes];
  for (int64_t p = 0; p < len; ++p) s[p] = 0, k[p] = 0, ix[p] = -1;
  for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
    for (int64_t p = 0; p < len; ++p) part[p] = 0;
    for (int64_t c = c0, c1 = std::min(C, c0 + kChunk); c < c1; ++c) {
      const T wc = w[c];
      const T* __restrict__ r = xb + c * P;
      if (na) {
        const T a = na[c], h = nb[c];
        for (int64_t p = 0; p < len; ++p) yr[p] = norm_of(r[p], a, h);
        r = yr;
      }
      const T* __restrict__ q = gb + c * P;
      if (ob) {
        const T* __restrict__ o = ob + c * P;
        T* __restrict__ z = zb + c * P;
        const T cf = T(c);
        if (mx) {
#pragma omp simd
          for (int64_t p = 0; p < len; ++p) {
            const T gv = q[p];
            const T qv = o[p] > T(0) ? gv : T(0);
            z[p] = qv;
            const T v = r[p] * wc;
            const bool tie = v == mx[p];
            part[p] += qv * v;
            k[p] += tie ? T(1) : T(0);
            ix[p] = tie ? cf : ix[p];
          }
        } else {
#pragma omp simd
          for (int64_t p = 0; p < len; ++p) {
            const T gv = q[p];
            const T qv = o[p] > T(0) ? gv : T(0);
            z[p] = qv;
            part[p] += qv * (r[p] * wc);
          }
        }
      } else if (mx) {
        const T cf = T(c);
#pragma omp simd
        for (int64_t p = 0; p < len; ++p) {
          const T v = r[p] * wc;
          const bool tie = v == mx[p];
          part[p] += q[p] * v;
          k[p] += tie ? T(1) : T(0);
          ix[p] = tie ? cf : ix[p];
        }
      } else {
#pragma omp simd
        for (int64_t p = 0; p < len; ++p) part[p] += q[p] * (r[p] * wc);
      }
    }
#pragma omp simd
    for (int64_t p = 0; p < len; ++p) s[p] += part[p];
  }
}

#if defined(__GNUC__) && !defined(__clang__)
// weighted_dot_ties for float, kLanes (64) positions and the spatial max, its state in
// registers (four 16-float vectors each: the sums, tie counts and last tied channels). With
// arrays the compiler loads and stores that state for every channel: at 8×256×40×40 this
// measured 0.12–0.15 ms faster per backward (in one process, alternating). Masked: the ReLU's
// mask, as there. (f16, load_vec, store_vec: rows.h.)
template <bool Masked, bool Norm = false>
void weighted_dot_ties64(const float* __restrict__ gb, const float* __restrict__ xb,
                         const float* __restrict__ w, int64_t C, int64_t P,
                         const float* __restrict__ mx, float* __restrict__ s, float* __restrict__ k,
                         float* __restrict__ ix, const float* __restrict__ ob,
                         float* __restrict__ zb, const float* __restrict__ na = nullptr,
                         const float* __restrict__ nb = nullptr) {
  static_assert(kLanes == 64, "four vectors of 16");
  constexpr int NV = 4;
  const f16 zero = {}, one = zero + 1.0f;
  f16 m[NV], sum[NV], cnt[NV], last[NV];
  for (int v = 0; v < NV; ++v) {
    m[v] = load_vec<f16>(mx + 16 * v);
    sum[v] = zero, cnt[v] = zero, last[v] = zero - 1.0f;
  }
  for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
    f16 part[NV] = {};
    for (int64_t c = c0, c1 = std::min(C, c0 + kChunk); c < c1; ++c) {
      const float wc = w[c];
      const f16 cf = zero + float(c);
      const float* __restrict__ r = xb + c * P;
      const float* __restrict__ q = gb + c * P;
      for (int v = 0; v < NV; ++v) {
        f16 x = load_vec<f16>(r + 16 * v);
        if constexpr (Norm) x = norm_of(x, zero + na[c], zero + nb[c]);
        const f16 y = x * wc;
        f16 gv = load_vec<f16>(q + 16 * v);
        if constexpr (Masked) {
          gv = load_vec<f16>(ob + c * P + 16 * v) > zero ? gv : zero;
          store_vec(zb + c * P + 16 * v, gv);
        }
        part[v] += gv * y;
        const auto tie = y == m[v];
        cnt[v] = tie ? cnt[v] + one : cnt[v];
        last[v] = tie ? cf : last[v];
      }
    }
    for (int v = 0; v < NV; ++v) sum[v] += part[v];
  }
  for (int v = 0; v < NV; ++v) {
    store_vec(s + 16 * v, sum[v]);
    store_vec(k + 16 * v, cnt[v]);
    store_vec(ix + 16 * v, last[v]);
  }
}

// weighted_sum_max for float and kLanes positions, its state in registers (as above; 0.04 ms
// faster per CBAM forward at 8×256×40×40); Norm: with na, nb as there.
template <bool Norm>
inline void weighted_sum_max64(const float* __restrict__ xb, const float* __restrict__ w, int64_t C,
                               int64_t P, float* __restrict__ s, float* __restrict__ m,
                               const float* __restrict__ na, const float* __restrict__ nb) {
  constexpr int NV = 4;
  const f16 zero = {};
  f16 sum[NV], top[NV];
  for (int v = 0; v < NV; ++v) sum[v] = zero, top[v] = zero - __builtin_inff();
  for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
    f16 part[NV] = {};
    for (int64_t c = c0, c1 = std::min(C, c0 + kChunk); c < c1; ++c) {
      const float wc = w[c];
      const float* __restrict__ r = xb + c * P;
      for (int v = 0; v < NV; ++v) {
        f16 x = load_vec<f16>(r + 16 * v);
        if constexpr (Norm) x = norm_of(x, zero + na[c], zero + nb[c]);
        const f16 y = x * wc;
        part[v] += y;
        top[v] = y > top[v] ? y : top[v];
      }
    }
    for (int v = 0; v < NV; ++v) sum[v] += part[v];
  }
  for (int v = 0; v < NV; ++v) {
    store_vec(s + 16 * v, sum[v]);
    store_vec(m + 16 * v, top[v]);
  }
}

typedef double d8 __attribute__((vector_size(64)));

// The channel gradient's sums for kRows rows of one sample at once (channels c, c+1, … of x at
// r and of g at q, rows P apart), float, with the spatial gate's terms found by index (sparse):
// out[j] = Σ_p (g·sw + sa + (one == c+j ? se : 0))·x and, with cm (the rows' channel maxima),
// k[j] = #{p : x == cm[j]} and ix[j] = the last such p. The per-position vectors (sw, sa, se,
// one) are loaded once for the kRows rows, the sums, counts and positions stay in registers.
// One row at a time (gate_grad_channel_kernel's loop, GCC's vectorisation) took 56 µs per
// sample of 256×40×40 warm, twice the spatial gradient's pass over the same data; this, 32.
// Sums in float over chunks of kChunk positions (16 entries per lane), the chunks in double.
// Norm (x a training norm's input z, see TrainNorm; na, nb, mu the rows' channels'): out[j] =
// Σ_p dy and out1[j] = Σ_p dy·(z − mu), dy as above; the ties of norm_of(z) == cm.
constexpr int kRows = 4;
template <bool Ties, bool Norm = false>
void channel_grad_rows(const float* __restrict__ q, const float* __restrict__ r, int64_t P,
                       const float* __restrict__ s1, const float* __restrict__ s2,
                       const float* __restrict__ s3, const float* __restrict__ s5, float cf,
                       const float* __restrict__ cm, double* __restrict__ out,
                       float* __restrict__ k, float* __restrict__ ix,
                       const float* __restrict__ na = nullptr,
                       const float* __restrict__ nb = nullptr,
                       const float* __restrict__ mu = nullptr,
                       double* __restrict__ out1 = nullptr) {
  const int64_t nv = P / 16;
  const f16 zero = {}, one = zero + 1.0f, step = zero + 16.0f;
  f16 cnt[kRows], last[kRows], cmv[kRows], cfv[kRows], av[kRows], hv[kRows], mv[kRows];
  d8 acc[kRows], acc1[kRows];
  for (int j = 0; j < kRows; ++j) {
    cnt[j] = zero, last[j] = zero - 1.0f, cfv[j] = zero + (cf + float(j));
    cmv[j] = zero + (Ties ? cm[j] : 0.0f);
    av[j] = zero + (Norm ? na[j] : 0.0f), hv[j] = zero + (Norm ? nb[j] : 0.0f);
    mv[j] = zero + (Norm ? mu[j] : 0.0f);
    acc[j] = d8{}, acc1[j] = d8{};
  }
  f16 pos;
  for (int l = 0; l < 16; ++l) pos[l] = float(l);
  constexpr int64_t chunk = kChunk / 16;
  auto widen = [](const f16& v) {  // the sum of v's two halves, in double
    f8 lo, hi;
    std::memcpy(&lo, &v, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
    return __builtin_convertvector(lo, d8) + __builtin_convertvector(hi, d8);
  };
  for (int64_t v0 = 0; v0 < nv; v0 += chunk) {
    f16 part[kRows] = {}, part1[kRows] = {};
    for (int64_t v = v0, v1 = std::min(nv, v0 + chunk); v < v1; ++v) {
      const f16 a = load_vec<f16>(s1 + 16 * v), b = load_vec<f16>(s2 + 16 * v);
      const f16 e = load_vec<f16>(s3 + 16 * v), o = load_vec<f16>(s5 + 16 * v);
      for (int j = 0; j < kRows; ++j) {
        const f16 xv = load_vec<f16>(r + j * P + 16 * v);
        f16 t = load_vec<f16>(q + j * P + 16 * v) * a + b;
        t = o == cfv[j] ? t + e : t;
        if constexpr (Norm) {
          part[j] += t;
          part1[j] += t * (xv - mv[j]);
        } else {
          part[j] += t * xv;
        }
        if constexpr (Ties) {
          const auto tie = (Norm ? norm_of(xv, av[j], hv[j]) : xv) == cmv[j];
          cnt[j] = tie ? cnt[j] + one : cnt[j];
          last[j] = tie ? pos : last[j];
        }
      }
      pos += step;
    }
    for (int j = 0; j < kRows; ++j) {
      acc[j] += widen(part[j]);
      if constexpr (Norm) acc1[j] += widen(part1[j]);
    }
  }
  for (int j = 0; j < kRows; ++j) {
    double sum = 0, sum1 = 0;
    for (int l = 0; l < 8; ++l) sum += acc[j][l], sum1 += acc1[j][l];
    float kk = 0, lp = -1;
    for (int l = 0; l < 16; ++l) {
      kk += cnt[j][l];
      lp = std::max(lp, last[j][l]);
    }
    const float* __restrict__ qj = q + j * P;
    const float* __restrict__ rj = r + j * P;
    const float cj = cf + float(j);
    float tail = 0, tail1 = 0;
    for (int64_t p = 16 * nv; p < P; ++p) {
      const float t = qj[p] * s1[p] + s2[p] + (s5[p] == cj ? s3[p] : 0.0f);
      if constexpr (Norm) {
        tail += t, tail1 += t * (rj[p] - mu[j]);
      } else {
        tail += t * rj[p];
      }
      if (Ties && (Norm ? norm_of(rj[p], na[j], nb[j]) : rj[p]) == cm[j]) kk += 1.0f, lp = float(p);
    }
    out[j] = sum + tail;
    if constexpr (Norm) out1[j] = sum1 + tail1;
    if (Ties) k[j] = kk, ix[j] = lp;
  }
}
#endif

// One block of n ≤ kLanes positions: the register kernels above where they apply.
template <typename T>
inline void sum_max_block(const T* xb, const T* w, int64_t C, int64_t P, int64_t n, T* s, T* m,
                          const T* na, const T* nb) {
  if (n == kLanes)
    weighted_sum_max<T, kLanes>(xb, w, C, P, n, s, m, na, nb);
  else
    weighted_sum_max<T, 0>(xb, w, C, P, n, s, m, na, nb);
}

template <typename T>
inline void dot_ties_block(const T* gb, const T* xb, const T* w, int64_t C, int64_t P, int64_t n,
                           const T* mx, T* s, T* k, T* ix, const T* ob, T* zb,
                           const T* na = nullptr, const T* nb = nullptr) {
  if (n == kLanes)
    weighted_dot_ties<T, kLanes>(gb, xb, w, C, P, n, mx, s, k, ix, ob, zb, na, nb);
  else
    weighted_dot_ties<T, 0>(gb, xb, w, C, P, n, mx, s, k, ix, ob, zb, na, nb);
}

#if defined(__GNUC__) && !defined(__clang__)
inline void sum_max_block(const float* xb, const float* w, int64_t C, int64_t P, int64_t n,
                          float* s, float* m, const float* na, const float* nb) {
  if (n == kLanes && na)
    weighted_sum_max64<true>(xb, w, C, P, s, m, na, nb);
  else if (n == kLanes)
    weighted_sum_max64<false>(xb, w, C, P, s, m, na, nb);
  else
    weighted_sum_max<float, 0>(xb, w, C, P, n, s, m, na, nb);
}

inline void dot_ties_block(const float* gb, const float* xb, const float* w, int64_t C, int64_t P,
                           int64_t n, const float* mx, float* s, float* k, float* ix,
                           const float* ob, float* zb, const float* na = nullptr,
                           const float* nb = nullptr) {
  if (na) {
    if (n == kLanes && mx && ob)
      weighted_dot_ties64<true, true>(gb, xb, w, C, P, mx, s, k, ix, ob, zb, na, nb);
    else if (n == kLanes && mx)
      weighted_dot_ties64<false, true>(gb, xb, w, C, P, mx, s, k, ix, ob, zb, na, nb);
    else
      weighted_dot_ties<float, 0>(gb, xb, w, C, P, n, mx, s, k, ix, ob, zb, na, nb);
    return;
  }
  if (n == kLanes && mx && ob)
    weighted_dot_ties64<true>(gb, xb, w, C, P, mx, s, k, ix, ob, zb);
  else if (n == kLanes && mx)
    weighted_dot_ties64<false>(gb, xb, w, C, P, mx, s, k, ix, ob, zb);
  else if (n == kLanes)
    weighted_dot_ties<float, kLanes>(gb, xb, w, C, P, n, mx, s, k, ix, ob, zb);
  else
    weighted_dot_ties<float, 0>(gb, xb, w, C, P, n, mx, s, k, ix, ob, zb);
}
#endif

// kRows rows of the channel gradient's sparse spatial case (see channel_grad_rows) from q, r at
// once where a register kernel applies (float on GCC): dp, kp, ip as the rows' outputs; cm null
// without the channel max. Returns whether it did them.
template <typename T>
inline bool channel_grad_block(const T*, const T*, int64_t, const T*, const T*, const T*, const T*,
                               T, const T*, T*, T*, T*, const T* = nullptr, const T* = nullptr,
                               const T* = nullptr, double* = nullptr, double* = nullptr) {
  return false;
}

#if defined(__GNUC__) && !defined(__clang__)
inline bool channel_grad_block(const float* q, const float* r, int64_t P, const float* s1,
                               const float* s2, const float* s3, const float* s5, float cf,
                               const float* cm, float* dp, float* kp, float* ip,
                               const float* na = nullptr, const float* nb = nullptr,
                               const float* mu = nullptr, double* S0 = nullptr,
                               double* S1 = nullptr) {
  double o[kRows];
  float k[kRows], ix[kRows];
  if (na) {  // the training norm's sums (see channel_grad_rows)
    if (cm)
      channel_grad_rows<true, true>(q, r, P, s1, s2, s3, s5, cf, cm, S0, k, ix, na, nb, mu, S1);
    else
      channel_grad_rows<false, true>(q, r, P, s1, s2, s3, s5, cf, cm, S0, k, ix, na, nb, mu, S1);
  } else if (cm) {
    channel_grad_rows<true>(q, r, P, s1, s2, s3, s5, cf, cm, o, k, ix);
  } else {
    channel_grad_rows<false>(q, r, P, s1, s2, s3, s5, cf, cm, o, k, ix);
  }
  for (int j = 0; j < kRows; ++j) {
    if (!na) dp[j] = static_cast<float>(o[j]);
    if (cm) kp[j] = k[j];
    if (cm && ip) ip[j] = ix[j];
  }
  return true;
}
#endif

// With na (and nb), x is a norm's input z and the pools are of norm_of(z, na[c], nb[c])·cw.
template <typename T>
void spatial_pool_kernel(const Tensor& x, const T* cw, Tensor& mean, Tensor& mx, Tensor& cnt,
                         bool with_count, const T* na = nullptr, const T* nb = nullptr) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* __restrict__ xp = x.data_ptr<T>();
  T* sp = mean.data_ptr<T>();
  T* mp = mx.data_ptr<T>();
  T* kp = with_count ? cnt.data_ptr<T>() : nullptr;
  if (!channels_last(x) && !kp) {
    const int64_t nblk = (P + kLanes - 1) / kLanes;
    at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
      T s[kLanes], m[kLanes];
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / nblk, p0 = (i % nblk) * kLanes, n = std::min(kLanes, P - p0);
        const T* xb = xp + b * C * P + p0;
        sum_max_block(xb, cw + b * C, C, P, n, s, m, na, nb);
        for (int64_t p = 0; p < n; ++p) {
          sp[b * P + p0 + p] = s[p] / T(C);
          mp[b * P + p0 + p] = m[p];
        }
      }
    });
    return;
  }
  if (!channels_last(x)) {
    const int64_t nblk = (P + kBlock - 1) / kBlock;
    at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> sv(kBlock);
      std::vector<T> mv(kBlock), kv(kBlock);
      double* __restrict__ s = sv.data();
      T* __restrict__ m = mv.data();
      T* __restrict__ k = kv.data();
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / nblk, p0 = (i % nblk) * kBlock, n = std::min(kBlock, P - p0);
        const T w0 = cw[b * C];
        const T a0 = na ? na[0] : T(1), h0 = na ? nb[0] : T(0);
        const T* __restrict__ r0 = xp + b * C * P + p0;
#pragma omp simd
        for (int64_t p = 0; p < n; ++p) {
          const T v = (na ? norm_of(r0[p], a0, h0) : r0[p]) * w0;
          s[p] = v, m[p] = v, k[p] = 1;
        }
        for (int64_t c = 1; c < C; ++c) {
          const T w = cw[b * C + c];
          const T a = na ? na[c] : T(1), h = na ? nb[c] : T(0);
          const T* __restrict__ r = xp + (b * C + c) * P + p0;
#pragma omp simd
          for (int64_t p = 0; p < n; ++p) {
            const T v = (na ? norm_of(r[p], a, h) : r[p]) * w;
            s[p] += v;
            ATTNLAB_MAX_COUNT(v, m[p], k[p]);
          }
        }
        for (int64_t p = 0; p < n; ++p) {
          sp[b * P + p0 + p] = static_cast<T>(s[p] / C);
          mp[b * P + p0 + p] = m[p];
          kp[b * P + p0 + p] = k[p];
        }
      }
    });
    return;
  }
  at::parallel_for(0, B * P, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> yv(na ? C : 0);
    for (int64_t bp = begin; bp < end; ++bp) {
      const T* __restrict__ r = xp + bp * C;
      const T* __restrict__ w = cw + (bp / P) * C;
      if (na) {  // the norm's output at this position, read back from L1 below
        T* __restrict__ y = yv.data();
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) y[c] = norm_of(r[c], na[c], nb[c]);
        r = y;
      }
      double s = 0;
      T m = r[0] * w[0], k = 0;
#pragma omp simd reduction(+ : s) reduction(max : m)
      for (int64_t c = 0; c < C; ++c) {
        const T v = r[c] * w[c];
        s += v;
        m = v > m ? v : m;
      }
      sp[bp] = static_cast<T>(s / C);
      mp[bp] = m;
      if (!kp) continue;
#pragma omp simd reduction(+ : k)
      for (int64_t c = 0; c < C; ++c) k += r[c] * w[c] == m ? T(1) : T(0);
      kp[bp] = k;
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> spatial_pool_impl(const Tensor& x, const Tensor& cw,
                                                     bool with_count, const Tensor& na = Tensor(),
                                                     const Tensor& nb = Tensor()) {
  const auto B = x.size(0), P = x.size(2) * x.size(3);
  Tensor mean = at::empty({B, P}, x.options());
  Tensor mx = at::empty({B, P}, x.options());
  Tensor cnt = at::empty({with_count ? B : 0, with_count ? P : 0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spatial_pool", [&] {
    spatial_pool_kernel<scalar_t>(x, cw.data_ptr<scalar_t>(), mean, mx, cnt, with_count,
                                  na.defined() ? na.data_ptr<scalar_t>() : nullptr,
                                  nb.defined() ? nb.data_ptr<scalar_t>() : nullptr);
  });
  return {mean, mx, cnt};
}

std::tuple<Tensor, Tensor, Tensor> spatial_pool(const Tensor& x, const Tensor& cw) {
  check_full(x, "x");
  check_small(cw, x.size(0), x.size(1), "cw");
  return spatial_pool_impl(x, cw, true);
}

// ---------------------------------------------------------------------------------------------
// Gate: out = (x·cw[b,c])·sw[b,p], sw optional; with a residual r (x's shape and layout), the
// residual block's tail in the same pass: out = relu((x·cw)·sw + r).

// relu as PyTorch's: NaN stays NaN.
template <typename T>
inline T relu_of(T v) {
  return v < T(0) ? T(0) : v;
}

// With na (and nb), x is a norm's input z and the gate multiplies norm_of(z, na[c], nb[c]).
template <typename T>
void gate_apply_kernel(const Tensor& x, const T* cw, const T* sw, const T* res, Tensor& out,
                       const T* na = nullptr, const T* nb = nullptr) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* __restrict__ xp = x.data_ptr<T>();
  T* __restrict__ op = out.data_ptr<T>();
  if (!channels_last(x)) {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const T w = cw[bc];
        const T a = na ? na[bc % C] : T(1), h = na ? nb[bc % C] : T(0);
        const T* __restrict__ r = xp + bc * P;
        T* __restrict__ o = op + bc * P;
        const T* __restrict__ s = sw ? sw + (bc / C) * P : nullptr;
        const T* __restrict__ q = res ? res + bc * P : nullptr;
        // (x·w)·s (+ q, relu), x the norm's output where there is one
        auto row = [&](auto in) {
          if (q && s) {
#pragma omp simd
            for (int64_t p = 0; p < P; ++p) o[p] = relu_of((in(r[p]) * w) * s[p] + q[p]);
          } else if (q) {
#pragma omp simd
            for (int64_t p = 0; p < P; ++p) o[p] = relu_of(in(r[p]) * w + q[p]);
          } else if (s) {
#pragma omp simd
            for (int64_t p = 0; p < P; ++p) o[p] = (in(r[p]) * w) * s[p];
          } else {
#pragma omp simd
            for (int64_t p = 0; p < P; ++p) o[p] = in(r[p]) * w;
          }
        };
        if (na)
          row([a, h](T v) { return norm_of(v, a, h); });
        else
          row([](T v) { return v; });
      }
    });
    return;
  }
  at::parallel_for(0, B * P, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const T s = sw ? sw[bp] : T(1);
      const T* __restrict__ r = xp + bp * C;
      const T* __restrict__ w = cw + (bp / P) * C;
      T* __restrict__ o = op + bp * C;
      const T* __restrict__ q = res ? res + bp * C : nullptr;
      auto row = [&](auto in) {
        if (q && sw) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] = relu_of((in(r[c], c) * w[c]) * s + q[c]);
        } else if (q) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] = relu_of(in(r[c], c) * w[c] + q[c]);
        } else if (sw) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] = (in(r[c], c) * w[c]) * s;
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] = in(r[c], c) * w[c];
        }
      };
      if (na)
        row([na, nb](T v, int64_t c) { return norm_of(v, na[c], nb[c]); });
      else
        row([](T v, int64_t) { return v; });
    }
  });
}

// Whether a and b (dense) hold their elements in the same order, so that one flat loop pairs them:
// the same sizes and the same strides wherever a size is above 1.
bool same_layout(const Tensor& a, const Tensor& b) {
  if (a.sizes() != b.sizes() || !a.is_non_overlapping_and_dense() ||
      !b.is_non_overlapping_and_dense())
    return false;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

void check_residual(const c10::optional<Tensor>& res, const Tensor& x) {
  if (!res.has_value() || !res->defined()) return;
  TORCH_CHECK(same_layout(*res, x) && res->dtype() == x.dtype() && res->device() == x.device(),
              "attnlab_fast: the residual must match x in shape, layout, dtype and device");
}

// With na and nb (per-channel vectors), x is a norm's input z (see gate_apply_kernel).
Tensor gate_apply_impl(const Tensor& x, const Tensor& cw, const c10::optional<Tensor>& sw,
                       const c10::optional<Tensor>& res, const Tensor& na = Tensor(),
                       const Tensor& nb = Tensor()) {
  check_full(x, "x");
  const auto B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  check_small(cw, B, C, "cw");
  check_small(sw, B, P, "sw");
  check_residual(res, x);
  Tensor out = pooled_empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_apply", [&] {
    gate_apply_kernel<scalar_t>(x, cw.data_ptr<scalar_t>(), opt_ptr<scalar_t>(sw),
                                opt_ptr<scalar_t>(res), out,
                                na.defined() ? na.data_ptr<scalar_t>() : nullptr,
                                nb.defined() ? nb.data_ptr<scalar_t>() : nullptr);
  });
  return out;
}

Tensor gate_apply(const Tensor& x, const Tensor& cw, const c10::optional<Tensor>& sw) {
  return gate_apply_impl(x, cw, sw, c10::nullopt);
}

// The tensor a first backward pass writes the masked gradient into (after checking out).
Tensor masked_like(const Tensor& grad, const Tensor& out) {
  TORCH_CHECK(same_layout(grad, out) && grad.dtype() == out.dtype(),
              "attnlab_fast: grad must match the output in shape, layout and dtype");
  return pooled_empty_like(grad);
}

// ---------------------------------------------------------------------------------------------
// Backward, pass 1: dsw[b,p] = Σ_c g·(x·cw).

// With smx: also the count of channels reaching the spatial max, scnt[b,p] = #{c : x·cw == smx}
// (the backward needs it, the forward does not), and in ip the last such channel (as a T).
// With op (a ReLU's output): g is masked first and the masked gradient written to zp.
template <typename T>
void gate_grad_spatial_kernel(const Tensor& g, const Tensor& x, const T* cw, Tensor& dsw,
                              const T* smx, T* kp, T* ip, const T* op, T* zp, const T* na = nullptr,
                              const T* nb = nullptr) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* __restrict__ gp = g.data_ptr<T>();
  const T* __restrict__ xp = x.data_ptr<T>();
  T* dp = dsw.data_ptr<T>();
  if (!channels_last(x)) {
    const int64_t nblk = (P + kLanes - 1) / kLanes;
    at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
      T s[kLanes], k[kLanes], ix[kLanes];
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / nblk, p0 = (i % nblk) * kLanes, n = std::min(kLanes, P - p0);
        const int64_t off = b * C * P + p0;
        const T* mx = smx ? smx + b * P + p0 : nullptr;
        const T* o = op ? op + off : nullptr;
        T* z = zp ? zp + off : nullptr;
        dot_ties_block(gp + off, xp + off, cw + b * C, C, P, n, mx, s, k, ix, o, z, na, nb);
        for (int64_t p = 0; p < n; ++p) {
          dp[b * P + p0 + p] = s[p];
          if (kp) kp[b * P + p0 + p] = k[p];
          if (ip) ip[b * P + p0 + p] = ix[p];
        }
      }
    });
    return;
  }
  at::parallel_for(0, B * P, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> yv(na ? C : 0);
    for (int64_t bp = begin; bp < end; ++bp) {
      const T* __restrict__ r = xp + bp * C;
      const T* __restrict__ q = gp + bp * C;
      const T* __restrict__ w = cw + (bp / P) * C;
      if (na) {  // the norm's output at this position (as spatial_pool_kernel computes it)
        T* __restrict__ y = yv.data();
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) y[c] = norm_of(r[c], na[c], nb[c]);
        r = y;
      }
      double s = 0;
      if (op) {
        const T* __restrict__ o = op + bp * C;
        T* __restrict__ z = zp + bp * C;
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < C; ++c) {
          const T gv = q[c];
          const T qv = o[c] > T(0) ? gv : T(0);
          z[c] = qv;
          s += qv * (r[c] * w[c]);
        }
      } else {
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < C; ++c) s += q[c] * (r[c] * w[c]);
      }
      dp[bp] = static_cast<T>(s);
      if (!kp) continue;
      const T m = smx[bp];
      T k = 0;
      int64_t last = -1;  // an integer max, as in gate_grad_channel_kernel
#pragma omp simd reduction(+ : k) reduction(max : last)
      for (int64_t c = 0; c < C; ++c) {
        const bool tie = r[c] * w[c] == m;
        k += tie ? T(1) : T(0);
        last = std::max(last, tie ? c : int64_t(-1));
      }
      kp[bp] = k;
      if (ip) ip[bp] = T(last);
    }
  });
}

// dsw and, given the spatial max smx, the tie count (else an empty tensor); with idx, the last
// tied channel goes there (B×P, as x's dtype).
// With out (a ReLU's output) the gradient is masked in the same pass and the masked gradient
// returned in *gz (out's shape and layout).
std::tuple<Tensor, Tensor> grad_spatial(const Tensor& g, const Tensor& x, const Tensor& cw,
                                        const Tensor& smx, Tensor* idx = nullptr,
                                        const Tensor* out = nullptr, Tensor* gz = nullptr,
                                        const Tensor& na = Tensor(), const Tensor& nb = Tensor()) {
  const int64_t B = x.size(0), P = x.size(2) * x.size(3);
  const bool k = smx.defined();
  Tensor dsw = at::empty({B, P}, x.options());
  Tensor cnt = at::empty({k ? B : 0, k ? P : 0}, x.options());
  if (idx) *idx = at::empty({k ? B : 0, k ? P : 0}, x.options());
  if (out) *gz = masked_like(g, *out);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grad_spatial", [&] {
    gate_grad_spatial_kernel<scalar_t>(
        g, x, cw.data_ptr<scalar_t>(), dsw, k ? smx.data_ptr<scalar_t>() : nullptr,
        k ? cnt.data_ptr<scalar_t>() : nullptr, k && idx ? idx->data_ptr<scalar_t>() : nullptr,
        out ? out->data_ptr<scalar_t>() : nullptr, out ? gz->data_ptr<scalar_t>() : nullptr,
        na.defined() ? na.data_ptr<scalar_t>() : nullptr,
        nb.defined() ? nb.data_ptr<scalar_t>() : nullptr);
  });
  return {dsw, cnt};
}

Tensor gate_grad_spatial(const Tensor& g, const Tensor& x, const Tensor& cw) {
  check_full(x, "x");
  check_grad(g, x);
  check_small(cw, x.size(0), x.size(1), "cw");
  return std::get<0>(grad_spatial(g, x, cw, Tensor()));
}

// ---------------------------------------------------------------------------------------------
// The gradient reaching y = x·cw when the spatial stage is present:
//   dy = g·sw + sa[b,p] + (y == smx[b,p] ? se[b,p] : 0)
// with sa = dmean / C and se = dmax / count prepared by the caller; without it dy = g.
//
// Backward, pass 2: dcw[b,c] = Σ_p dy·x.
// Backward, pass 3: dx = dy·cw + ca[b,c] + (x == cmx[b,c] ? ce[b,c] : 0)
// with ca = davg / P and ce = dmax / count of the channel pool (zeros where a pool is absent).

// sparse: the passes find the spatial max's tied entry by index instead of testing x·cw == smx:
// one[b,p] is the channel reaching the max where exactly one does, else -1 (as a T); the term
// of a position that more channels reach is added afterwards (spatial_tie_terms, multi).
struct Spatial {
  bool on;
  const void* sw;
  const void* sa;
  const void* se;
  const void* smx;
  bool sparse = false;
  const void* one = nullptr;
};

// sp's terms as T: sw, sa, se, smx, one.
template <typename T>
std::tuple<const T*, const T*, const T*, const T*, const T*> spatial_ptrs(const Spatial& sp) {
  return {static_cast<const T*>(sp.sw), static_cast<const T*>(sp.sa), static_cast<const T*>(sp.se),
          static_cast<const T*>(sp.smx), static_cast<const T*>(sp.one)};
}

// With cmx: kp gets the count of positions reaching the channel max and ip (when given) the last
// such position (as a T).
// With op (a ReLU's output; without the spatial stage only): g is masked first and the masked
// gradient written to zp.
// With na (and nb, mu; sparse): x is a training norm's input z, y = norm_of(z, na, nb) its
// output (see TrainNorm), and the pass gives S0 = Σ_p dy and S1 = Σ_p dy·(z − mu) per row
// instead of dcw (the channel max's ties: y == cmx).
template <typename T>
void gate_grad_channel_kernel(const Tensor& g, const Tensor& x, const T* cw, const Spatial& sp,
                              Tensor& dcw, const T* cmx, T* kp, T* ip, const T* op, T* zp,
                              const T* na = nullptr, const T* nb = nullptr, const T* mu = nullptr,
                              double* S0 = nullptr, double* S1 = nullptr) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* __restrict__ gp = g.data_ptr<T>();
  const T* __restrict__ xp = x.data_ptr<T>();
  const auto [sw, sa, se, smx, one] = spatial_ptrs<T>(sp);
  T* dp = na ? nullptr : dcw.data_ptr<T>();
  TORCH_CHECK(!na || !sp.on || sp.sparse, "attnlab_fast: the training norm needs the sparse ties");
  if (!channels_last(x)) {
    // Sums in T over chunks of kChunk positions (vector accumulators), the chunks in double;
    // the tie count (with kp) in the same loop.
    auto row = [&](auto spatial, auto ties, auto sparse, auto masked, auto norm, int64_t bc) {
      const int64_t b = bc / C;
      const T w = cw[bc], cm = ties ? cmx[bc] : T(0);
      const T a = norm ? na[bc - b * C] : T(1), h = norm ? nb[bc - b * C] : T(0);
      const T m0 = norm ? mu[bc - b * C] : T(0);
      const T* __restrict__ r = xp + bc * P;
      const T* __restrict__ q = gp + bc * P;
      const T* __restrict__ o = masked ? op + bc * P : nullptr;
      T* __restrict__ z = masked ? zp + bc * P : nullptr;
      const T* __restrict__ s1 = spatial ? sw + b * P : nullptr;
      const T* __restrict__ s2 = spatial ? sa + b * P : nullptr;
      const T* __restrict__ s3 = spatial ? se + b * P : nullptr;
      const T* __restrict__ s4 = spatial ? smx + b * P : nullptr;
      const T* __restrict__ s5 = spatial && sparse ? one + b * P : nullptr;
      const T cf = T(bc - b * C);
      double s = 0, s1n = 0;
      T k = 0;
      // The last tied position as an integer max: with T(p) GCC's loop ran 3× slower (this
      // loop alone, one thread, 256 rows of 1600: 348 against 107 µs).
      int64_t last = -1;
      for (int64_t p0 = 0; p0 < P; p0 += kChunk) {
        const int64_t p1 = std::min(P, p0 + kChunk);
        T part = 0, part1 = 0;
#pragma omp simd reduction(+ : part, part1, k) reduction(max : last)
        for (int64_t p = p0; p < p1; ++p) {
          T dy;
          if constexpr (spatial && sparse)
            dy = q[p] * s1[p] + s2[p] + (s5[p] == cf ? s3[p] : T(0));
          else if constexpr (spatial)
            dy = q[p] * s1[p] + s2[p] + (r[p] * w == s4[p] ? s3[p] : T(0));
          else if constexpr (masked) {
            const T gv = q[p];
            dy = o[p] > T(0) ? gv : T(0);
            z[p] = dy;
          } else
            dy = q[p];
          if constexpr (norm) {
            part += dy;
            part1 += dy * (r[p] - m0);
          } else
            part += dy * r[p];
          if constexpr (ties) {
            const bool tie = (norm ? norm_of(r[p], a, h) : r[p]) == cm;
            k += tie ? T(1) : T(0);
            last = std::max(last, tie ? p : int64_t(-1));
          }
        }
        s += part, s1n += part1;
      }
      if constexpr (norm)
        S0[bc] = s, S1[bc] = s1n;
      else
        dp[bc] = static_cast<T>(s);
      if constexpr (ties) {
        kp[bc] = k;
        if (ip) ip[bc] = T(last);
      }
    };
    using on = std::true_type;
    using off = std::false_type;
    auto one_row = [&](auto norm, int64_t bc) {
      if (sp.on && sp.sparse && kp)
        row(on{}, on{}, on{}, off{}, norm, bc);
      else if (sp.on && sp.sparse)
        row(on{}, off{}, on{}, off{}, norm, bc);
      else if (sp.on && kp)
        row(on{}, on{}, off{}, off{}, norm, bc);
      else if (sp.on)
        row(on{}, off{}, off{}, off{}, norm, bc);
      else if (op && kp)
        row(off{}, on{}, off{}, on{}, norm, bc);
      else if (op)
        row(off{}, off{}, off{}, on{}, norm, bc);
      else if (kp)
        row(off{}, on{}, off{}, off{}, norm, bc);
      else
        row(off{}, off{}, off{}, off{}, norm, bc);
    };
    if (na) {
      at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t bc = begin; bc < end; ++bc) {
          const int64_t b = bc / C, c = bc - b * C;
          if (sp.on && bc + kRows <= end && c + kRows <= C &&
              channel_grad_block(
                  gp + bc * P, xp + bc * P, P, sw + b * P, sa + b * P, se + b * P, one + b * P,
                  T(c), kp ? cmx + bc : nullptr, static_cast<T*>(nullptr), kp ? kp + bc : nullptr,
                  kp && ip ? ip + bc : nullptr, na + c, nb + c, mu + c, S0 + bc, S1 + bc)) {
            bc += kRows - 1;
            continue;
          }
          one_row(on{}, bc);
        }
      });
      return;
    }
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      int64_t first = begin;  // short rows without the spatial stage or ties: 8 at a time
      if constexpr (std::is_same<T, float>::value)
        if (short_rows_vectorised && !sp.on && !kp && P >= 8 && P < 256)
          first = op ? short_rows_dot<true>(gp, xp, op, zp, P, begin, end, dp)
                     : short_rows_dot<false>(gp, xp, nullptr, nullptr, P, begin, end, dp);
      for (int64_t bc = first; bc < end; ++bc) {
        const int64_t b = bc / C;
        if (sp.on && sp.sparse && bc + kRows <= end && bc - b * C + kRows <= C &&
            channel_grad_block(gp + bc * P, xp + bc * P, P, sw + b * P, sa + b * P, se + b * P,
                               one + b * P, T(bc - b * C), kp ? cmx + bc : nullptr, dp + bc,
                               kp ? kp + bc : nullptr, kp && ip ? ip + bc : nullptr)) {
          bc += kRows - 1;
          continue;
        }
        one_row(off{}, bc);
      }
    });
    return;
  }
  const int64_t nblk = (C + kBlock - 1) / kBlock;
  at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> av(kBlock), a1v(na ? kBlock : 0);
    std::vector<T> kv(kBlock), iv(kBlock), dyv(na ? kBlock : 0), yv(na ? kBlock : 0);
    double* __restrict__ a = av.data();
    double* __restrict__ a1 = a1v.data();
    T* __restrict__ k = kv.data();
    T* __restrict__ ix = iv.data();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nblk, c0 = (i % nblk) * kBlock, n = std::min(kBlock, C - c0);
      std::fill(a, a + n, 0.0);
      if (na) std::fill(a1, a1 + n, 0.0);
      std::fill(k, k + n, T(0));
      std::fill(ix, ix + n, T(-1));
      const T* __restrict__ w = cw + b * C + c0;
      const T* __restrict__ cm = kp ? cmx + b * C + c0 : nullptr;
      for (int64_t p = 0; p < P; ++p) {
        const T* __restrict__ r = xp + (b * P + p) * C + c0;
        const T* __restrict__ q = gp + (b * P + p) * C + c0;
        if (na) {  // the norm's sums: dy per channel first, then S0 += dy, S1 += dy·(z − μ)
          T* __restrict__ dy = dyv.data();
          T* __restrict__ y = yv.data();
          const T* __restrict__ a0 = na + c0;
          const T* __restrict__ h0 = nb + c0;
          const T* __restrict__ m0 = mu + c0;
          const int64_t bp = b * P + p;
          if (sp.on) {
            const T s = sw[bp], t = sa[bp];
#pragma omp simd
            for (int64_t c = 0; c < n; ++c) dy[c] = q[c] * s + t;
            const int64_t ct = static_cast<int64_t>(one[bp]) - c0;  // the tied channel, if here
            if (ct >= 0 && ct < n) dy[ct] += se[bp];
          } else if (op) {
            const T* __restrict__ o = op + bp * C + c0;
            T* __restrict__ z = zp + bp * C + c0;
#pragma omp simd
            for (int64_t c = 0; c < n; ++c) {
              const T gv = q[c];
              dy[c] = o[c] > T(0) ? gv : T(0);
              z[c] = dy[c];
            }
          } else {
            std::copy(q, q + n, dy);
          }
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) {
            a[c] += dy[c];
            a1[c] += dy[c] * (r[c] - m0[c]);
            y[c] = norm_of(r[c], a0[c], h0[c]);
          }
          r = y;  // for the ties below
        } else if (sp.on && sp.sparse) {
          const int64_t bp = b * P + p;
          const T s = sw[bp], t = sa[bp];
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) a[c] += (q[c] * s + t) * r[c];
          const int64_t ct = static_cast<int64_t>(one[bp]) - c0;  // the tied channel, if in
          if (ct >= 0 && ct < n) a[ct] += se[bp] * r[ct];          // this block (one < 0: none)
        } else if (sp.on) {
          const int64_t bp = b * P + p;
          const T s = sw[bp], t = sa[bp], e = se[bp], m = smx[bp];
#pragma omp simd
          for (int64_t c = 0; c < n; ++c)
            a[c] += (q[c] * s + t + (r[c] * w[c] == m ? e : T(0))) * r[c];
        } else if (op) {
          const T* __restrict__ o = op + (b * P + p) * C + c0;
          T* __restrict__ z = zp + (b * P + p) * C + c0;
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) {
            const T gv = q[c];
            const T qv = o[c] > T(0) ? gv : T(0);
            z[c] = qv;
            a[c] += qv * r[c];
          }
        } else {
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) a[c] += q[c] * r[c];
        }
        if (kp) {
          const T pf = T(p);
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) {
            const bool tie = r[c] == cm[c];
            k[c] += tie ? T(1) : T(0);
            ix[c] = tie ? pf : ix[c];
          }
        }
      }
      if (na)
        for (int64_t c = 0; c < n; ++c) S0[b * C + c0 + c] = a[c], S1[b * C + c0 + c] = a1[c];
      else
        for (int64_t c = 0; c < n; ++c) dp[b * C + c0 + c] = static_cast<T>(a[c]);
      if (kp)
        for (int64_t c = 0; c < n; ++c) kp[b * C + c0 + c] = k[c];
      if (kp && ip)
        for (int64_t c = 0; c < n; ++c) ip[b * C + c0 + c] = ix[c];
    }
  });
}

// cone (sparse, with ce and without cmx): the position reaching the channel max where exactly one
// does, else -1 (as a T); its term is added in the pass, x unread.
template <typename T>
void gate_grad_input_kernel(const Tensor& g, const Tensor& x, const T* cw, const Spatial& sp,
                            const T* ca, const T* ce, const T* cmx, const T* cone, Tensor& dx) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* __restrict__ gp = g.data_ptr<T>();
  const T* __restrict__ xp = x.data_ptr<T>();
  const auto [sw, sa, se, smx, one] = spatial_ptrs<T>(sp);
  T* __restrict__ dp = dx.data_ptr<T>();
  if (!channels_last(x)) {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / C;
        const T w = cw[bc], a = ca[bc], cm = cmx ? cmx[bc] : T(0), e = cmx ? ce[bc] : T(0);
        const T* __restrict__ r = xp + bc * P;
        const T* __restrict__ q = gp + bc * P;
        T* __restrict__ d = dp + bc * P;
        if (sp.on && sp.sparse && !cmx) {  // x is not read: the ties found by index
          const T* __restrict__ s1 = sw + b * P;
          const T* __restrict__ s2 = sa + b * P;
          const T* __restrict__ s3 = se + b * P;
          const T* __restrict__ s5 = one + b * P;
          const T cf = T(bc - b * C);
#pragma omp simd
          for (int64_t p = 0; p < P; ++p)
            d[p] = (q[p] * s1[p] + s2[p] + (s5[p] == cf ? s3[p] : T(0))) * w + a;
        } else if (sp.on) {
          const T* __restrict__ s1 = sw + b * P;
          const T* __restrict__ s2 = sa + b * P;
          const T* __restrict__ s3 = se + b * P;
          const T* __restrict__ s4 = smx + b * P;
#pragma omp simd
          for (int64_t p = 0; p < P; ++p)
            d[p] = (q[p] * s1[p] + s2[p] + (r[p] * w == s4[p] ? s3[p] : T(0))) * w + a +
                   (r[p] == cm ? e : T(0));
        } else if (cmx) {
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) d[p] = q[p] * w + a + (r[p] == cm ? e : T(0));
        } else {  // SE, ECA: x is not read at all
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) d[p] = q[p] * w + a;
        }
        if (cone && cone[bc] >= T(0)) d[static_cast<int64_t>(cone[bc])] += ce[bc];
      }
    });
    return;
  }
  at::parallel_for(0, B * P, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const int64_t b = bp / P;
      const T* __restrict__ r = xp + bp * C;
      const T* __restrict__ q = gp + bp * C;
      T* __restrict__ d = dp + bp * C;
      const T* __restrict__ w = cw + b * C;
      const T* __restrict__ a = ca + b * C;
      const T* __restrict__ cm = cmx ? cmx + b * C : nullptr;
      const T* __restrict__ e = cmx ? ce + b * C : nullptr;
      if (sp.on && sp.sparse && !cmx) {
        const T s = sw[bp], t = sa[bp];
        if (cone) {
          const T* __restrict__ ci = cone + b * C;
          const T* __restrict__ e = ce + b * C;
          const T pf = T(bp - b * P);
#pragma omp simd
          for (int64_t c = 0; c < C; ++c)
            d[c] = (q[c] * s + t) * w[c] + a[c] + (ci[c] == pf ? e[c] : T(0));
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) d[c] = (q[c] * s + t) * w[c] + a[c];
        }
        const T ct = one[bp];  // the channel reaching the spatial max, if exactly one does
        if (ct >= T(0)) d[static_cast<int64_t>(ct)] += se[bp] * w[static_cast<int64_t>(ct)];
      } else if (sp.on) {
        const T s = sw[bp], t = sa[bp], f = se[bp], m = smx[bp];
        if (cmx) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c)
            d[c] = (q[c] * s + t + (r[c] * w[c] == m ? f : T(0))) * w[c] + a[c] +
                   (r[c] == cm[c] ? e[c] : T(0));
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c)
            d[c] = (q[c] * s + t + (r[c] * w[c] == m ? f : T(0))) * w[c] + a[c];
        }
      } else if (cmx) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) d[c] = q[c] * w[c] + a[c] + (r[c] == cm[c] ? e[c] : T(0));
      } else if (cone) {
        const T* __restrict__ ci = cone + b * C;
        const T* __restrict__ e = ce + b * C;
        const T pf = T(bp - b * P);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) d[c] = q[c] * w[c] + a[c] + (ci[c] == pf ? e[c] : T(0));
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) d[c] = q[c] * w[c] + a[c];
      }
    }
  });
}

Spatial spatial_terms(const Tensor& x, const c10::optional<Tensor>& sw,
                      const c10::optional<Tensor>& sa, const c10::optional<Tensor>& se,
                      const c10::optional<Tensor>& smx) {
  const auto B = x.size(0), P = x.size(2) * x.size(3);
  const bool on = sw.has_value() && sw->defined();
  if (!on) return {false, nullptr, nullptr, nullptr, nullptr};
  for (const auto* t : {&sw, &sa, &se, &smx}) {
    TORCH_CHECK(t->has_value() && (*t)->defined(), "attnlab_fast: spatial terms come together");
    check_small(**t, B, P, "spatial term");
  }
  return {true, sw->data_ptr(), sa->data_ptr(), se->data_ptr(), smx->data_ptr()};
}

// dcw and, given the channel max cmx, the tie count cnt[b,c] = #{p : x == cmx} (else empty);
// with idx, the last tied position goes there (B×C, as x's dtype).
std::tuple<Tensor, Tensor> grad_channel(const Tensor& g, const Tensor& x, const Tensor& cw,
                                        const Spatial& sp, const Tensor& cmx,
                                        Tensor* idx = nullptr, const Tensor* out = nullptr,
                                        Tensor* gz = nullptr) {
  const bool k = cmx.defined();
  TORCH_CHECK(!out || !sp.on, "attnlab_fast: the ReLU mask goes with the first backward pass");
  if (out) *gz = masked_like(g, *out);
  Tensor dcw = at::empty({x.size(0), x.size(1)}, x.options());
  Tensor cnt = at::empty({k ? x.size(0) : 0, k ? x.size(1) : 0}, x.options());
  if (idx) *idx = at::empty_like(cnt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grad_channel", [&] {
    gate_grad_channel_kernel<scalar_t>(g, x, cw.data_ptr<scalar_t>(), sp, dcw,
                                       k ? cmx.data_ptr<scalar_t>() : nullptr,
                                       k ? cnt.data_ptr<scalar_t>() : nullptr,
                                       k && idx ? idx->data_ptr<scalar_t>() : nullptr,
                                       out ? out->data_ptr<scalar_t>() : nullptr,
                                       out ? gz->data_ptr<scalar_t>() : nullptr);
  });
  return {dcw, cnt};
}

Tensor gate_grad_channel(const Tensor& g, const Tensor& x, const Tensor& cw,
                         const c10::optional<Tensor>& sw, const c10::optional<Tensor>& sa,
                         const c10::optional<Tensor>& se, const c10::optional<Tensor>& smx) {
  check_full(x, "x");
  check_grad(g, x);
  check_small(cw, x.size(0), x.size(1), "cw");
  return std::get<0>(grad_channel(g, x, cw, spatial_terms(x, sw, sa, se, smx), Tensor()));
}

// ce and cmx undefined: no channel max pool (its tie term is skipped). With cone (sparse: cmx
// undefined), the channel max's term at the one tied position of each row, by index.
Tensor grad_input(const Tensor& g, const Tensor& x, const Tensor& cw, const Spatial& sp,
                  const Tensor& ca, const Tensor& ce, const Tensor& cmx,
                  const Tensor& cone = Tensor()) {
  Tensor dx = pooled_empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grad_input", [&] {
    const bool tie = cmx.defined(), one = cone.defined();
    gate_grad_input_kernel<scalar_t>(g, x, cw.data_ptr<scalar_t>(), sp, ca.data_ptr<scalar_t>(),
                                     tie || one ? ce.data_ptr<scalar_t>() : nullptr,
                                     tie ? cmx.data_ptr<scalar_t>() : nullptr,
                                     one ? cone.data_ptr<scalar_t>() : nullptr, dx);
  });
  return dx;
}

Tensor gate_grad_input(const Tensor& g, const Tensor& x, const Tensor& cw,
                       const c10::optional<Tensor>& sw, const c10::optional<Tensor>& sa,
                       const c10::optional<Tensor>& se, const c10::optional<Tensor>& smx,
                       const Tensor& ca, const Tensor& ce, const Tensor& cmx) {
  check_full(x, "x");
  check_grad(g, x);
  for (const auto* t : {&cw, &ca, &ce, &cmx}) check_small(*t, x.size(0), x.size(1), "channel term");
  return grad_input(g, x, cw, spatial_terms(x, sw, sa, se, smx), ca, ce, cmx);
}

// ---------------------------------------------------------------------------------------------
// The max pools' tie terms, added at the tied entries only, so that the passes before them need
// not read x for them (gate_backward's sparse mode). cnt and idx come from the passes that did
// read x: with one tied entry idx names it; with more, that column (spatial) or row (channel) of
// x is scanned for them; with none (a NaN max) there is nothing to add.
//
// Spatial max, per (b, p), at the channels c with x·cw == smx: dcw[b,c] += se·x (dcw given) and
// dx[b,c,p] += se·cw[b,c] (dx given). Channel max, per (b, c), at the positions p with
// x == cmx: dx[b,c,p] += ce.
// multi: only where more entries than one are tied (gate_backward's passes add the single
// ones by index); then idx is not read.

// idx ← the tied entry where exactly one is tied (cnt == 1), else -1; returns whether any
// count is above 1 (those need spatial_tie_terms / channel_tie_terms with multi).
template <typename T>
bool single_ties(const T* cnt, T* idx, int64_t n) {
  bool more = false;
  for (int64_t i = 0; i < n; ++i) {
    more |= cnt[i] > T(1);
    idx[i] = cnt[i] == T(1) ? idx[i] : T(-1);
  }
  return more;
}

template <typename T>
void spatial_tie_terms(const Tensor& x, const T* cw, const T* smx, const T* se, const T* cnt,
                       const T* idx, T* dcw, T* dx, bool multi = false) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const bool last = channels_last(x);
  const int64_t sc = last ? 1 : P, sp = last ? C : 1;  // strides of c and p within a sample
  const T* xp = x.data_ptr<T>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const T* xb = xp + b * C * P;
      const T* w = cw + b * C;
      auto add = [&](int64_t c, int64_t p, T e) {
        const int64_t o = c * sc + p * sp;
        if (dcw) dcw[b * C + c] += e * xb[o];
        if (dx) dx[b * C * P + o] += e * w[c];
      };
      for (int64_t p = 0; p < P; ++p) {
        const int64_t bp = b * P + p;
        const T e = se[bp], k = cnt[bp];
        if (k == T(1)) {
          if (!multi) add(static_cast<int64_t>(idx[bp]), p, e);
        } else if (k > T(1)) {
          const T m = smx[bp];
          for (int64_t c = 0; c < C; ++c)
            if (xb[c * sc + p * sp] * w[c] == m) add(c, p, e);
        }
      }
    }
  });
}

template <typename T>
void channel_tie_terms(const Tensor& x, const T* cmx, const T* ce, const T* cnt, const T* idx,
                       T* dx, bool multi = false) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const bool last = channels_last(x);
  const int64_t sc = last ? 1 : P, sp = last ? C : 1;
  const T* xp = x.data_ptr<T>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t bc = b * C + c;
        const T e = ce[bc], k = cnt[bc];
        const int64_t base = b * C * P + c * sc;
        if (k == T(1)) {
          if (!multi) dx[base + static_cast<int64_t>(idx[bc]) * sp] += e;
        } else if (k > T(1)) {
          const T m = cmx[bc];
          for (int64_t p = 0; p < P; ++p)
            if (xp[base + p * sp] == m) dx[base + p * sp] += e;
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// A training-mode BatchNorm2d before the gate, run in the gate's own passes (gate_forward and
// gate_backward_impl with a TrainNorm; CBAM's training call): the passes read the norm's
// input z and apply y = norm_of(z, α[c], β'[c]) on the fly (α = γ·invstd, β' = β − μ·α: ATen's
// form); y is never written. The forward's first pass, which the gate's channel pools need
// anyway, gives the batch statistics and the pools: avg_p y = α·mean_p z + β', and max_p y is
// y at the row's largest z (smallest where α < 0: y is monotone in z). Backward: the channel
// pass (gate_grad_channel_kernel with the norm) sums dy and dy·(z − μ) per row instead of
// dy·y (Σ dy·y = α·S1 + β·S0), which with the max pools' tie terms give the norm's two sums;
// the input pass writes dz instead of dy:
//   dz = α·(dy − mean(dy) − (z − μ)·invstd²·mean(dy·(z − μ))) = α·dy + K[c] + Bz[c]·(z − μ).
// A call's per-row work arrays (B×C sums), from per-thread buffers kept between calls: a
// std::vector of 128 KiB or more is fresh pages from glibc every call (~2 µs per 4 KiB page
// here; 0.2-0.4 ms per late-stage CBAM training call measured with glibc's default malloc).
// slot: which buffer (one per array a call uses at once); the contents are not initialised.
template <typename V>
V* scratch(int slot, size_t n) {
  thread_local std::vector<V> bufs[4];
  std::vector<V>& b = bufs[slot];
  if (b.size() < n) b.resize(n);
  return b.data();
}

struct TrainNorm {
  Tensor weight, bias;               // undefined without affine parameters
  Tensor running_mean, running_var;  // empty: no running statistics
  double momentum = 0.1, eps = 1e-5;
};

// Σ (z − shift) and Σ (z − shift)² over a row (float lanes in chunks of 512, chunks in double;
// the shift, a value of the channel, keeps the squares from cancelling when |μ| ≫ σ) and, with
// Range, the row's largest and smallest entries.
template <typename T, bool Range>
inline void row_moments(const T* __restrict__ z, int64_t P, T shift, double& s1, double& s2, T& hi,
                        T& lo) {
  T mx = z[0], mn = z[0];
  if (P < 64) {  // short rows (late stages): four scalar lanes, no vector reductions per row
    T a4[4] = {0, 0, 0, 0}, b4[4] = {0, 0, 0, 0}, x4[4] = {mx, mx, mx, mx},
      n4[4] = {mn, mn, mn, mn};
    int64_t p = 0;
    for (; p + 4 <= P; p += 4)
      for (int j = 0; j < 4; ++j) {
        const T v = z[p + j], d = v - shift;
        a4[j] += d, b4[j] += d * d;
        if (Range) x4[j] = v > x4[j] ? v : x4[j], n4[j] = v < n4[j] ? v : n4[j];
      }
    for (; p < P; ++p) {
      const T v = z[p], d = v - shift;
      a4[0] += d, b4[0] += d * d;
      if (Range) x4[0] = v > x4[0] ? v : x4[0], n4[0] = v < n4[0] ? v : n4[0];
    }
    s1 = (double(a4[0]) + a4[1]) + (double(a4[2]) + a4[3]);
    s2 = (double(b4[0]) + b4[1]) + (double(b4[2]) + b4[3]);
    hi = std::max(std::max(x4[0], x4[1]), std::max(x4[2], x4[3]));
    lo = std::min(std::min(n4[0], n4[1]), std::min(n4[2], n4[3]));
    return;
  }
  double a = 0, b = 0;
  for (int64_t p0 = 0; p0 < P; p0 += 512) {
    const int64_t p1 = std::min(P, p0 + 512);
    T ca = 0, cb = 0;
    if constexpr (Range) {
#pragma omp simd reduction(+ : ca, cb) reduction(max : mx) reduction(min : mn)
      for (int64_t p = p0; p < p1; ++p) {
        const T d = z[p] - shift;
        ca += d;
        cb += d * d;
        mx = z[p] > mx ? z[p] : mx;
        mn = z[p] < mn ? z[p] : mn;
      }
    } else {
#pragma omp simd reduction(+ : ca, cb)
      for (int64_t p = p0; p < p1; ++p) {
        const T d = z[p] - shift;
        ca += d;
        cb += d * d;
      }
    }
    a += ca, b += cb;
  }
  s1 = a, s2 = b, hi = mx, lo = mn;
}

// The norm's statistics from one pass over z: mean and invstd (C), zsum = Σ_p (z − μ) (B×C),
// α and β' (C); the running statistics updated as nn.BatchNorm2d does (momentum given; the
// unbiased variance); the channel pools of y: avg (B×C, or null) and max (null: not computed).
template <typename T>
void train_norm_stats(const Tensor& z, const TrainNorm& tn, Tensor& mean, Tensor& invstd,
                      Tensor& zsum, Tensor& alpha, Tensor& shift, T* avg, T* mx) {
  const int64_t B = z.size(0), C = z.size(1), P = z.size(2) * z.size(3), N = B * P;
  const T* zp = z.data_ptr<T>();
  double* s1 = scratch<double>(0, B * C);
  double* s2 = scratch<double>(1, B * C);
  T* hi = scratch<T>(2, B * C);  // (slots apart from s1's and s2's for double)
  T* lo = scratch<T>(3, B * C);
  const bool last = channels_last(z);
  std::vector<T> shift0(C);  // a value of each channel (sample 0's first)
  for (int64_t c = 0; c < C; ++c) shift0[c] = zp[last ? c : c * P];
  if (last) {  // channels-last: per sample and block of channels, position after position
    const int64_t nblk = (C + kBlock - 1) / kBlock;
    at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
      T pa[kBlock], pb[kBlock];
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / nblk, c0 = (i % nblk) * kBlock, n = std::min(kBlock, C - c0);
        const T* __restrict__ h = shift0.data() + c0;
        double* __restrict__ a = s1 + b * C + c0;
        double* __restrict__ q = s2 + b * C + c0;
        T* __restrict__ top = hi + b * C + c0;
        T* __restrict__ bot = lo + b * C + c0;
        const T* base = zp + b * P * C + c0;
        for (int64_t c = 0; c < n; ++c) a[c] = 0, q[c] = 0, top[c] = base[c], bot[c] = base[c];
        for (int64_t p0 = 0; p0 < P; p0 += 512) {  // float lanes over 512 positions, then double
          for (int64_t c = 0; c < n; ++c) pa[c] = 0, pb[c] = 0;
          for (int64_t p = p0, p1 = std::min(P, p0 + 512); p < p1; ++p) {
            const T* __restrict__ r = base + p * C;
#pragma omp simd
            for (int64_t c = 0; c < n; ++c) {
              const T v = r[c], d = v - h[c];
              pa[c] += d, pb[c] += d * d;
              top[c] = v > top[c] ? v : top[c], bot[c] = v < bot[c] ? v : bot[c];
            }
          }
          for (int64_t c = 0; c < n; ++c) a[c] += pa[c], q[c] += pb[c];
        }
      }
    });
  } else
    at::parallel_for(0, B * C, 8, [&](int64_t begin, int64_t end) {
      if constexpr (std::is_same<T, float>::value)
        if (short_rows_vectorised && P >= 8 && P < 256)  // late stages: 8 rows at a time
          begin = short_rows_moments(zp, P, begin, end, shift0.data(), C, s1, s2, hi, lo);
      for (int64_t bc = begin; bc < end; ++bc) {
        if (mx)
          row_moments<T, true>(zp + bc * P, P, shift0[bc % C], s1[bc], s2[bc], hi[bc], lo[bc]);
        else
          row_moments<T, false>(zp + bc * P, P, shift0[bc % C], s1[bc], s2[bc], hi[bc], lo[bc]);
      }
    });
  mean = at::empty({C}, z.options()), invstd = at::empty({C}, z.options());
  alpha = at::empty({C}, z.options()), shift = at::empty({C}, z.options());
  zsum = at::empty({B, C}, z.options());
  const T* w = tn.weight.defined() ? tn.weight.data_ptr<T>() : nullptr;
  const T* bb = tn.bias.defined() ? tn.bias.data_ptr<T>() : nullptr;
  const bool update = tn.running_mean.defined() && tn.running_mean.numel() > 0;
  T* rm = update ? tn.running_mean.data_ptr<T>() : nullptr;
  T* rv = update ? tn.running_var.data_ptr<T>() : nullptr;
  T *mp = mean.data_ptr<T>(), *ip = invstd.data_ptr<T>(), *zs = zsum.data_ptr<T>();
  T *al = alpha.data_ptr<T>(), *sh = shift.data_ptr<T>();
  for (int64_t c = 0; c < C; ++c) {
    double a = 0, q = 0;
    for (int64_t b = 0; b < B; ++b) a += s1[b * C + c], q += s2[b * C + c];
    const double m1 = a / double(N), var = std::max(q / double(N) - m1 * m1, 0.0);
    const double mu = double(shift0[c]) + m1;
    mp[c] = static_cast<T>(mu);
    ip[c] = static_cast<T>(1.0 / std::sqrt(var + tn.eps));
    if (update) {
      const double m = tn.momentum;
      rm[c] = static_cast<T>((1.0 - m) * double(rm[c]) + m * mu);
      rv[c] = static_cast<T>((1.0 - m) * double(rv[c]) + m * var * double(N) / double(N - 1));
    }
    al[c] = ip[c] * (w ? w[c] : T(1));  // ATen's batch_norm: y = z·α + (β − μ·α)
    sh[c] = (bb ? bb[c] : T(0)) - mp[c] * al[c];
    for (int64_t b = 0; b < B; ++b) {
      const int64_t i = b * C + c;
      const double d = s1[i] - double(P) * m1;  // Σ_p (z − μ)
      zs[i] = static_cast<T>(d);
      if (avg) avg[i] = static_cast<T>(double(al[c]) * (mu + d / double(P)) + double(sh[c]));
      if (mx) mx[i] = norm_of(al[c] < T(0) ? lo[i] : hi[i], al[c], sh[c]);
    }
  }
}

// The input pass with the norm: dz = α·dy' + K[c] + Bz[c]·(z − μ), dy' = dy·cw + ca (dy as in
// gate_grad_channel_kernel, g the masked gradient) and, at the one position cone names (≥ 0),
// + ce (the channel max's term).
template <typename T>
void norm_grad_input_kernel(const Tensor& g, const Tensor& z, const T* cw, const Spatial& sp,
                            const T* ca, const T* ce, const T* cone, const T* na, const T* K,
                            const T* Bz, const T* mu, Tensor& dz) {
  const int64_t B = z.size(0), C = z.size(1), P = z.size(2) * z.size(3);
  const T* __restrict__ gp = g.data_ptr<T>();
  const T* __restrict__ xp = z.data_ptr<T>();
  [[maybe_unused]] const auto [sw, sa, se, smx, one] = spatial_ptrs<T>(sp);
  T* __restrict__ dp = dz.data_ptr<T>();
  if (channels_last(z)) {
    at::parallel_for(0, B * P, 16, [&](int64_t begin, int64_t end) {
      for (int64_t bp = begin; bp < end; ++bp) {
        const int64_t b = bp / P;
        const T* __restrict__ r = xp + bp * C;
        const T* __restrict__ q = gp + bp * C;
        T* __restrict__ d = dp + bp * C;
        const T* __restrict__ w = cw + b * C;
        const T* __restrict__ a = ca + b * C;
        const T s = sp.on ? sw[bp] : T(1), t = sp.on ? sa[bp] : T(0);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c)
          d[c] = na[c] * ((q[c] * s + t) * w[c] + a[c]) + K[c] + Bz[c] * (r[c] - mu[c]);
        const int64_t ct = sp.on ? static_cast<int64_t>(one[bp]) : -1;  // the spatial max's
        if (ct >= 0) d[ct] += na[ct] * se[bp] * w[ct];                  // one tied channel
        if (!cone) continue;
        const T pf = T(bp - b * P);
        for (int64_t c = 0; c < C; ++c)  // the channel max's one tied position, if it is this
          if (cone[b * C + c] == pf) d[c] += na[c] * ce[b * C + c];
      }
    });
    return;
  }
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / C, c = bc - b * C;
      const T al = na[c], w = cw[bc] * al, a = ca[bc] * al + K[c], bz = Bz[c], m0 = mu[c];
      const T* __restrict__ r = xp + bc * P;
      const T* __restrict__ q = gp + bc * P;
      T* __restrict__ d = dp + bc * P;
      if (sp.on) {
        const T* __restrict__ s1 = sw + b * P;
        const T* __restrict__ s2 = sa + b * P;
        const T* __restrict__ s3 = se + b * P;
        const T* __restrict__ s5 = one + b * P;
        const T cf = T(c);
#pragma omp simd
        for (int64_t p = 0; p < P; ++p)
          d[p] = (q[p] * s1[p] + s2[p] + (s5[p] == cf ? s3[p] : T(0))) * w + a + bz * (r[p] - m0);
      } else {
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) d[p] = q[p] * w + a + bz * (r[p] - m0);
      }
      if (cone && cone[bc] >= T(0)) d[static_cast<int64_t>(cone[bc])] += ce[bc] * al;
    }
  });
}

// The spatial max's terms where more channels than one reach it (cnt > 1; y·cw == smx, y the
// norm's output): into the norm's sums (S0 += se, S1 += se·(z − μ)) or into dz (+= α·se·cw).
template <typename T>
void norm_spatial_tie_terms(const Tensor& z, const T* na, const T* nb, const T* mu, const T* cw,
                            const T* smx, const T* se, const T* cnt, double* S0, double* S1,
                            T* dz) {
  const int64_t B = z.size(0), C = z.size(1), P = z.size(2) * z.size(3);
  const bool last = channels_last(z);
  const int64_t sc = last ? 1 : P, sq = last ? C : 1;  // strides of c and p within a sample
  const T* zp = z.data_ptr<T>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const T* w = cw + b * C;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t bp = b * P + p;
        if (!(cnt[bp] > T(1))) continue;
        const T e = se[bp], m = smx[bp];
        for (int64_t c = 0; c < C; ++c) {
          const int64_t o = b * C * P + c * sc + p * sq;
          if (norm_of(zp[o], na[c], nb[c]) * w[c] != m) continue;
          if (S0) S0[b * C + c] += double(e), S1[b * C + c] += double(e) * (zp[o] - mu[c]);
          if (dz) dz[o] += e * w[c] * na[c];
        }
      }
    }
  });
}

// The channel max's tied positions (y == cmx): with tz, tz[b,c] = Σ_ties (z − μ) (one tie: at
// idx, more: found by scanning the row); with dz, += α·ce at each where more than one is tied.
template <typename T>
void norm_channel_ties(const Tensor& z, const T* na, const T* nb, const T* mu, const T* cmx,
                       const T* ce, const T* cnt, const T* idx, double* tz, T* dz) {
  const int64_t B = z.size(0), C = z.size(1), P = z.size(2) * z.size(3);
  const bool last = channels_last(z);
  const int64_t sc = last ? 1 : P, sq = last ? C : 1;  // strides of c and p within a sample
  const T* zp = z.data_ptr<T>();
  at::parallel_for(0, B * C, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / C, c = bc - b * C, base = b * C * P + c * sc;
      const T* r = zp + base;  // the row: r[p * sq]
      if (tz) tz[bc] = 0;
      if (cnt[bc] == T(1)) {
        if (tz) tz[bc] = double(r[static_cast<int64_t>(idx[bc]) * sq] - mu[c]);
      } else if (cnt[bc] > T(1)) {
        const T m = cmx[bc], a = na[c], h = nb[c];
        for (int64_t p = 0; p < P; ++p) {
          if (norm_of(r[p * sq], a, h) != m) continue;
          if (tz) tz[bc] += double(r[p * sq] - mu[c]);
          if (dz) dz[base + p * sq] += ce[bc] * a;
        }
      }
    }
  });
}

}  // namespace

#include "coord.h"
#include "gate_layers.h"

// ---------------------------------------------------------------------------------------------
// One call per gate module: gate_forward / gate_backward run a whole SE, ECA or CBAM
// (channel-spatial) — full-size passes and small layers — in one operator each, so a module's
// forward is one dispatch and its backward another, whatever the map size.
//
// channel: kind 0 none; 1 MLP [w1 (R×C), b1 (R), w2 (C×R), b2 (C)] with ReLU, the pooled
// descriptors (avg and/or max) through it and summed, then σ; 2 ECA [w (1×1×k)] on avg, then σ.
// spatial: [conv w (1×2×k×k), conv b (1), bn γ (1), bn β (1)], empty list = no spatial gate;
// the pooled maps enter the conv as [max, mean] when max_first, else [mean, max]; bn 0 none,
// 1 batch statistics (updating running_mean/var when given), 2 running statistics; then σ.
// Absent parameters are empty tensors.
//
// saved (forward with save=true, outputs 1…): cw, sw, channel avg, max, spatial mean, max,
// ẑ (normalised conv output), BN's 1/σ, the MLP's hidden activations (D·B×R, after the ReLU;
// kept, not recomputed: at late stages the MLP is the gate's largest cost). The max pools' tie
// counts are not among them: the backward passes count ties as they read x.
// The operator computes the channel MLP with rows_dot (see mlp_forward), the autograd node
// (gate_train, autograd_node) with ATen's products' values, as the reference path (linear_exact).

namespace {

const Tensor* present(at::TensorList ts, size_t i) {
  return i < ts.size() && ts[i].defined() && ts[i].numel() > 0 ? &ts[i] : nullptr;
}

template <typename T>
const T* ptr(at::TensorList ts, size_t i) {
  const Tensor* t = present(ts, i);
  return t ? t->data_ptr<T>() : nullptr;
}

// The parameters as contiguous tensors (a channels-last model's conv weight is not).
std::vector<Tensor> params_of(const Tensor& x, at::TensorList ps, const char* what) {
  std::vector<Tensor> out;
  for (const auto& p : ps) {
    if (p.defined() && p.numel() > 0)
      TORCH_CHECK(p.scalar_type() == x.scalar_type() && p.device().is_cpu(), "attnlab_fast: ",
                  what, " parameters must be CPU tensors of x's dtype");
    out.push_back(p.contiguous());
  }
  return out;
}

// The gates' sigmoid: ATen's under autograd (the reference path's values: see sigmoid_inplace),
// at inference the operator's own for float. Either way in place on a contiguous B×C or B×P.
// (In a network the ATen call's code runs cold: 5–25 µs per call measured, on 2–16 k values.)
void gate_sigmoid(Tensor& t, bool exact) {
  if (!exact && t.scalar_type() == at::kFloat && t.is_contiguous())
    sigmoid_inplace(t.data_ptr<float>(), t.numel());
  else
    t.sigmoid_();
}

// [a; b] per batch row: B×2×P from two B×P (the spatial conv's input), as at::stack({a, b}, 1)
// without its dispatch (cold in a network: ~30–50 µs per call measured).
template <typename T>
Tensor stack2(const Tensor& a, const Tensor& b) {
  const int64_t B = a.size(0), P = a.size(1);
  Tensor out = at::empty({B, 2, P}, a.options());
  const T *pa = a.data_ptr<T>(), *pb = b.data_ptr<T>();
  T* o = out.data_ptr<T>();
  for (int64_t i = 0; i < B; ++i) {
    std::copy(pa + i * P, pa + (i + 1) * P, o + 2 * i * P);
    std::copy(pb + i * P, pb + (i + 1) * P, o + (2 * i + 1) * P);
  }
  return out;
}

// ATen's in·wᵀ (+ beta·b), then with relu max(·, 0) (clamp_min: NaN stays NaN): the MLP layers'
// fallback where the operator's own products (mlp_linear) or its BLAS call (linear_exact) do not
// apply.
Tensor aten_linear(const Tensor& in, const Tensor& w, const Tensor* b, double beta, bool relu) {
  Tensor o = b ? at::addmm(*b, in, w.t(), beta) : at::mm(in, w.t());
  return relu ? o.clamp_min_(0) : o;
}

// The channel MLP on D descriptors V (D·B×C): logits (B×C) = Σ_d W2·relu(W1·v_d + b1) + b2.
// float on GCC: the products by rows_dot (a late stage's weights are read once, in order);
// otherwise ATen's addmm.
Tensor mlp_linear(const Tensor& in, at::TensorList ch, size_t w, double beta, bool relu) {
  const Tensor* b = present(ch, w + 1);
  if (short_rows_vectorised && in.scalar_type() == at::kFloat) {
    const Tensor a = in.contiguous();
    Tensor o = at::empty({a.size(0), ch[w].size(0)}, a.options());
    rows_dot(a.data_ptr<float>(), a.size(0), ch[w].data_ptr<float>(), ch[w].size(0), a.size(1),
             b ? b->data_ptr<float>() : nullptr, float(beta), relu, o.data_ptr<float>());
    return o;
  }
  return aten_linear(in, ch[w], b, beta, relu);
}

// The Fortran BLAS sgemm_ that PyTorch links (MKL in the x86-64 wheels), called as ATen's addmm
// calls it for out = a·wᵀ (+ bias): the same values, without ATen's dispatch. Under autograd
// the MLP's products must be ATen's (see mlp_forward), and in a network each ATen call runs
// with its code evicted by the convolutions: the first addmm of a CBAM training call measured
// 70–190 µs against 5 µs warm, most of it in the dispatch and the structured kernel's checks.
// The sizes go by pointer to int64 values: read as LP64's 32-bit ints (little-endian) or as
// ILP64's 64-bit ones they are the same numbers.
typedef void (*sgemm_fn)(const char*, const char*, const void*, const void*, const void*,
                         const float*, const float*, const void*, const float*, const void*,
                         const float*, float*, const void*);

// Column-major, outᵀ (N×M) = (w as K×N)ᵀ · (a as K×M), beta 1 on the bias copied into out.
void sgemm_rows(sgemm_fn f, const float* a, int64_t M, const float* w, int64_t N, int64_t K,
                const float* bias, float* out) {
  if (bias)
    for (int64_t i = 0; i < M; ++i) std::copy(bias, bias + N, out + i * N);
  const float alpha = 1.0f, beta = bias ? 1.0f : 0.0f;
  f("T", "N", &N, &M, &K, &alpha, w, &K, a, &K, &beta, out, &N);
}

// sgemm_ where the process has it and it gives torch.addmm's values bit for bit on a check
// (run once); null otherwise (ATen's addmm is then called).
sgemm_fn exact_sgemm() {
  static const sgemm_fn checked = [] {
    const auto f = reinterpret_cast<sgemm_fn>(dlsym(RTLD_DEFAULT, "sgemm_"));
    if (!f) return sgemm_fn(nullptr);
    const auto opt = at::TensorOptions().dtype(at::kFloat);
    const Tensor a = at::linspace(-1.3, 2.1, 3 * 37, opt).view({3, 37}).sin();
    const Tensor w = at::linspace(-0.7, 1.9, 5 * 37, opt).view({5, 37}).cos();
    const Tensor b = at::linspace(-0.2, 0.4, 5, opt);
    Tensor out = at::empty({3, 5}, opt);
    sgemm_rows(f, a.data_ptr<float>(), 3, w.data_ptr<float>(), 5, 37, b.data_ptr<float>(),
               out.data_ptr<float>());
    return at::equal(out, at::addmm(b, a, w.t())) ? f : sgemm_fn(nullptr);
  }();
  return checked;
}

// One layer of the channel MLP under autograd: in·wᵀ (+ b), then with relu max(·, 0) (NaN stays
// NaN, as clamp_min): ATen's values, by exact_sgemm for float where it can.
Tensor linear_exact(const Tensor& in, const Tensor& w, const Tensor* b, bool relu) {
  const sgemm_fn f = in.scalar_type() == at::kFloat ? exact_sgemm() : nullptr;
  if (f && in.dim() == 2 && in.is_contiguous() && w.is_contiguous() && in.numel() > 0 &&
      w.numel() > 0 && (!b || b->is_contiguous())) {
    const int64_t M = in.size(0), N = w.size(0);
    Tensor o = at::empty({M, N}, in.options());
    float* op = o.data_ptr<float>();
    sgemm_rows(f, in.data_ptr<float>(), M, w.data_ptr<float>(), N, in.size(1),
               b ? b->data_ptr<float>() : nullptr, op);
    if (relu)
      for (int64_t i = 0; i < M * N; ++i) op[i] = relu_of(op[i]);
    return o;
  }
  return aten_linear(in, w, b, 1.0, relu);
}

// With rows (the operator gate_forward, inference, and the autograd node of an SE-like gate;
// its saved tensors are the same either way), the products by rows_dot and, with both pools,
// the second layer once, on h_avg + h_max (it is linear: W2·h_avg + b2 + W2·h_max + b2): half
// the late stages' largest matmul. Without (the autograd node otherwise), ATen's products, the
// reference path's own: the backward's max-pool ties and a spatial BatchNorm over few values
// amplify a last-bit difference in the gate beyond the tests' 1e-5 (and the summed second
// layer alone put a channel-only CBAM's output 2.6e-6 from the reference's).
Tensor mlp_forward(const Tensor& V, at::TensorList ch, int64_t D, Tensor* hidden, bool rows) {
  if (rows) {
    Tensor h = mlp_linear(V, ch, 0, 1.0, true);
    if (hidden) *hidden = h;
    if (D == 1) return mlp_linear(h, ch, 2, 1.0, false);
    const int64_t B = V.size(0) / 2, n = B * h.size(1);
    Tensor hs = at::empty({B, h.size(1)}, h.options());  // h_avg + h_max
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "mlp_forward", [&] {
      const scalar_t* a = h.data_ptr<scalar_t>();
      scalar_t* o = hs.data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) o[i] = a[i] + a[n + i];
    });
    return mlp_linear(hs, ch, 2, 2.0, false);
  }
  Tensor h = linear_exact(V, ch[0], present(ch, 1), true);
  Tensor l = linear_exact(h, ch[2], present(ch, 3), false);
  if (hidden) *hidden = h;
  if (D == 1) return l;
  // l_avg + l_max: one addition per entry, as the reference's sum of the two MLP outputs
  const int64_t n = l.size(0) / 2 * l.size(1);
  Tensor out = at::empty({l.size(0) / 2, l.size(1)}, l.options());
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "mlp_forward", [&] {
    const scalar_t* a = l.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) o[i] = a[i] + a[n + i];
  });
  return out;
}

// An eval-mode BatchNorm2d run in the gate's passes (gate_forward's norm): per-channel scale and
// shift, applied to the norm's input wherever a pass reads it (norm_of).
struct Norm {
  Tensor scale, shift;
};

// scale = weight / sqrt(running_var + eps), shift = bias − running_mean · scale, as ATen's
// batch_norm computes them in eval mode (param = [running_mean, running_var, weight, bias],
// weight and bias undefined when the norm has none).
Norm make_norm(const Tensor& z, at::TensorList param, double eps) {
  const int64_t C = z.size(1);
  static const char* const names[] = {"running_mean", "running_var", "weight", "bias"};
  TORCH_CHECK(param.size() == 4, "attnlab_fast: norm must be [", names[0], ", ", names[1], ", ",
              names[2], ", ", names[3], "]");
  std::vector<Tensor> ps(4);  // contiguous (a copy only for a strided view)
  for (size_t i = 0; i < 4; ++i) {
    if (i >= 2 && !param[i].defined()) continue;
    TORCH_CHECK(param[i].dim() == 1 && param[i].numel() == C &&
                    param[i].scalar_type() == z.scalar_type() && param[i].device().is_cpu(),
                "attnlab_fast: norm's ", names[i], " must be a CPU vector of ", C,
                " entries of the input's dtype");
    ps[i] = param[i].contiguous();
  }
  Norm nm{at::empty({C}, z.options()), at::empty({C}, z.options())};
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "norm", [&] {
    using T = scalar_t;
    const T *mean = ps[0].data_ptr<T>(), *var = ps[1].data_ptr<T>();
    const T* w = ps[2].defined() ? ps[2].data_ptr<T>() : nullptr;
    const T* b = ps[3].defined() ? ps[3].data_ptr<T>() : nullptr;
    T *a = nm.scale.data_ptr<T>(), *sh = nm.shift.data_ptr<T>();
    for (int64_t c = 0; c < C; ++c) {
      const T invstd = T(1) / std::sqrt(var[c] + static_cast<T>(eps));
      a[c] = invstd * (w ? w[c] : T(1));
      sh[c] = (b ? b[c] : T(0)) - mean[c] * a[c];
    }
  });
  return nm;
}

// The channel pools of gate_forward: with both, avg and max are the two halves of one (2B)×C
// tensor, the MLP's input as it is (no concatenation, forward or backward). With nm, x is the
// norm's input, and the pools are of the norm's output.
std::tuple<Tensor, Tensor> pooled_descriptors(const Tensor& x, bool use_avg, bool use_max,
                                              const Norm* nm = nullptr) {
  const int64_t B = x.size(0), C = x.size(1);
  const bool both = use_avg && use_max;
  Tensor V = at::empty({both ? 2 * B : B, C}, x.options());
  Tensor avg = V.narrow(0, 0, B), none;
  Tensor mx = both      ? V.narrow(0, B, B)
              : use_max ? at::empty({B, C}, x.options())
                        : at::empty({0, 0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_pool", [&] {
    using T = scalar_t;
    channel_pool_kernel<T>(x, avg, mx, none, use_max, false, nm ? nm->scale.data_ptr<T>() : nullptr,
                           nm ? nm->shift.data_ptr<T>() : nullptr);
  });
  return {avg, mx};
}

Tensor descriptors(const Tensor& avg, const Tensor& mx, bool use_avg, bool use_max) {
  if (!(use_avg && use_max)) return use_avg ? avg : mx;
  const int64_t B = avg.size(0), C = avg.size(1);
  if (avg.storage().is_alias_of(mx.storage()) && avg.storage_offset() == 0 &&
      mx.storage_offset() == B * C && avg.is_contiguous() && mx.is_contiguous())
    return avg.as_strided({2 * B, C}, {C, 1});  // the halves of one tensor (pooled_descriptors)
  return at::cat({avg, mx}, 0);
}

template <typename T>
Tensor channel_logits(const Tensor& avg, const Tensor& mx, at::TensorList ch, int64_t kind,
                      bool use_avg, bool use_max, Tensor* hidden, bool rows) {
  if (kind == 1) {
    return mlp_forward(descriptors(avg, mx, use_avg, use_max), ch, int64_t(use_avg) + use_max,
                       hidden, rows);
  }
  Tensor l = at::empty_like(avg);
  eca_forward<T>(avg.data_ptr<T>(), ch[0].data_ptr<T>(), l.data_ptr<T>(), avg.size(0),
                 avg.size(1), ch[0].numel());
  return l;
}

std::vector<Tensor> gate_forward(const Tensor& x_in, at::TensorList ch_, int64_t kind, bool use_avg,
                                 bool use_max, at::TensorList sp_, bool max_first, int64_t bn,
                                 const Tensor& running_mean, const Tensor& running_var,
                                 double momentum, double eps, bool save,
                                 const c10::optional<Tensor>& residual, at::TensorList norm = {},
                                 double norm_eps = 1e-5, bool autograd_node = false,
                                 const TrainNorm* tn = nullptr) {
  check_full(x_in, "x");
  check_residual(residual, x_in);
  // With norm, x is an eval-mode BatchNorm2d's input, and every pass applies the norm to what
  // it reads: the norm's output is never written.
  const Tensor& x = x_in;
  Norm nm;
  if (!norm.empty()) {
    TORCH_CHECK(!autograd_node, "attnlab_fast: norm is for inference only");
    nm = make_norm(x_in, norm, norm_eps);
  }
  // With tn, x is a training-mode BatchNorm2d's input: its statistics' pass gives the channel
  // pools too (train_norm_stats), the passes after it normalise what they read.
  Tensor nmean, ninvstd, nzsum;
  if (tn) {
    TORCH_CHECK(norm.empty(), "attnlab_fast: the training norm takes no eval-mode norm too");
    TORCH_CHECK(x_in.size(0) * x_in.size(2) * x_in.size(3) > 1,
                "attnlab_fast: a BatchNorm in training needs more than one value per channel "
                "(got input size ",
                x_in.sizes(), ")");
  }
  const auto chv = params_of(x, ch_, "channel"), spv = params_of(x, sp_, "spatial");
  const at::TensorList ch(chv), sp(spv);
  TORCH_CHECK(kind >= 0 && kind <= 2, "attnlab_fast: channel kind must be 0, 1 or 2");
  TORCH_CHECK(kind == 0 || use_avg || use_max, "attnlab_fast: the channel gate needs a pool");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = H * W;
  const bool spatial = present(sp, 0) != nullptr;
  Tensor cw, sw, cavg, cmax, smean, smax, zhat, invstd, hidden;
  std::vector<Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_forward", [&] {
    using T = scalar_t;
    if (tn) {  // the norm's statistics and the channel pools, one pass
      const bool both = kind == 1 && use_avg && use_max;
      Tensor V = at::empty({kind == 0 ? 0 : both ? 2 * B : B, C}, x.options());
      if (kind != 0) {
        cavg = V.narrow(0, 0, B);
        cmax = both      ? V.narrow(0, B, B)
               : use_max ? at::empty({B, C}, x.options())
                         : at::empty({0, 0}, x.options());
      }
      train_norm_stats<T>(x, *tn, nmean, ninvstd, nzsum, nm.scale, nm.shift,
                          kind != 0 ? cavg.data_ptr<T>() : nullptr,
                          kind != 0 && use_max ? cmax.data_ptr<T>() : nullptr);
    }
    if (kind != 0) {
      if (!tn)
        std::tie(cavg, cmax) = pooled_descriptors(x, kind == 1 && use_avg, use_max,
                                                  nm.scale.defined() ? &nm : nullptr);
      // The operator's products under autograd too where only the average pool feeds the MLP
      // and no spatial gate follows (SE): nothing there amplifies their last-bit difference
      // from ATen's (see mlp_forward); at 8×2048×5×5 the SE block's training call measured
      // 0.08 ms faster (of 0.67), at 8×1024×10×10 0.04 ms (of 0.57).
      const bool rows = !autograd_node || (kind == 1 && !use_max && !spatial);
      cw = channel_logits<T>(cavg, cmax, ch, kind, use_avg, use_max, save ? &hidden : nullptr,
                             rows);
      gate_sigmoid(cw, autograd_node);
    } else {
      cw = at::empty({B, C}, x.options());
      std::fill_n(cw.data_ptr<T>(), B * C, T(1));
    }
    if (spatial) {
      const int64_t k = sp[0].size(-1);
      TORCH_CHECK(sp[0].numel() == 2 * k * k, "attnlab_fast: spatial conv weight must be 1×2×k×k");
      std::tie(smean, smax, std::ignore) = spatial_pool_impl(x, cw, false, nm.scale, nm.shift);
      const Tensor in = max_first ? stack2<T>(smax, smean) : stack2<T>(smean, smax);
      sw = at::empty({B, P}, x.options());
      const T* cb = ptr<T>(sp, 1);
      conv2to1_forward<T>(in.data_ptr<T>(), sp[0].data_ptr<T>(), cb ? *cb : T(0),
                          sw.data_ptr<T>(), B, H, W, k);
      zhat = at::empty({bn ? B : 0, bn ? P : 0}, x.options());
      invstd = at::empty({1}, x.options());
      invstd.data_ptr<T>()[0] = T(1);
      if (bn) {
        const bool update = bn == 1 && running_mean.numel() > 0;
        TORCH_CHECK(bn == 1 || running_mean.numel() > 0,
                    "attnlab_fast: running statistics need running_mean/var");
        invstd.data_ptr<T>()[0] = T(batch_norm1_forward<T>(
            sw.data_ptr<T>(), zhat.data_ptr<T>(), B * P, ptr<T>(sp, 2), ptr<T>(sp, 3), bn == 1,
            update || bn == 2 ? running_mean.data_ptr<T>() : nullptr,
            update || bn == 2 ? running_var.data_ptr<T>() : nullptr, update ? momentum : 0.0,
            eps));
      }
      gate_sigmoid(sw, autograd_node);
    }
  });
  out.push_back(gate_apply_impl(x, cw, spatial ? c10::optional<Tensor>(sw) : c10::nullopt, residual,
                                nm.scale, nm.shift));
  if (save) {
    auto none = [&] { return at::empty({0}, x.options()); };
    for (Tensor* t : {&sw, &cavg, &cmax, &smean, &smax, &zhat, &invstd, &hidden})
      if (!t->defined()) *t = none();
    out.insert(out.end(), {cw, sw, cavg, cmax, smean, smax, zhat, invstd, hidden});
    if (tn) out.insert(out.end(), {nmean, ninvstd, nzsum, nm.scale, nm.shift});
  }
  return out;
}

// Returns [dx (empty unless need_dx), d channel params ×4, d spatial params ×4]; a gradient of an
// absent parameter is an empty tensor.
// With out (the output of relu(gate + residual)), grad is the ReLU's output gradient: the first
// pass masks it, g·(out > 0), writes that to *gz (the residual's gradient) and the passes after
// it read that.
std::vector<Tensor> gate_backward_impl(const Tensor& grad_in, const Tensor& x, at::TensorList ch_,
                                       int64_t kind, bool use_avg, bool use_max, at::TensorList sp_,
                                       bool max_first, int64_t bn, at::TensorList saved,
                                       bool need_dx, const Tensor* out, Tensor* gz,
                                       const TrainNorm* tn = nullptr) {
  check_full(x, "x");
  const auto chv = params_of(x, ch_, "channel"), spv = params_of(x, sp_, "spatial");
  const at::TensorList ch(chv), sp(spv);
  check_grad(grad_in, x);
  TORCH_CHECK(!out || (kind != 0 || present(sp_, 0)), "attnlab_fast: nothing to mask");
  Tensor grad = grad_in;
  TORCH_CHECK(saved.size() == (tn ? 14 : 9), "attnlab_fast: gate_backward needs the ", tn ? 14 : 9,
              " saved tensors");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = H * W;
  const Tensor &cw = saved[0], &sw = saved[1], &cavg = saved[2], &cmax = saved[3],
               &smean = saved[4], &smax = saved[5], &zhat = saved[6], &invstd = saved[7];
  const bool spatial = present(sp, 0) != nullptr;
  auto none = [&] { return at::empty({0}, x.options()); };
  // With tn (x the training norm's input z): its saved mean, invstd, Σ_p (z − μ), α, β'; two
  // more gradients, the norm's weight and bias, and grads[0] is dz.
  std::vector<Tensor> grads(tn ? 11 : 9);
  for (auto& t : grads) t = none();
  c10::optional<Tensor> osw, sa, se, smx;
  // Sparse: the passes after the ones that count the max pools' ties add their terms by index
  // (x·cw == smax, x == cmax are not tested again), so the input gradient's pass does not read
  // x; entries more than one of which are tied get theirs afterwards. It needs the tied index
  // exact in T (float: below 2^24).
  // ATTNLAB_DENSE_TIES=1 forces the dense form (every pass tests x == max), which is what
  // runs past that size; the tests use it to keep that form checked.
  const char* dense_env = std::getenv("ATTNLAB_DENSE_TIES");
  const bool sparse = !(dense_env && dense_env[0] == '1') &&
                      (x.scalar_type() == at::kDouble || std::max(C, P) < (int64_t(1) << 24));
  TORCH_CHECK(!tn || sparse, "attnlab_fast: the training norm needs the sparse ties");
  const Tensor none_t;
  const Tensor& na = tn ? saved[12] : none_t;
  const Tensor& nb = tn ? saved[13] : none_t;
  Tensor scnt, sidx, cidx;
  bool smulti = false, cmulti = false;  // a position (channel) whose max more entries reach
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_backward", [&] {
    using T = scalar_t;
    if (spatial) {
      const int64_t k = sp[0].size(-1);
      Tensor ds;  // dL/dσ, then dL/d(conv ∘ bn)
      std::tie(ds, scnt) =
          grad_spatial(grad, x, cw, smax, sparse ? &sidx : nullptr, out, gz, na, nb);
      if (out) grad = *gz;
      sigmoid_backward_inplace<T>(ds.data_ptr<T>(), sw.data_ptr<T>(), B * P);
      if (bn) {
        for (int i : {7, 8})
          if (present(sp, i - 5)) grads[i] = at::empty({1}, x.options());
        batch_norm1_backward<T>(ds.data_ptr<T>(), zhat.data_ptr<T>(), B * P, ptr<T>(sp, 2),
                                invstd.data_ptr<T>()[0], bn == 1,
                                present(sp, 2) ? grads[7].data_ptr<T>() : nullptr,
                                present(sp, 3) ? grads[8].data_ptr<T>() : nullptr);
      }
      const Tensor in = max_first ? stack2<T>(smax, smean) : stack2<T>(smean, smax);
      grads[5] = at::empty_like(sp[0]);
      const double db = conv2to1_grad_weight<T>(ds.data_ptr<T>(), in.data_ptr<T>(),
                                                grads[5].data_ptr<T>(), B, H, W, k);
      if (present(sp, 1)) {
        grads[6] = at::empty({1}, x.options());
        grads[6].data_ptr<T>()[0] = T(db);
      }
      Tensor din = at::empty({B, 2, P}, x.options());
      conv2to1_grad_input<T>(ds.data_ptr<T>(), sp[0].data_ptr<T>(), din.data_ptr<T>(), B, H, W,
                             k);
      // sa = dmean / C, se = dmax / count
      Tensor sa_ = at::empty({B, P}, x.options()), se_ = at::empty({B, P}, x.options());
      {
        const T* d = din.data_ptr<T>();
        const T* kc = scnt.data_ptr<T>();
        T* a = sa_.data_ptr<T>();
        T* e = se_.data_ptr<T>();
        const int64_t im = max_first ? 1 : 0, ix = 1 - im;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t p = 0; p < P; ++p) {
            a[b * P + p] = d[(b * 2 + im) * P + p] / T(C);
            e[b * P + p] = d[(b * 2 + ix) * P + p] / kc[b * P + p];
          }
      }
      osw = sw;
      sa = sa_;
      se = se_;
      smx = smax;
    }
    Spatial terms = spatial_terms(x, osw, sa, se, smx);
    terms.sparse = sparse;
    if (spatial && sparse) {
      smulti = single_ties<T>(scnt.data_ptr<T>(), sidx.data_ptr<T>(), B * P);
      terms.one = sidx.data_ptr<T>();
    }
    Tensor ca = at::empty({B, C}, x.options()), ce, cm, ccnt;  // ce, cm: only with a max pool
    std::fill_n(ca.data_ptr<T>(), B * C, T(0));  // (not at::zeros: its fill runs cold, see stack2)
    const T* al = tn ? na.data_ptr<T>() : nullptr;
    const T* sh = tn ? nb.data_ptr<T>() : nullptr;
    const T* mu = tn ? saved[9].data_ptr<T>() : nullptr;
    // Σ_p dy, Σ_p dy·(z − μ)
    double* S0 = tn ? scratch<double>(0, B * C) : nullptr;
    double* S1 = tn ? scratch<double>(1, B * C) : nullptr;
    if (tn) {  // the channel pass with the norm (kind 0 too: the norm's sums)
      const bool first = out && !spatial;
      const bool ties = kind != 0 && use_max;
      ccnt = at::empty({ties ? B : 0, ties ? C : 0}, x.options());
      cidx = at::empty_like(ccnt);
      if (first) *gz = masked_like(grad, *out);
      Tensor unused;
      gate_grad_channel_kernel<T>(
          grad, x, cw.data_ptr<T>(), terms, unused, ties ? cmax.data_ptr<T>() : nullptr,
          ties ? ccnt.data_ptr<T>() : nullptr, ties ? cidx.data_ptr<T>() : nullptr,
          first ? out->data_ptr<T>() : nullptr, first ? gz->data_ptr<T>() : nullptr, al, sh, mu, S0,
          S1);
      if (first) grad = *gz;
      if (spatial && smulti)
        norm_spatial_tie_terms<T>(x, al, sh, mu, cw.data_ptr<T>(), smax.data_ptr<T>(),
                                  se->data_ptr<T>(), scnt.data_ptr<T>(), S0, S1, nullptr);
    }
    if (kind != 0) {
      Tensor dl;
      const bool first = out && !spatial;  // the first pass: the ReLU's mask goes with it
      if (tn) {                            // Σ_p dy·y = α·S1 + β·S0 (y = α·(z − μ) + β)
        dl = at::empty({B, C}, x.options());
        T* d = dl.data_ptr<T>();
        const T* bias = tn->bias.defined() ? tn->bias.data_ptr<T>() : nullptr;
        for (int64_t i = 0; i < B * C; ++i)
          d[i] = static_cast<T>(double(al[i % C]) * S1[i] +
                                (bias ? double(bias[i % C]) * S0[i] : 0.0));
      } else {
        std::tie(dl, ccnt) = grad_channel(grad, x, cw, terms, use_max ? cmax : Tensor(),
                                          sparse ? &cidx : nullptr, first ? out : nullptr, gz);
        if (first) grad = *gz;
      }
      if (!tn && spatial && sparse && smulti)
        spatial_tie_terms<T>(x, cw.data_ptr<T>(), smax.data_ptr<T>(), se->data_ptr<T>(),
                             scnt.data_ptr<T>(), sidx.data_ptr<T>(), dl.data_ptr<T>(), nullptr,
                             true);
      sigmoid_backward_inplace<T>(dl.data_ptr<T>(), cw.data_ptr<T>(), B * C);
      Tensor davg, dmax;
      if (kind == 1) {
        const int64_t D = int64_t(use_avg) + use_max;
        Tensor V = descriptors(cavg, cmax, use_avg, use_max);
        const Tensor& h = saved[8];  // the hidden activations (D·B×R)
        TORCH_CHECK(h.dim() == 2 && h.size(0) == D * B, "attnlab_fast: bad saved hidden state");
        const int64_t R = h.size(1);
        for (int i : {1, 2, 3, 4})
          if (present(ch, i - 1)) grads[i] = at::empty_like(ch[i - 1]);
        Tensor dV = at::empty({D * B, C}, x.options());
        mlp_backward<T>(dl.data_ptr<T>(), V.data_ptr<T>(), h.data_ptr<T>(), ch[0].data_ptr<T>(),
                        ch[2].data_ptr<T>(), B, C, R, D, grads[1].data_ptr<T>(),
                        present(ch, 1) ? grads[2].data_ptr<T>() : nullptr,
                        grads[3].data_ptr<T>(),
                        present(ch, 3) ? grads[4].data_ptr<T>() : nullptr, dV.data_ptr<T>());
        if (use_avg) davg = dV.narrow(0, 0, B);
        if (use_max) dmax = dV.narrow(0, use_avg ? B : 0, B);
      } else {
        davg = at::empty_like(cavg);
        grads[1] = at::empty_like(ch[0]);
        eca_backward<T>(dl.data_ptr<T>(), cavg.data_ptr<T>(), ch[0].data_ptr<T>(),
                        davg.data_ptr<T>(), grads[1].data_ptr<T>(), B, C, ch[0].numel());
      }
      // ca = davg / P, ce = dmax / count (davg and dmax are rows of a contiguous dV)
      if (davg.defined()) {
        const T* d = davg.data_ptr<T>();
        T* a = ca.data_ptr<T>();
        for (int64_t i = 0; i < B * C; ++i) a[i] = d[i] / T(P);
      }
      if (dmax.defined()) {
        ce = at::empty({B, C}, x.options());
        const T* d = dmax.data_ptr<T>();
        const T* kc = ccnt.data_ptr<T>();
        T* e = ce.data_ptr<T>();
        for (int64_t i = 0; i < B * C; ++i) e[i] = d[i] / kc[i];
        cm = cmax;
      }
    }
    if (tn) {
      // the norm's sums: Σ_{b,p} dy' and Σ_{b,p} dy'·(z − μ), dy' = dy·cw + ca + the channel
      // max's term at its ties (ce each)
      if (cm.defined()) cmulti = single_ties<T>(ccnt.data_ptr<T>(), cidx.data_ptr<T>(), B * C);
      double* tz = cm.defined() ? scratch<double>(2, B * C) : nullptr;  // Σ_ties (z − μ)
      if (cm.defined())
        norm_channel_ties<T>(x, al, sh, mu, cm.data_ptr<T>(), ce.data_ptr<T>(), ccnt.data_ptr<T>(),
                             cidx.data_ptr<T>(), tz, nullptr);
      const T *cwp = cw.data_ptr<T>(), *cap = ca.data_ptr<T>(), *zs = saved[11].data_ptr<T>();
      const T* cep = cm.defined() ? ce.data_ptr<T>() : nullptr;
      const T* kc = cm.defined() ? ccnt.data_ptr<T>() : nullptr;
      std::vector<double> D0(C, 0.0), E1(C, 0.0);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = b * C + c;
          D0[c] += double(cwp[i]) * S0[i] + double(cap[i]) * double(P) +
                   (cep ? double(cep[i]) * double(kc[i]) : 0.0);
          E1[c] += double(cwp[i]) * S1[i] + double(cap[i]) * double(zs[i]) +
                   (cep ? double(cep[i]) * tz[i] : 0.0);
        }
      const T* ip = saved[10].data_ptr<T>();
      if (tn->weight.defined()) {
        grads[9] = at::empty({C}, x.options());
        for (int64_t c = 0; c < C; ++c)
          grads[9].data_ptr<T>()[c] = static_cast<T>(double(ip[c]) * E1[c]);
      }
      if (tn->bias.defined()) {
        grads[10] = at::empty({C}, x.options());
        for (int64_t c = 0; c < C; ++c) grads[10].data_ptr<T>()[c] = static_cast<T>(D0[c]);
      }
      if (need_dx) {  // dz = α·dy' + K + Bz·(z − μ)
        const double N = double(B * P);
        std::vector<T> K(C), Bz(C);
        for (int64_t c = 0; c < C; ++c) {
          K[c] = static_cast<T>(-double(al[c]) * D0[c] / N);
          Bz[c] = static_cast<T>(-double(al[c]) * double(ip[c]) * double(ip[c]) * E1[c] / N);
        }
        grads[0] = pooled_empty_like(x);
        norm_grad_input_kernel<T>(grad, x, cwp, terms, cap, cep,
                                  cm.defined() ? cidx.data_ptr<T>() : nullptr, al, K.data(),
                                  Bz.data(), mu, grads[0]);
        T* dz = grads[0].data_ptr<T>();
        if (spatial && smulti)
          norm_spatial_tie_terms<T>(x, al, sh, mu, cwp, smax.data_ptr<T>(), se->data_ptr<T>(),
                                    scnt.data_ptr<T>(), nullptr, nullptr, dz);
        if (cm.defined() && cmulti)
          norm_channel_ties<T>(x, al, sh, mu, cm.data_ptr<T>(), cep, kc, cidx.data_ptr<T>(),
                               nullptr, dz);
      }
    }
    if (need_dx && !tn && !sparse) grads[0] = grad_input(grad, x, cw, terms, ca, ce, cm);
    if (need_dx && !tn && sparse) {
      if (cm.defined()) cmulti = single_ties<T>(ccnt.data_ptr<T>(), cidx.data_ptr<T>(), B * C);
      grads[0] = grad_input(grad, x, cw, terms, ca, ce, Tensor(), cm.defined() ? cidx : Tensor());
      T* dx = grads[0].data_ptr<T>();
      if (spatial && smulti)
        spatial_tie_terms<T>(x, cw.data_ptr<T>(), smax.data_ptr<T>(), se->data_ptr<T>(),
                             scnt.data_ptr<T>(), sidx.data_ptr<T>(), nullptr, dx, true);
      if (cm.defined() && cmulti)
        channel_tie_terms<T>(x, cm.data_ptr<T>(), ce.data_ptr<T>(), ccnt.data_ptr<T>(),
                             cidx.data_ptr<T>(), dx, true);
    }
  });
  return grads;
}

std::vector<Tensor> gate_backward(const Tensor& grad, const Tensor& x, at::TensorList ch,
                                  int64_t kind, bool use_avg, bool use_max, at::TensorList sp,
                                  bool max_first, int64_t bn, at::TensorList saved,
                                  bool need_dx) {
  return gate_backward_impl(grad, x, ch, kind, use_avg, use_max, sp, max_first, bn, saved,
                            need_dx, nullptr, nullptr);
}

// ---------------------------------------------------------------------------------------------
// gate_bn: the residual block's last BatchNorm in training mode (batch statistics) and a channel
// gate on an average pool (SE, ECA) with the block's tail, one operator each way (NCHW):
//   out = relu(y·c[b,ch] + r),  y = z·α + β' (α = γ·invstd, β' = β − μ·α: ATen's form),
//   c = σ(f(mean_p y)),
// z the block's last conv's output. The norm's output y is never written: each pass reads z and
// applies the norm on the fly. Forward: one pass for the norm's statistics, which also gives
// the gate's pool (mean_p y is affine in Σ_p z), and one for the output; the norm and the gate
// as separate operators make four (the norm's statistics, its output, the pool, the output).
// Backward: one pass masks the gradient by the ReLU and sums it per row (S0 = Σ_p g',
// S1 = Σ_p g'·(z − μ)), which gives the gate's gradient (Σ_p g'·y = α·S1 + β·S0) and both of
// the norm's sums; one writes dz. Separately: the gate's two passes, then the norm's two.

void check_bn_vector(const c10::optional<Tensor>& t, const Tensor& z, const char* what) {
  if (!t.has_value() || !t->defined() || t->numel() == 0) return;
  TORCH_CHECK(t->dim() == 1 && t->numel() == z.size(1) && t->is_contiguous() &&
                  t->scalar_type() == z.scalar_type() && t->device().is_cpu(),
              "attnlab_fast: gate_bn's ", what, " must be a contiguous CPU vector of ", z.size(1),
              " entries of x's dtype");
}

template <typename T>
const T* bn_ptr(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined() && t->numel() > 0 ? t->data_ptr<T>() : nullptr;
}

template <typename T>
void gate_bn_forward_t(const Tensor& z, at::TensorList ch, int64_t kind, const TrainNorm& tn,
                       const Tensor& residual, Tensor& mean, Tensor& invstd, Tensor& zsum,
                       Tensor& pooled, Tensor& cw, Tensor& hidden, Tensor& out) {
  Tensor alpha, shift;
  train_norm_stats<T>(z, tn, mean, invstd, zsum, alpha, shift, pooled.data_ptr<T>(), nullptr);
  cw = channel_logits<T>(pooled, Tensor(), ch, kind, true, false, &hidden, true);
  gate_sigmoid(cw, true);
  out = gate_apply_impl(z, cw, c10::nullopt, residual, alpha, shift);
}

// Returns [out, c, pooled (mean_p y), hidden, mean, invstd, zsum (Σ_p (z − μ), B×C)].
std::vector<Tensor> gate_bn_forward(const Tensor& z, at::TensorList ch_, int64_t kind,
                                    const c10::optional<Tensor>& weight,
                                    const c10::optional<Tensor>& bias, const Tensor& running_mean,
                                    const Tensor& running_var, double momentum, double eps,
                                    const Tensor& residual) {
  check_full(z, "x");
  TORCH_CHECK(residual.defined(), "attnlab_fast: gate_bn needs the residual");
  check_residual(residual, z);
  TORCH_CHECK(kind == 1 || kind == 2, "attnlab_fast: gate_bn's channel kind must be 1 or 2");
  const auto chv = params_of(z, ch_, "channel");
  const at::TensorList ch(chv);
  const int64_t B = z.size(0), C = z.size(1), P = z.size(2) * z.size(3), N = B * P;
  TORCH_CHECK(N > 1,
              "attnlab_fast: a BatchNorm in training needs more than one value per "
              "channel (got input size ",
              z.sizes(), ")");
  check_bn_vector(weight, z, "weight");
  check_bn_vector(bias, z, "bias");
  const bool update = running_mean.numel() > 0;
  if (update) {
    check_bn_vector(running_mean, z, "running_mean");
    check_bn_vector(running_var, z, "running_var");
  }
  TrainNorm tn;
  if (weight.has_value() && weight->defined() && weight->numel() > 0) tn.weight = *weight;
  if (bias.has_value() && bias->defined() && bias->numel() > 0) tn.bias = *bias;
  tn.running_mean = running_mean, tn.running_var = running_var;
  tn.momentum = momentum, tn.eps = eps;
  Tensor mean, invstd, zsum, pooled = at::empty({B, C}, z.options());
  Tensor cw, hidden, out;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "gate_bn_forward", [&] {
    gate_bn_forward_t<scalar_t>(z, ch, kind, tn, residual, mean, invstd, zsum, pooled, cw, hidden,
                                out);
  });
  if (!hidden.defined()) hidden = at::empty({0}, z.options());
  return {out, cw, pooled, hidden, mean, invstd, zsum};
}

template <typename T>
void gate_bn_backward_t(const Tensor& grad, const Tensor& z, const Tensor& out, at::TensorList ch,
                        int64_t kind, const c10::optional<Tensor>& weight,
                        const c10::optional<Tensor>& bias, const Tensor& cw, const Tensor& pooled,
                        const Tensor& h, const Tensor& mean, const Tensor& invstd,
                        const Tensor& zsum, bool need_dz, Tensor& gz, std::vector<Tensor>& grads) {
  const int64_t B = z.size(0), C = z.size(1), P = z.size(2) * z.size(3), N = B * P;
  const T *gp = grad.data_ptr<T>(), *opp = out.data_ptr<T>(), *zp = z.data_ptr<T>();
  const T *mp = mean.data_ptr<T>(), *ip = invstd.data_ptr<T>(), *cp = cw.data_ptr<T>();
  const T* w = bn_ptr<T>(weight);
  T* qp = gz.data_ptr<T>();
  // pass 1: g' = g·(out > 0); S0 = Σ_p g', S1 = Σ_p g'·(z − μ)
  double* S0 = scratch<double>(0, B * C);
  double* S1 = scratch<double>(1, B * C);
  const bool last = channels_last(z);
  const int64_t nblk = (C + kBlock - 1) / kBlock;
  if (last)  // channels-last: per sample and block of channels, position after position
    at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
      T pa[kBlock], pb[kBlock];
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / nblk, c0 = (i % nblk) * kBlock, n = std::min(kBlock, C - c0);
        const T* __restrict__ mu = mp + c0;
        double* __restrict__ a = S0 + b * C + c0;
        double* __restrict__ e = S1 + b * C + c0;
        for (int64_t c = 0; c < n; ++c) a[c] = 0, e[c] = 0;
        for (int64_t p0 = 0; p0 < P; p0 += 512) {  // float lanes over 512 positions, then double
          for (int64_t c = 0; c < n; ++c) pa[c] = 0, pb[c] = 0;
          for (int64_t p = p0, p1 = std::min(P, p0 + 512); p < p1; ++p) {
            const int64_t off = (b * P + p) * C + c0;
            const T* __restrict__ g = gp + off;
            const T* __restrict__ o = opp + off;
            const T* __restrict__ zr = zp + off;
            T* __restrict__ q = qp + off;
#pragma omp simd
            for (int64_t c = 0; c < n; ++c) {
              const T v = o[c] > T(0) ? g[c] : T(0);
              q[c] = v;
              pa[c] += v, pb[c] += v * (zr[c] - mu[c]);
            }
          }
          for (int64_t c = 0; c < n; ++c) a[c] += pa[c], e[c] += pb[c];
        }
      }
    });
  else
    at::parallel_for(0, B * C, 8, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const T mu = mp[bc % C];
        const T* __restrict__ g = gp + bc * P;
        const T* __restrict__ o = opp + bc * P;
        const T* __restrict__ zr = zp + bc * P;
        T* __restrict__ q = qp + bc * P;
        double a = 0, b = 0;
        for (int64_t p0 = 0; p0 < P; p0 += 512) {
          const int64_t p1 = std::min(P, p0 + 512);
          T ca = 0, cb = 0;
#pragma omp simd reduction(+ : ca, cb)
          for (int64_t p = p0; p < p1; ++p) {
            const T v = o[p] > T(0) ? g[p] : T(0);
            q[p] = v;
            ca += v;
            cb += v * (zr[p] - mu);
          }
          a += ca, b += cb;
        }
        S0[bc] = a, S1[bc] = b;
      }
    });
  // the gate: dL/dc = Σ_p g'·y = α·S1 + β·S0, through the sigmoid, then the channel layers
  const T* bb = bn_ptr<T>(bias);
  Tensor dl = at::empty({B, C}, z.options());
  T* dlp = dl.data_ptr<T>();
  const T* pp = pooled.data_ptr<T>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      const double al = double(ip[c]) * (w ? double(w[c]) : 1.0);
      dlp[b * C + c] =
          static_cast<T>(al * S1[b * C + c] + (bb ? double(bb[c]) : 0.0) * S0[b * C + c]);
    }
  sigmoid_backward_inplace<T>(dlp, cp, B * C);
  Tensor dpool = at::empty({B, C}, z.options());
  if (kind == 1) {
    TORCH_CHECK(h.dim() == 2 && h.size(0) == B, "attnlab_fast: bad saved hidden state");
    for (int i : {2, 3, 4, 5})
      if (present(ch, i - 2)) grads[i] = at::empty_like(ch[i - 2]);
    mlp_backward<T>(dlp, pp, h.data_ptr<T>(), ch[0].data_ptr<T>(), ch[2].data_ptr<T>(), B, C,
                    h.size(1), 1, grads[2].data_ptr<T>(),
                    present(ch, 1) ? grads[3].data_ptr<T>() : nullptr, grads[4].data_ptr<T>(),
                    present(ch, 3) ? grads[5].data_ptr<T>() : nullptr, dpool.data_ptr<T>());
  } else {
    grads[2] = at::empty_like(ch[0]);
    eca_backward<T>(dlp, pp, ch[0].data_ptr<T>(), dpool.data_ptr<T>(), grads[2].data_ptr<T>(), B, C,
                    ch[0].numel());
  }
  // the norm: dy = g'·c + dpool/P; D0 = Σ_{b,p} dy, E1 = Σ_{b,p} dy·(z − μ)
  const T* dp = dpool.data_ptr<T>();
  const T* zs = zsum.data_ptr<T>();
  std::vector<double> D0(C, 0.0), E1(C, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = b * C + c;
      D0[c] += double(cp[i]) * S0[i] + double(dp[i]);
      E1[c] += double(cp[i]) * S1[i] + double(dp[i]) / double(P) * double(zs[i]);
    }
  if (w) {
    grads[6] = at::empty({C}, z.options());
    for (int64_t c = 0; c < C; ++c)
      grads[6].data_ptr<T>()[c] = static_cast<T>(double(ip[c]) * E1[c]);
  }
  if (bb) {
    grads[7] = at::empty({C}, z.options());
    for (int64_t c = 0; c < C; ++c) grads[7].data_ptr<T>()[c] = static_cast<T>(D0[c]);
  }
  if (!need_dz) return;
  // pass 2: dz = γ·invstd·(dy − D0/N − (z − μ)·invstd²·E1/N) = A·g' + Bz·(z − μ) + K
  std::vector<T> Bz(C);
  for (int64_t c = 0; c < C; ++c) {
    const double gi = double(ip[c]) * (w ? double(w[c]) : 1.0);
    Bz[c] = static_cast<T>(-gi * double(ip[c]) * double(ip[c]) * E1[c] / double(N));
  }
  grads[0] = pooled_empty_like(z);
  T* dzp = grads[0].data_ptr<T>();
  auto coefs = [&](int64_t bc, T& A, T& K) {  // dz = A·g' + Bz·(z − μ) + K at row bc
    const int64_t c = bc % C;
    const double gi = double(ip[c]) * (w ? double(w[c]) : 1.0);
    A = static_cast<T>(gi * double(cp[bc]));
    K = static_cast<T>(gi * (double(dp[bc]) / double(P) - D0[c] / double(N)));
  };
  if (last) {
    std::vector<T> Av(B * C), Kv(B * C);
    for (int64_t bc = 0; bc < B * C; ++bc) coefs(bc, Av[bc], Kv[bc]);
    at::parallel_for(0, B * P, 16, [&](int64_t begin, int64_t end) {
      for (int64_t bp = begin; bp < end; ++bp) {
        const int64_t b = bp / P;
        const T* __restrict__ A = Av.data() + b * C;
        const T* __restrict__ K = Kv.data() + b * C;
        const T* __restrict__ Bc = Bz.data();
        const T* __restrict__ q = qp + bp * C;
        const T* __restrict__ zr = zp + bp * C;
        T* __restrict__ o = dzp + bp * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = A[c] * q[c] + Bc[c] * (zr[c] - mp[c]) + K[c];
      }
    });
    return;
  }
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t c = bc % C;
      T A, K;
      coefs(bc, A, K);
      const T Bc = Bz[c], mu = mp[c];
      const T* __restrict__ q = qp + bc * P;
      const T* __restrict__ zr = zp + bc * P;
      T* __restrict__ o = dzp + bc * P;
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) o[p] = A * q[p] + Bc * (zr[p] - mu) + K;
    }
  });
}

// Returns [dz (empty unless need_dz), gz (the residual's gradient), d channel params ×4, dweight,
// dbias] (an absent one empty). saved: gate_bn_forward's [c, pooled, hidden, mean, invstd, zsum].
std::vector<Tensor> gate_bn_backward(const Tensor& grad, const Tensor& z, const Tensor& out,
                                     at::TensorList ch_, int64_t kind,
                                     const c10::optional<Tensor>& weight,
                                     const c10::optional<Tensor>& bias, at::TensorList saved,
                                     bool need_dz) {
  check_full(z, "x");
  check_grad(grad, z);
  TORCH_CHECK(saved.size() == 6, "attnlab_fast: gate_bn_backward needs the 6 saved tensors");
  const auto chv = params_of(z, ch_, "channel");
  const at::TensorList ch(chv);
  const int64_t B = z.size(0), C = z.size(1), P = z.size(2) * z.size(3), N = B * P;
  const Tensor &cw = saved[0], &pooled = saved[1], &h = saved[2], &mean = saved[3],
               &invstd = saved[4], &zsum = saved[5];
  Tensor gz = masked_like(grad, out);
  std::vector<Tensor> grads(8);
  for (auto& t : grads) t = at::empty({0}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "gate_bn_backward", [&] {
    gate_bn_backward_t<scalar_t>(grad, z, out, ch, kind, weight, bias, cw, pooled, h, mean, invstd,
                                 zsum, need_dz, gz, grads);
  });
  grads[1] = gz;
  return grads;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// gate_train: gate_forward with its backward registered in C++ (an autograd Function), so that a
// training step's gate is one op each way with no Python in between (in a network a gate's
// Python runs with caches a convolution has just flushed, at ~10× its warm cost).
// Backward: gate_backward. Like a Python once_differentiable Function, its gradients cannot be
// differentiated again: with create_graph they carry a node that raises if they are.

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// create_graph: what a fused backward's gradients depend on is not recorded, so differentiating
// them again must fail loudly rather than give zeros (as Python's once_differentiable does).
void guard_double_backward(const variable_list& grad_outputs, variable_list& out) {
  if (!torch::autograd::GradMode::is_enabled()) return;
  variable_list defined;
  std::vector<size_t> where;
  for (size_t i = 0; i < out.size(); ++i)
    if (out[i].defined()) defined.push_back(out[i]), where.push_back(i);
  auto wrapped = torch::autograd::wrap_outputs(
      grad_outputs, std::move(defined), [&](torch::autograd::edge_list&& next) {
        return c10::intrusive_ptr<torch::autograd::Node>(
            c10::make_intrusive<torch::autograd::Error>(
                "attnlab: the fused gate's backward cannot be differentiated again (double "
                "backward); run the module on the reference path for that "
                "(attnlab.layers.fused.backend(\"reference\"))",
                std::move(next)));
      });
  for (size_t j = 0; j < where.size(); ++j) out[where[j]] = wrapped[j];
}

// The gradients of gate_train's arguments from gate_backward_impl's (got), one entry per
// argument, the tensor lists expanded (as Function::apply counts them): x, channel…, kind,
// use_avg, use_max, spatial…, max_first, bn, running_mean, running_var, momentum, eps, residual.
variable_list gate_arg_grads(const std::vector<Tensor>& got, int64_t nch, int64_t nsp, bool need_dx,
                             const Tensor& dres) {
  auto grad_or_none = [](const Tensor& t) { return t.numel() > 0 ? t : Tensor(); };
  variable_list out;
  out.push_back(need_dx ? got[0] : Tensor());
  for (int64_t i = 0; i < nch; ++i) out.push_back(i < 4 ? grad_or_none(got[1 + i]) : Tensor());
  out.insert(out.end(), 3, Tensor());
  for (int64_t i = 0; i < nsp; ++i) out.push_back(i < 4 ? grad_or_none(got[5 + i]) : Tensor());
  out.insert(out.end(), 6, Tensor());
  out.push_back(dres);
  return out;
}

// A gate's training call saved for its backward: the tensors kept (head, the channel and
// spatial parameters, then tail), the small tensors gate_forward saved (outs after the output)
// and cfg, whose entries 5 and 6 are the parameter lists' lengths.
void save_gate_call(AutogradContext* ctx, std::vector<Tensor> head, at::TensorList ch,
                    at::TensorList sp, const std::vector<Tensor>& tail,
                    const std::vector<Tensor>& outs, std::vector<int64_t> cfg) {
  head.insert(head.end(), ch.begin(), ch.end());
  head.insert(head.end(), sp.begin(), sp.end());
  head.insert(head.end(), tail.begin(), tail.end());
  ctx->save_for_backward(head);
  ctx->saved_data["small"] = std::vector<Tensor>(outs.begin() + 1, outs.end());
  ctx->saved_data["cfg"] = std::move(cfg);
}

struct SavedGateCall {
  std::vector<Tensor> kept, small, ch, sp;  // kept: all of them, head first
  std::vector<int64_t> cfg;
  int64_t nch, nsp;
};

// save_gate_call's, with head tensors before the parameters.
SavedGateCall load_gate_call(AutogradContext* ctx, int64_t head) {
  SavedGateCall g;
  g.kept = ctx->get_saved_variables();
  g.cfg = ctx->saved_data["cfg"].toIntVector();
  g.small = ctx->saved_data["small"].toTensorVector();
  g.nch = g.cfg[5], g.nsp = g.cfg[6];
  g.ch.assign(g.kept.begin() + head, g.kept.begin() + head + g.nch);
  g.sp.assign(g.kept.begin() + head + g.nch, g.kept.begin() + head + g.nch + g.nsp);
  return g;
}

struct LayerGateFn : public torch::autograd::Function<LayerGateFn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, at::TensorList ch, int64_t kind,
                        bool use_avg, bool use_max, at::TensorList sp, bool max_first, int64_t bn,
                        const Tensor& running_mean, const Tensor& running_var, double momentum,
                        double eps, const c10::optional<Tensor>& residual) {
    auto outs = gate_forward(x, ch, kind, use_avg, use_max, sp, max_first, bn, running_mean,
                             running_var, momentum, eps, true, residual, {}, 1e-5, true);
    const bool res = residual.has_value() && residual->defined();
    // With a residual the output is saved for the ReLU's backward: it is the next block's
    // input, kept alive by that block's own backward anyway.
    save_gate_call(
        ctx, {x}, ch, sp, res ? std::vector<Tensor>{outs[0]} : std::vector<Tensor>{}, outs,
        {kind, use_avg, use_max, max_first, bn, int64_t(ch.size()), int64_t(sp.size()), res});
    return outs[0];
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const SavedGateCall s = load_gate_call(ctx, 1);
    const std::vector<Tensor>&kept = s.kept, &small = s.small, &ch = s.ch, &sp = s.sp;
    const std::vector<int64_t>& cfg = s.cfg;
    const int64_t nch = s.nch, nsp = s.nsp;
    const Tensor& x = kept[0];
    const bool res = cfg[7] != 0;
    const bool need_dx = ctx->needs_input_grad(0);
    // the variables: x, channel…, spatial…, running_mean, running_var, residual
    const bool need_dres = res && ctx->needs_input_grad(3 + nch + nsp);
    Tensor grad = grad_outputs[0].contiguous(channels_last(x) ? at::MemoryFormat::ChannelsLast
                                                              : at::MemoryFormat::Contiguous);
    std::vector<Tensor> got;
    Tensor gz;
    {
      at::AutoDispatchBelowADInplaceOrView below;  // the kernels, not their autograd
      // relu((x·cw)·sw + r): the masked gradient is the residual's, and the gate's output's
      got = gate_backward_impl(grad, x, ch, cfg[0], cfg[1], cfg[2], sp, cfg[3], cfg[4], small,
                               need_dx, res ? &kept[1 + nch + nsp] : nullptr, &gz);
    }
    variable_list out = gate_arg_grads(got, nch, nsp, need_dx, need_dres ? gz : Tensor());
    guard_double_backward(grad_outputs, out);
    return out;
  }
};

// gate_bn_train: gate_bn_forward with gate_bn_backward as its autograd node.
struct GateBnFn : public torch::autograd::Function<GateBnFn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& z, at::TensorList ch, int64_t kind,
                        const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
                        const Tensor& running_mean, const Tensor& running_var, double momentum,
                        double eps, const Tensor& residual) {
    auto outs = gate_bn_forward(z, ch, kind, weight, bias, running_mean, running_var, momentum, eps,
                                residual);
    const bool has_w = weight.has_value() && weight->defined();
    const bool has_b = bias.has_value() && bias->defined();
    std::vector<Tensor> keep{z, outs[0]};
    keep.insert(keep.end(), ch.begin(), ch.end());
    if (has_w) keep.push_back(*weight);
    if (has_b) keep.push_back(*bias);
    ctx->save_for_backward(keep);
    ctx->saved_data["small"] = std::vector<Tensor>(outs.begin() + 1, outs.end());
    ctx->saved_data["cfg"] = std::vector<int64_t>{kind, int64_t(ch.size()), has_w, has_b};
    return outs[0];
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto kept = ctx->get_saved_variables();
    const auto cfg = ctx->saved_data["cfg"].toIntVector();
    const auto small = ctx->saved_data["small"].toTensorVector();
    const int64_t nch = cfg[1];
    const bool has_w = cfg[2] != 0, has_b = cfg[3] != 0;
    const std::vector<Tensor> ch(kept.begin() + 2, kept.begin() + 2 + nch);
    c10::optional<Tensor> w, b;
    if (has_w) w = kept[2 + nch];
    if (has_b) b = kept[2 + nch + int64_t(has_w)];
    Tensor grad = grad_outputs[0].contiguous(channels_last(kept[0]) ? at::MemoryFormat::ChannelsLast
                                                                    : at::MemoryFormat::Contiguous);
    std::vector<Tensor> got;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      got = gate_bn_backward(grad, kept[0], kept[1], ch, cfg[0], w, b, small,
                             ctx->needs_input_grad(0));
    }
    auto grad_or_none = [](const Tensor& t) { return t.numel() > 0 ? t : Tensor(); };
    // z, channel…, kind, weight, bias, running_mean, running_var, momentum, eps, residual
    variable_list out;
    out.push_back(ctx->needs_input_grad(0) ? got[0] : Tensor());
    for (int64_t i = 0; i < nch; ++i) out.push_back(i < 4 ? grad_or_none(got[2 + i]) : Tensor());
    out.push_back(Tensor());
    out.push_back(has_w ? got[6] : Tensor());
    out.push_back(has_b ? got[7] : Tensor());
    out.insert(out.end(), 4, Tensor());
    // needs_input_grad counts the tensors given: an absent weight or bias is none
    out.push_back(ctx->needs_input_grad(nch + 3 + int64_t(has_w) + int64_t(has_b)) ? got[1]
                                                                                   : Tensor());
    guard_double_backward(grad_outputs, out);
    return out;
  }
};

// gate_norm_train: gate_forward with a training-mode BatchNorm2d before the gate (TrainNorm; CBAM
// and the gates gate_bn_train does not take), gate_backward_impl as its autograd node.
TrainNorm train_norm_of(const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
                        const Tensor& running_mean, const Tensor& running_var, double momentum,
                        double eps, const Tensor& z) {
  check_bn_vector(weight, z, "weight");
  check_bn_vector(bias, z, "bias");
  TrainNorm tn;
  if (weight.has_value() && weight->defined() && weight->numel() > 0) tn.weight = *weight;
  if (bias.has_value() && bias->defined() && bias->numel() > 0) tn.bias = *bias;
  if (running_mean.numel() > 0) {
    check_bn_vector(running_mean, z, "running_mean");
    check_bn_vector(running_var, z, "running_var");
    tn.running_mean = running_mean, tn.running_var = running_var;
  }
  tn.momentum = momentum, tn.eps = eps;
  return tn;
}

struct GateNormFn : public torch::autograd::Function<GateNormFn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& z, at::TensorList ch, int64_t kind,
                        bool use_avg, bool use_max, at::TensorList sp, bool max_first, int64_t bn,
                        const Tensor& running_mean, const Tensor& running_var, double momentum,
                        double eps, const Tensor& residual, const c10::optional<Tensor>& weight,
                        const c10::optional<Tensor>& bias, const Tensor& norm_mean,
                        const Tensor& norm_var, double norm_momentum, double norm_eps) {
    const TrainNorm tn =
        train_norm_of(weight, bias, norm_mean, norm_var, norm_momentum, norm_eps, z);
    TORCH_CHECK(residual.defined(), "attnlab_fast: gate_norm_train needs the residual");
    auto outs = gate_forward(z, ch, kind, use_avg, use_max, sp, max_first, bn, running_mean,
                             running_var, momentum, eps, true, residual, {}, 1e-5, true, &tn);
    const bool has_w = tn.weight.defined(), has_b = tn.bias.defined();
    std::vector<Tensor> tail;
    if (has_w) tail.push_back(tn.weight);
    if (has_b) tail.push_back(tn.bias);
    save_gate_call(ctx, {z, outs[0]}, ch, sp, tail, outs,
                   {kind, use_avg, use_max, max_first, bn, int64_t(ch.size()), int64_t(sp.size()),
                    has_w, has_b});
    return outs[0];
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const SavedGateCall s = load_gate_call(ctx, 2);
    const std::vector<Tensor>&kept = s.kept, &small = s.small, &ch = s.ch, &sp = s.sp;
    const std::vector<int64_t>& cfg = s.cfg;
    const int64_t nch = s.nch, nsp = s.nsp;
    const bool has_w = cfg[7] != 0, has_b = cfg[8] != 0;
    const Tensor &z = kept[0], &out = kept[1];
    TrainNorm tn;
    if (has_w) tn.weight = kept[2 + nch + nsp];
    if (has_b) tn.bias = kept[2 + nch + nsp + int64_t(has_w)];
    // the tensors given: z, channel…, spatial…, running_mean, running_var, residual, weight
    // and bias where given, norm_mean, norm_var
    const bool need_dz = ctx->needs_input_grad(0);
    const bool need_dres = ctx->needs_input_grad(3 + nch + nsp);
    Tensor grad = grad_outputs[0].contiguous(channels_last(z) ? at::MemoryFormat::ChannelsLast
                                                              : at::MemoryFormat::Contiguous);
    std::vector<Tensor> got;
    Tensor gz;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      got = gate_backward_impl(grad, z, ch, cfg[0], cfg[1], cfg[2], sp, cfg[3], cfg[4], small,
                               need_dz, &out, &gz, &tn);
    }
    // gate_train's arguments, then weight, bias, norm_mean, norm_var, norm_momentum, norm_eps
    variable_list res = gate_arg_grads(got, nch, nsp, need_dz, need_dres ? gz : Tensor());
    res.push_back(has_w ? got[9] : Tensor());
    res.push_back(has_b ? got[10] : Tensor());
    res.insert(res.end(), 4, Tensor());
    guard_double_backward(grad_outputs, res);
    return res;
  }
};

Tensor gate_norm_train_autograd(const Tensor& z, at::TensorList ch, int64_t kind, bool use_avg,
                                bool use_max, at::TensorList sp, bool max_first, int64_t bn,
                                const Tensor& running_mean, const Tensor& running_var,
                                double momentum, double eps, const Tensor& residual,
                                const c10::optional<Tensor>& weight,
                                const c10::optional<Tensor>& bias, const Tensor& norm_mean,
                                const Tensor& norm_var, double norm_momentum, double norm_eps) {
  return GateNormFn::apply(z, ch, kind, use_avg, use_max, sp, max_first, bn, running_mean,
                           running_var, momentum, eps, residual, weight, bias, norm_mean, norm_var,
                           norm_momentum, norm_eps);
}

Tensor gate_norm_train_cpu(const Tensor& z, at::TensorList ch, int64_t kind, bool use_avg,
                           bool use_max, at::TensorList sp, bool max_first, int64_t bn,
                           const Tensor& running_mean, const Tensor& running_var, double momentum,
                           double eps, const Tensor& residual, const c10::optional<Tensor>& weight,
                           const c10::optional<Tensor>& bias, const Tensor& norm_mean,
                           const Tensor& norm_var, double norm_momentum, double norm_eps) {
  const TrainNorm tn = train_norm_of(weight, bias, norm_mean, norm_var, norm_momentum, norm_eps, z);
  TORCH_CHECK(residual.defined(), "attnlab_fast: gate_norm_train needs the residual");
  return gate_forward(z, ch, kind, use_avg, use_max, sp, max_first, bn, running_mean, running_var,
                      momentum, eps, false, residual, {}, 1e-5, true, &tn)[0];
}

Tensor gate_bn_train_autograd(const Tensor& z, at::TensorList ch, int64_t kind,
                              const c10::optional<Tensor>& weight,
                              const c10::optional<Tensor>& bias, const Tensor& running_mean,
                              const Tensor& running_var, double momentum, double eps,
                              const Tensor& residual) {
  return GateBnFn::apply(z, ch, kind, weight, bias, running_mean, running_var, momentum, eps,
                         residual);
}

Tensor gate_bn_train_cpu(const Tensor& z, at::TensorList ch, int64_t kind,
                         const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
                         const Tensor& running_mean, const Tensor& running_var, double momentum,
                         double eps, const Tensor& residual) {
  return gate_bn_forward(z, ch, kind, weight, bias, running_mean, running_var, momentum, eps,
                         residual)[0];
}

Tensor gate_train_autograd(const Tensor& x, at::TensorList ch, int64_t kind, bool use_avg,
                           bool use_max, at::TensorList sp, bool max_first, int64_t bn,
                           const Tensor& running_mean, const Tensor& running_var, double momentum,
                           double eps, const c10::optional<Tensor>& residual) {
  return LayerGateFn::apply(x, ch, kind, use_avg, use_max, sp, max_first, bn, running_mean,
                            running_var, momentum, eps, residual);
}

std::vector<Tensor> gate_forward_op(const Tensor& x, at::TensorList ch, int64_t kind, bool use_avg,
                                    bool use_max, at::TensorList sp, bool max_first, int64_t bn,
                                    const Tensor& running_mean, const Tensor& running_var,
                                    double momentum, double eps, bool save,
                                    const c10::optional<Tensor>& residual,
                                    const c10::optional<Tensor>& norm_mean,
                                    const c10::optional<Tensor>& norm_var,
                                    const c10::optional<Tensor>& norm_weight,
                                    const c10::optional<Tensor>& norm_bias, double norm_eps) {
  std::vector<Tensor> norm;
  if (norm_mean.has_value() || norm_var.has_value()) {
    TORCH_CHECK(norm_mean.has_value() && norm_var.has_value(),
                "attnlab_fast: norm needs both norm_mean and norm_var");
    for (const auto* t : {&norm_mean, &norm_var, &norm_weight, &norm_bias})
      norm.push_back(t->has_value() ? **t : Tensor());
  }
  return gate_forward(x, ch, kind, use_avg, use_max, sp, max_first, bn, running_mean, running_var,
                      momentum, eps, save, residual, norm, norm_eps);
}

Tensor gate_train_cpu(const Tensor& x, at::TensorList ch, int64_t kind, bool use_avg,
                      bool use_max, at::TensorList sp, bool max_first, int64_t bn,
                      const Tensor& running_mean, const Tensor& running_var, double momentum,
                      double eps, const c10::optional<Tensor>& residual) {
  return gate_forward(x, ch, kind, use_avg, use_max, sp, max_first, bn, running_mean, running_var,
                      momentum, eps, false, residual)[0];
}

// Whether linear_exact calls sgemm_ for float (the tests check that it does with PyTorch's MKL).
bool linear_exact_blas() { return exact_sgemm() != nullptr; }

// linear_exact as an operator (the tests compare it with torch.addmm bit for bit).
Tensor linear_exact_op(const Tensor& x, const Tensor& w, const c10::optional<Tensor>& b,
                       bool relu) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "attnlab_fast: linear_exact needs x (M×K) and w (N×K)");
  TORCH_CHECK(x.dtype() == w.dtype() && x.is_cpu() && w.is_cpu() && x.is_floating_point(),
              "attnlab_fast: linear_exact needs CPU floating tensors of one dtype");
  const bool has_b = b.has_value() && b->defined();
  TORCH_CHECK(!has_b || (b->dim() == 1 && b->size(0) == w.size(0) && b->dtype() == x.dtype()),
              "attnlab_fast: linear_exact's bias must have N entries of x's dtype");
  const Tensor bc = has_b ? b->contiguous() : Tensor();
  return linear_exact(x.contiguous(), w.contiguous(), has_b ? &bc : nullptr, relu);
}

}  // namespace

TORCH_LIBRARY(attnlab_fast, m) {
  m.def("channel_pool(Tensor x, bool with_max) -> (Tensor, Tensor, Tensor)");
  m.def("spatial_pool(Tensor x, Tensor cw) -> (Tensor, Tensor, Tensor)");
  m.def("gate_apply(Tensor x, Tensor cw, Tensor? sw) -> Tensor");
  m.def("gate_grad_spatial(Tensor g, Tensor x, Tensor cw) -> Tensor");
  m.def(
      "gate_grad_channel(Tensor g, Tensor x, Tensor cw, Tensor? sw, Tensor? sa, Tensor? se, "
      "Tensor? smx) -> Tensor");
  m.def(
      "gate_grad_input(Tensor g, Tensor x, Tensor cw, Tensor? sw, Tensor? sa, Tensor? se, "
      "Tensor? smx, Tensor ca, Tensor ce, Tensor cmx) -> Tensor");
  m.def(
      "gate_forward(Tensor x, Tensor[] channel, int kind, bool use_avg, bool use_max, "
      "Tensor[] spatial, bool max_first, int bn, Tensor(a!) running_mean, "
      "Tensor(b!) running_var, float momentum, float eps, bool save, Tensor? residual=None, "
      "Tensor? norm_mean=None, Tensor? norm_var=None, Tensor? norm_weight=None, "
      "Tensor? norm_bias=None, float norm_eps=1e-05) -> Tensor[]");
  m.def(
      "gate_backward(Tensor grad, Tensor x, Tensor[] channel, int kind, bool use_avg, "
      "bool use_max, Tensor[] spatial, bool max_first, int bn, Tensor[] saved, bool need_dx) "
      "-> Tensor[]");
  m.def(
      "gate_train(Tensor x, Tensor[] channel, int kind, bool use_avg, bool use_max, "
      "Tensor[] spatial, bool max_first, int bn, Tensor(a!) running_mean, "
      "Tensor(b!) running_var, float momentum, float eps, Tensor? residual=None) -> Tensor");
  m.def(
      "gate_bn_train(Tensor x, Tensor[] channel, int kind, Tensor? weight, Tensor? bias, "
      "Tensor running_mean, Tensor running_var, float momentum, float eps, Tensor residual) -> "
      "Tensor");
  m.def(
      "gate_norm_train(Tensor x, Tensor[] channel, int kind, bool use_avg, bool use_max, "
      "Tensor[] spatial, bool max_first, int bn, Tensor(a!) running_mean, "
      "Tensor(b!) running_var, float momentum, float eps, Tensor residual, Tensor? weight, "
      "Tensor? bias, Tensor(c!) norm_mean, Tensor(d!) norm_var, float norm_momentum, "
      "float norm_eps) -> Tensor");
  m.def("linear_exact(Tensor x, Tensor w, Tensor? b, bool relu) -> Tensor");
  m.def("linear_exact_blas() -> bool");
  m.def("cache_bytes() -> int");
  m.def("empty_cache() -> ()");
  m.def("coord_pool(Tensor x) -> (Tensor, Tensor)");
  m.def("coord_apply(Tensor x, Tensor ah, Tensor aw) -> Tensor");
  m.def("coord_grad_gates(Tensor g, Tensor x, Tensor ah, Tensor aw) -> (Tensor, Tensor)");
  m.def("coord_grad_input(Tensor g, Tensor ah, Tensor aw, Tensor dh, Tensor dw) -> Tensor");
}

TORCH_LIBRARY_IMPL(attnlab_fast, CompositeExplicitAutograd, m) {
  m.impl("cache_bytes", &pool_cached);
  m.impl("linear_exact_blas", &linear_exact_blas);
  m.impl("empty_cache", &pool_empty);
}

TORCH_LIBRARY_IMPL(attnlab_fast, CPU, m) {
  m.impl("channel_pool", &channel_pool);
  m.impl("spatial_pool", &spatial_pool);
  m.impl("gate_apply", &gate_apply);
  m.impl("gate_grad_spatial", &gate_grad_spatial);
  m.impl("gate_grad_channel", &gate_grad_channel);
  m.impl("gate_grad_input", &gate_grad_input);
  m.impl("gate_forward", &gate_forward_op);
  m.impl("gate_backward", &gate_backward);
  m.impl("gate_train", &gate_train_cpu);
  m.impl("gate_bn_train", &gate_bn_train_cpu);
  m.impl("gate_norm_train", &gate_norm_train_cpu);
  m.impl("linear_exact", &linear_exact_op);
  m.impl("coord_pool", &coord_pool);
  m.impl("coord_apply", &coord_apply);
  m.impl("coord_grad_gates", &coord_grad_gates);
  m.impl("coord_grad_input", &coord_grad_input);
}

TORCH_LIBRARY_IMPL(attnlab_fast, Autograd, m) {
  m.impl("gate_train", &gate_train_autograd);
  m.impl("gate_bn_train", &gate_bn_train_autograd);
  m.impl("gate_norm_train", &gate_norm_train_autograd);
}

#include "entry.h"  // the Python entry for the blocks' inference call (a Python module)
