// Few-row kernels for the late stages: reductions along short rows (P = 25, 100, 400
// positions per channel; short_rows_mean_max) and the inference MLP's products of a few pooled
// rows with a weight matrix (rows_dot).
//
// A row of 25 floats is three vectors and one left over; reduced one row at a time, the
// horizontal sum, the scalar tail and the per-row bookkeeping cost more than the loads
// (measured, one thread: ~65 µs for 8192 rows of 25, a fifth of a copy's speed). Here 8 rows
// go at once: each row is summed into one vector (the tail as a last vector that overlaps the
// one before, its repeated lanes masked off for the sum; a max may see an entry twice), and
// the 8 vectors are reduced together by a transposing tree (three rounds of shuffles), 8
// results in one store (~19 µs for the same rows). float only, with GCC's vector extensions; elsewhere the callers
// keep their one-row loops (short_rows_vectorised is false).
//
// Sums accumulate in float, 8 lanes, at most 32 entries per lane (P < 256), then the tree:
// within 1e-6 relative of a double sum for such rows.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

#if defined(__GNUC__) && !defined(__clang__)
constexpr bool short_rows_vectorised = true;
typedef float f8 __attribute__((vector_size(32)));
typedef int i8 __attribute__((vector_size(32)));

// 16 floats: the register kernels in gates.cpp.
typedef float f16 __attribute__((vector_size(64)));
typedef int i16 __attribute__((vector_size(64)));

// A vector of V's width from p (unaligned), and back.
template <typename V>
inline V load_vec(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V>
inline void store_vec(float* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// e^t, 16 at a time: t = n·ln2 + r with |r| ≤ ln2/2 (ln2 in two parts, so that n·ln2's first
// part is exact), e^r by its Taylor polynomial to r^7 (truncated: < 1e-8 relative), times 2^n
// put in the exponent's bits. t is first clamped to [−87, 88], where 2^n stays a normal number;
// NaN compares false and stays NaN.
inline f16 exp16(f16 t) {
  const f16 zero = {};
  t = t > zero + 88.0f ? zero + 88.0f : t;
  t = t < zero - 87.0f ? zero - 87.0f : t;
  const float round = 12582912.0f;  // 1.5·2^23: adding and subtracting it rounds to an integer
  const f16 n = (t * 1.44269504f + round) - round;
  const f16 r = (t - n * 0.693145752f) - n * 1.42860677e-6f;
  f16 p = zero + 1.0f / 5040;
  for (float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = p * r + c;
  const i16 bits = (__builtin_convertvector(n, i16) + 127) << 23;
  f16 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// v = σ(v) = 1 / (1 + e^−v) in place, within 2 eps of σ relative (tests/layers/test_fused.py
// checks it against a double σ): the operator's inference only. Its autograd node keeps ATen's
// sigmoid, whose values the reference path has: a last-bit difference in a gate can move the
// backward's max-pool ties and a spatial BatchNorm over few values (see mlp_forward in
// gates.cpp). For x ≥ 87 it gives 1 (as σ rounds to from x ≈ 17 on); for x ≤ −88 σ(−88) ≈
// 6.05e-39, where σ itself is at most that.
inline void sigmoid_inplace(float* v, int64_t n) {
  const f16 zero = {};
  auto sigmoid16 = [&](f16 x) { return (zero + 1.0f) / (exp16(zero - x) + 1.0f); };
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) store_vec(v + i, sigmoid16(load_vec<f16>(v + i)));
  if (i < n) {  // the last n − i through a buffer of 16
    float t[16] = {};
    std::memcpy(t, v + i, sizeof(float) * (n - i));
    store_vec(t, sigmoid16(load_vec<f16>(t)));
    std::memcpy(v + i, t, sizeof(float) * (n - i));
  }
}

// As the scalar loops: the running max keeps m unless v is greater (NaN never replaces it).
inline f8 max8(f8 v, f8 m) { return v > m ? v : m; }

// After the tree, lane j holds the reduction of rows j: each round pairs lanes of two inputs.
template <bool Max>
inline f8 pair_round(f8 a, f8 b, i8 lo, i8 hi) {
  const f8 l = __builtin_shuffle(a, b, lo), h = __builtin_shuffle(a, b, hi);
  return Max ? max8(l, h) : l + h;
}

template <bool Max>
inline f8 tree8(const f8 (&v)[8]) {
  const i8 l1 = {0, 8, 2, 10, 4, 12, 6, 14}, h1 = {1, 9, 3, 11, 5, 13, 7, 15};
  const i8 l2 = {0, 1, 8, 9, 4, 5, 12, 13}, h2 = {2, 3, 10, 11, 6, 7, 14, 15};
  const i8 l3 = {0, 1, 2, 3, 8, 9, 10, 11}, h3 = {4, 5, 6, 7, 12, 13, 14, 15};
  f8 r1[4], r2[2];
  for (int j = 0; j < 4; ++j) r1[j] = pair_round<Max>(v[2 * j], v[2 * j + 1], l1, h1);
  for (int j = 0; j < 2; ++j) r2[j] = pair_round<Max>(r1[2 * j], r1[2 * j + 1], l2, h2);
  return pair_round<Max>(r2[0], r2[1], l3, h3);
}

// For a row's last vector, loaded at its last 8 entries: the lanes (−1) not already in the
// row's last full vector, rem = P mod 8 of them.
inline i8 tail_lanes(int64_t rem) {
  i8 tail;
  for (int l = 0; l < 8; ++l) tail[l] = l >= 8 - rem ? -1 : 0;
  return tail;
}

// Rows [begin, end) of x (rows P apart, 8 ≤ P < 256): mean[i] = Σ row / P and, with Max,
// mx[i] = max of row. Handles whole groups of 8 rows; returns the first row not done.
template <bool Max>
inline int64_t short_rows_mean_max(const float* x, int64_t P, int64_t begin, int64_t end,
                                   float* mean, float* mx) {
  const int64_t nv = P / 8, rem = P - 8 * nv;
  const i8 tail = tail_lanes(rem);
  const f8 zero = {0, 0, 0, 0, 0, 0, 0, 0};
  const float inv = 1.0f / float(P);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    f8 s[8], m[8];
    for (int j = 0; j < 8; ++j) {
      const float* row = x + (i + j) * P;
      f8 a = load_vec<f8>(row), sj = a, mj = a;
      for (int64_t v = 1; v < nv; ++v) {
        a = load_vec<f8>(row + 8 * v);
        sj += a;
        if (Max) mj = max8(a, mj);
      }
      if (rem) {
        a = load_vec<f8>(row + P - 8);
        sj += tail ? a : zero;
        if (Max) mj = max8(a, mj);
      }
      s[j] = sj;
      m[j] = mj;
    }
    store_vec(mean + i, tree8<false>(s) * inv);
    if (Max) store_vec(mx + i, tree8<true>(m));
  }
  return i;
}

// Rows [begin, end) of x (rows P apart, 8 ≤ P < 256), 8 at a time as short_rows_mean_max: the
// shifted sums s1[i] = Σ (x − h), s2[i] = Σ (x − h)² (h = shift[i % C], a value of row i's
// channel), and hi[i], lo[i] the row's largest and smallest entries. Returns the first row not
// done.
inline int64_t short_rows_moments(const float* x, int64_t P, int64_t begin, int64_t end,
                                  const float* shift, int64_t C, double* s1, double* s2, float* hi,
                                  float* lo) {
  const int64_t nv = P / 8, rem = P - 8 * nv;
  const i8 tail = tail_lanes(rem);
  const f8 zero = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    f8 a1[8], a2[8], mx[8], mn[8];
    for (int j = 0; j < 8; ++j) {
      const float* row = x + (i + j) * P;
      const float h = shift[(i + j) % C];
      f8 v = load_vec<f8>(row), d = v - h, sa = d, sb = d * d, top = v, bot = zero - v;
      for (int64_t k = 1; k < nv; ++k) {
        v = load_vec<f8>(row + 8 * k), d = v - h;
        sa += d, sb += d * d;
        top = max8(v, top), bot = max8(zero - v, bot);
      }
      if (rem) {
        v = load_vec<f8>(row + P - 8), d = tail ? v - h : zero;
        sa += d, sb += d * d;
        top = max8(v, top), bot = max8(zero - v, bot);
      }
      a1[j] = sa, a2[j] = sb, mx[j] = top, mn[j] = bot;
    }
    const f8 t1 = tree8<false>(a1), t2 = tree8<false>(a2), th = tree8<true>(mx);
    const f8 tl = zero - tree8<true>(mn);  // min = −max(−x)
    for (int j = 0; j < 8; ++j)
      s1[i + j] = t1[j], s2[i + j] = t2[j], hi[i + j] = th[j], lo[i + j] = tl[j];
  }
  return i;
}

// Rows [begin, end) of the dot products d[i] = Σ_p g·x, rows P apart (8 ≤ P < 256), 8 rows at a
// time as short_rows_mean_max (one row at a time, a row of 25 cost ~50 cycles: at 8×2048×5×5
// most of an SE block's channel-gradient pass); with Masked, g is first masked by a ReLU's
// output o (rows as g), g·(o > 0), and written to z (the tail vector rewrites lanes with the
// values they have). Returns the first row not done.
template <bool Masked>
inline int64_t short_rows_dot(const float* g, const float* x, const float* o, float* z,
                              int64_t P, int64_t begin, int64_t end, float* d) {
  const int64_t nv = P / 8, rem = P - 8 * nv;
  const i8 tail = tail_lanes(rem);
  const f8 zero = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    f8 s[8];
    for (int j = 0; j < 8; ++j) {
      const int64_t off = (i + j) * P;
      auto term = [&](int64_t p) {
        f8 gv = load_vec<f8>(g + off + p);
        if constexpr (Masked) {
          gv = load_vec<f8>(o + off + p) > zero ? gv : zero;
          store_vec(z + off + p, gv);
        }
        return gv * load_vec<f8>(x + off + p);
      };
      f8 sj = zero;
      for (int64_t v = 0; v < nv; ++v) sj += term(8 * v);
      if (rem) {
        const f8 t = term(P - 8);
        sj += tail ? t : zero;
      }
      s[j] = sj;
    }
    store_vec(d + i, tree8<false>(s));
  }
  return i;
}

// rows_dot's inner block: MB rows of a (K apart) against two rows of b, w0 and w1, over the
// nv whole vectors of K; s0[j], s1[j]: the sums for row j of a.
template <int MB>
inline void rows_dot_block(const float* a, int64_t K, int64_t nv, const float* w0,
                           const float* w1, f8& s0, f8& s1) {
  f8 acc0[8], acc1[8];
  for (int j = 0; j < 8; ++j) acc0[j] = acc1[j] = f8{0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t v = 0; v < nv; ++v) {
    const f8 x0 = load_vec<f8>(w0 + 8 * v), x1 = load_vec<f8>(w1 + 8 * v);
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j) {
      const f8 av = load_vec<f8>(a + j * K + 8 * v);
      acc0[j] += av * x0;
      acc1[j] += av * x1;
    }
  }
  s0 = tree8<false>(acc0);
  s1 = tree8<false>(acc1);
}

// out[m·N + n] = Σ_k a[m·K + k] · b[n·K + k] (+ beta · bias[n] with bias; with relu, then
// max(·, 0), NaN staying NaN as clamp_min): a few rows of a (the MLP's descriptors, M = B or
// 2B) against every row of b (a weight, N×K row-major). Each thread streams its share of b's
// rows once, in order, two at a time (a late stage's weight is a megabyte that a network never
// finds in cache; there ATen's two products took 323 µs per call at 8×2048×5×5 against 136 µs
// warm, these 184 µs), each pair against up to
// 8 rows of a (M·K floats, in L1/L2); the 8 sums per row of b come out of one tree. Sums in
// float, K/8 terms per lane.
inline void rows_dot(const float* a, int64_t M, const float* b, int64_t N, int64_t K,
                     const float* bias, float beta, bool relu, float* out) {
  const int64_t nv = K / 8, pairs = (N + 1) / 2;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, M * K));
  at::parallel_for(0, pairs, grain, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t n = 2 * q;
      const bool two = n + 1 < N;
      const float* w0 = b + n * K;
      const float* w1 = two ? w0 + K : w0;
      for (int64_t m0 = 0; m0 < M; m0 += 8) {
        const int64_t mb = std::min<int64_t>(8, M - m0);
        f8 s0, s1;
        const float* am = a + m0 * K;
        switch (mb) {
          case 8: rows_dot_block<8>(am, K, nv, w0, w1, s0, s1); break;
          case 7: rows_dot_block<7>(am, K, nv, w0, w1, s0, s1); break;
          case 6: rows_dot_block<6>(am, K, nv, w0, w1, s0, s1); break;
          case 5: rows_dot_block<5>(am, K, nv, w0, w1, s0, s1); break;
          case 4: rows_dot_block<4>(am, K, nv, w0, w1, s0, s1); break;
          case 3: rows_dot_block<3>(am, K, nv, w0, w1, s0, s1); break;
          case 2: rows_dot_block<2>(am, K, nv, w0, w1, s0, s1); break;
          default: rows_dot_block<1>(am, K, nv, w0, w1, s0, s1); break;
        }
        for (int64_t i = 0; i < (two ? 2 : 1); ++i) {
          const f8& sums = i ? s1 : s0;
          const float* w = i ? w1 : w0;
          const float add = bias ? beta * bias[n + i] : 0.0f;
          for (int64_t j = 0; j < mb; ++j) {
            float t = sums[j];
            for (int64_t k = 8 * nv; k < K; ++k) t += am[j * K + k] * w[k];
            t += add;
            out[(m0 + j) * N + n + i] = relu && t < 0.0f ? 0.0f : t;
          }
        }
      }
    }
  });
}

#else
constexpr bool short_rows_vectorised = false;

inline void sigmoid_inplace(float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) v[i] = 1.0f / (1.0f + std::exp(-v[i]));
}

inline void rows_dot(const float*, int64_t, const float*, int64_t, int64_t, const float*, float,
                     bool, float*) {}

template <bool Max>
inline int64_t short_rows_mean_max(const float*, int64_t, int64_t begin, int64_t, float*,
                                   float*) {
  return begin;
}

template <bool Masked>
inline int64_t short_rows_dot(const float*, const float*, const float*, float*, int64_t,
                              int64_t begin, int64_t, float*) {
  return begin;
}

inline int64_t short_rows_moments(const float*, int64_t, int64_t begin, int64_t, const float*,
                                  int64_t, double*, double*, float*, float*) {
  return begin;
}
#endif

}  // namespace
