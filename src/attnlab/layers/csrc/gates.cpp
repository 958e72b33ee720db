// Fused CPU kernels for the gate modules (SE, ECA, CBAM, Coordinate Attention).
//
// Each kernel reads and writes a full B×C×H×W activation at most once; the small per-channel
// (B×C) and per-position (B×P, P = H·W) tensors in between are computed in PyTorch by the
// module's own layers. Inputs are NCHW-contiguous or channels-last (NHWC); full-size outputs
// take the input's layout. Small tensors are contiguous, B×C or B×P, except that the
// Coordinate Attention kernels take and give their per-row / per-column tensors as B×C×H and
// B×C×W for NCHW and B×H×C and B×W×C for NHWC (the caller transposes).
//
// Max pooling records the max and how many entries reach it:
// (as a float count in the element type); the backward recomputes which entries tie (x == max) and splits the gradient evenly among
// them, as PyTorch's amax does.
//
// Registered as torch operators in the namespace attnlab_fast (see fused.py for the Python side
// and the fake implementations).

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

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

template <typename T>
void channel_pool_kernel(const Tensor& x, Tensor& avg, Tensor& mx, Tensor& cnt, bool with_max) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* __restrict__ xp = x.data_ptr<T>();
  T* ap = avg.data_ptr<T>();
  T* mp = with_max ? mx.data_ptr<T>() : nullptr;
  T* kp = with_max ? cnt.data_ptr<T>() : nullptr;
  if (!channels_last(x)) {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const T* __restrict__ row = xp + bc * P;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t p = 0; p < P; ++p) s += row[p];
        ap[bc] = static_cast<T>(s / P);
        if (!with_max) continue;
        T m = row[0];
#pragma omp simd reduction(max : m)
        for (int64_t p = 0; p < P; ++p) m = row[p] > m ? row[p] : m;
        T k = 0;
#pragma omp simd reduction(+ : k)
        for (int64_t p = 0; p < P; ++p) k += row[p] == m ? T(1) : T(0);
        mp[bc] = m;
        kp[bc] = k;
      }
    });
    return;
  }
  const int64_t nblk = (C + kBlock - 1) / kBlock;
  at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> sv(kBlock);
    std::vector<T> mv(kBlock), kv(kBlock);
    double* __restrict__ s = sv.data();
    T* __restrict__ m = mv.data();
    T* __restrict__ k = kv.data();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nblk, c0 = (i % nblk) * kBlock, n = std::min(kBlock, C - c0);
      const T* base = xp + b * P * C + c0;
      for (int64_t c = 0; c < n; ++c) s[c] = 0, m[c] = base[c], k[c] = 0;
      for (int64_t p = 0; p < P; ++p) {
        const T* __restrict__ r = base + p * C;
        if (with_max) {
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) {
            s[c] += r[c];
            ATTNLAB_MAX_COUNT(r[c], m[c], k[c]);
          }
        } else {
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) s[c] += r[c];
        }
      }
      for (int64_t c = 0; c < n; ++c) {
        ap[b * C + c0 + c] = static_cast<T>(s[c] / P);
        if (with_max) mp[b * C + c0 + c] = m[c], kp[b * C + c0 + c] = k[c];
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> channel_pool(const Tensor& x, bool with_max) {
  check_full(x, "x");
  const auto B = x.size(0), C = x.size(1);
  Tensor avg = at::empty({B, C}, x.options());
  Tensor mx = at::empty({with_max ? B : 0, with_max ? C : 0}, x.options());
  Tensor cnt = at::empty({with_max ? B : 0, with_max ? C : 0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_pool",
                             [&] { channel_pool_kernel<scalar_t>(x, avg, mx, cnt, with_max); });
  return {avg, mx, cnt};
}

// ---------------------------------------------------------------------------------------------
// Spatial pool of y = x·cw over channels: mean[b,p], max[b,p], count[b,p].

template <typename T>
void spatial_pool_kernel(const Tensor& x, const T* cw, Tensor& mean, Tensor& mx, Tensor& cnt) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* __restrict__ xp = x.data_ptr<T>();
  T* sp = mean.data_ptr<T>();
  T* mp = mx.data_ptr<T>();
  T* kp = cnt.data_ptr<T>();
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
        const T* __restrict__ r0 = xp + b * C * P + p0;
#pragma omp simd
        for (int64_t p = 0; p < n; ++p) {
          const T v = r0[p] * w0;
          s[p] = v, m[p] = v, k[p] = 1;
        }
        for (int64_t c = 1; c < C; ++c) {
          const T w = cw[b * C + c];
          const T* __restrict__ r = xp + (b * C + c) * P + p0;
#pragma omp simd
          for (int64_t p = 0; p < n; ++p) {
            const T v = r[p] * w;
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
    for (int64_t bp = begin; bp < end; ++bp) {
      const T* __restrict__ r = xp + bp * C;
      const T* __restrict__ w = cw + (bp / P) * C;
      double s = 0;
      T m = r[0] * w[0], k = 0;
#pragma omp simd reduction(+ : s) reduction(max : m)
      for (int64_t c = 0; c < C; ++c) {
        const T v = r[c] * w[c];
        s += v;
        m = v > m ? v : m;
      }
#pragma omp simd reduction(+ : k)
      for (int64_t c = 0; c < C; ++c) k += r[c] * w[c] == m ? T(1) : T(0);
      sp[bp] = static_cast<T>(s / C);
      mp[bp] = m;
      kp[bp] = k;
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> spatial_pool(const Tensor& x, const Tensor& cw) {
  check_full(x, "x");
  const auto B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  check_small(cw, B, C, "cw");
  Tensor mean = at::empty({B, P}, x.options());
  Tensor mx = at::empty({B, P}, x.options());
  Tensor cnt = at::empty({B, P}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spatial_pool", [&] {
    spatial_pool_kernel<scalar_t>(x, cw.data_ptr<scalar_t>(), mean, mx, cnt);
  });
  return {mean, mx, cnt};
}

// ---------------------------------------------------------------------------------------------
// Gate: out = (x·cw[b,c])·sw[b,p], sw optional.

template <typename T>
void gate_apply_kernel(const Tensor& x, const T* cw, const T* sw, Tensor& out) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* __restrict__ xp = x.data_ptr<T>();
  T* __restrict__ op = out.data_ptr<T>();
  if (!channels_last(x)) {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const T w = cw[bc];
        const T* __restrict__ r = xp + bc * P;
        T* __restrict__ o = op + bc * P;
        if (sw) {
          const T* __restrict__ s = sw + (bc / C) * P;
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) o[p] = (r[p] * w) * s[p];
        } else {
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) o[p] = r[p] * w;
        }
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
      if (sw) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = (r[c] * w[c]) * s;
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = r[c] * w[c];
      }
    }
  });
}

Tensor gate_apply(const Tensor& x, const Tensor& cw, const c10::optional<Tensor>& sw) {
  check_full(x, "x");
  const auto B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  check_small(cw, B, C, "cw");
  check_small(sw, B, P, "sw");
  Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_apply", [&] {
    gate_apply_kernel<scalar_t>(x, cw.data_ptr<scalar_t>(), opt_ptr<scalar_t>(sw), out);
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Backward, pass 1: dsw[b,p] = Σ_c g·(x·cw).

template <typename T>
void gate_grad_spatial_kernel(const Tensor& g, const Tensor& x, const T* cw, Tensor& dsw) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* __restrict__ gp = g.data_ptr<T>();
  const T* __restrict__ xp = x.data_ptr<T>();
  T* dp = dsw.data_ptr<T>();
  if (!channels_last(x)) {
    const int64_t nblk = (P + kBlock - 1) / kBlock;
    at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> av(kBlock);
      double* __restrict__ a = av.data();
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / nblk, p0 = (i % nblk) * kBlock, n = std::min(kBlock, P - p0);
        std::fill(a, a + n, 0.0);
        for (int64_t c = 0; c < C; ++c) {
          const T w = cw[b * C + c];
          const T* __restrict__ r = xp + (b * C + c) * P + p0;
          const T* __restrict__ q = gp + (b * C + c) * P + p0;
#pragma omp simd
          for (int64_t p = 0; p < n; ++p) a[p] += q[p] * (r[p] * w);
        }
        for (int64_t p = 0; p < n; ++p) dp[b * P + p0 + p] = static_cast<T>(a[p]);
      }
    });
    return;
  }
  at::parallel_for(0, B * P, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const T* __restrict__ r = xp + bp * C;
      const T* __restrict__ q = gp + bp * C;
      const T* __restrict__ w = cw + (bp / P) * C;
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < C; ++c) s += q[c] * (r[c] * w[c]);
      dp[bp] = static_cast<T>(s);
    }
  });
}

Tensor gate_grad_spatial(const Tensor& g, const Tensor& x, const Tensor& cw) {
  check_full(x, "x");
  check_grad(g, x);
  check_small(cw, x.size(0), x.size(1), "cw");
  Tensor dsw = at::empty({x.size(0), x.size(2) * x.size(3)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grad_spatial", [&] {
    gate_grad_spatial_kernel<scalar_t>(g, x, cw.data_ptr<scalar_t>(), dsw);
  });
  return dsw;
}

// ---------------------------------------------------------------------------------------------
// The gradient reaching y = x·cw when the spatial stage is present:
//   dy = g·sw + sa[b,p] + (y == smx[b,p] ? se[b,p] : 0)
// with sa = dmean / C and se = dmax / count prepared by the caller; without it dy = g.
//
// Backward, pass 2: dcw[b,c] = Σ_p dy·x.
// Backward, pass 3: dx = dy·cw + ca[b,c] + (x == cmx[b,c] ? ce[b,c] : 0)
// with ca = davg / P and ce = dmax / count of the channel pool (zeros where a pool is absent).

struct Spatial {
  bool on;
  const void* sw;
  const void* sa;
  const void* se;
  const void* smx;
};

template <typename T>
void gate_grad_channel_kernel(const Tensor& g, const Tensor& x, const T* cw, const Spatial& sp,
                              Tensor& dcw) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* __restrict__ gp = g.data_ptr<T>();
  const T* __restrict__ xp = x.data_ptr<T>();
  const T* sw = static_cast<const T*>(sp.sw);
  const T* sa = static_cast<const T*>(sp.sa);
  const T* se = static_cast<const T*>(sp.se);
  const T* smx = static_cast<const T*>(sp.smx);
  T* dp = dcw.data_ptr<T>();
  if (!channels_last(x)) {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / C;
        const T w = cw[bc];
        const T* __restrict__ r = xp + bc * P;
        const T* __restrict__ q = gp + bc * P;
        double s = 0;
        if (sp.on) {
          const T* __restrict__ s1 = sw + b * P;
          const T* __restrict__ s2 = sa + b * P;
          const T* __restrict__ s3 = se + b * P;
          const T* __restrict__ s4 = smx + b * P;
#pragma omp simd reduction(+ : s)
          for (int64_t p = 0; p < P; ++p)
            s += (q[p] * s1[p] + s2[p] + (r[p] * w == s4[p] ? s3[p] : T(0))) * r[p];
        } else {
#pragma omp simd reduction(+ : s)
          for (int64_t p = 0; p < P; ++p) s += q[p] * r[p];
        }
        dp[bc] = static_cast<T>(s);
      }
    });
    return;
  }
  const int64_t nblk = (C + kBlock - 1) / kBlock;
  at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> av(kBlock);
    double* __restrict__ a = av.data();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nblk, c0 = (i % nblk) * kBlock, n = std::min(kBlock, C - c0);
      std::fill(a, a + n, 0.0);
      const T* __restrict__ w = cw + b * C + c0;
      for (int64_t p = 0; p < P; ++p) {
        const T* __restrict__ r = xp + (b * P + p) * C + c0;
        const T* __restrict__ q = gp + (b * P + p) * C + c0;
        if (sp.on) {
          const int64_t bp = b * P + p;
          const T s = sw[bp], t = sa[bp], e = se[bp], m = smx[bp];
#pragma omp simd
          for (int64_t c = 0; c < n; ++c)
            a[c] += (q[c] * s + t + (r[c] * w[c] == m ? e : T(0))) * r[c];
        } else {
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) a[c] += q[c] * r[c];
        }
      }
      for (int64_t c = 0; c < n; ++c) dp[b * C + c0 + c] = static_cast<T>(a[c]);
    }
  });
}

template <typename T>
void gate_grad_input_kernel(const Tensor& g, const Tensor& x, const T* cw, const Spatial& sp,
                            const T* ca, const T* ce, const T* cmx, Tensor& dx) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* __restrict__ gp = g.data_ptr<T>();
  const T* __restrict__ xp = x.data_ptr<T>();
  const T* sw = static_cast<const T*>(sp.sw);
  const T* sa = static_cast<const T*>(sp.sa);
  const T* se = static_cast<const T*>(sp.se);
  const T* smx = static_cast<const T*>(sp.smx);
  T* __restrict__ dp = dx.data_ptr<T>();
  if (!channels_last(x)) {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / C;
        const T w = cw[bc], a = ca[bc], cm = cmx[bc], e = ce[bc];
        const T* __restrict__ r = xp + bc * P;
        const T* __restrict__ q = gp + bc * P;
        T* __restrict__ d = dp + bc * P;
        if (sp.on) {
          const T* __restrict__ s1 = sw + b * P;
          const T* __restrict__ s2 = sa + b * P;
          const T* __restrict__ s3 = se + b * P;
          const T* __restrict__ s4 = smx + b * P;
#pragma omp simd
          for (int64_t p = 0; p < P; ++p)
            d[p] = (q[p] * s1[p] + s2[p] + (r[p] * w == s4[p] ? s3[p] : T(0))) * w + a +
                   (r[p] == cm ? e : T(0));
        } else {
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) d[p] = q[p] * w + a + (r[p] == cm ? e : T(0));
        }
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
      const T* __restrict__ cm = cmx + b * C;
      const T* __restrict__ e = ce + b * C;
      if (sp.on) {
        const T s = sw[bp], t = sa[bp], f = se[bp], m = smx[bp];
#pragma omp simd
        for (int64_t c = 0; c < C; ++c)
          d[c] = (q[c] * s + t + (r[c] * w[c] == m ? f : T(0))) * w[c] + a[c] +
                 (r[c] == cm[c] ? e[c] : T(0));
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) d[c] = q[c] * w[c] + a[c] + (r[c] == cm[c] ? e[c] : T(0));
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

Tensor gate_grad_channel(const Tensor& g, const Tensor& x, const Tensor& cw,
                         const c10::optional<Tensor>& sw, const c10::optional<Tensor>& sa,
                         const c10::optional<Tensor>& se, const c10::optional<Tensor>& smx) {
  check_full(x, "x");
  check_grad(g, x);
  check_small(cw, x.size(0), x.size(1), "cw");
  const Spatial sp = spatial_terms(x, sw, sa, se, smx);
  Tensor dcw = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grad_channel", [&] {
    gate_grad_channel_kernel<scalar_t>(g, x, cw.data_ptr<scalar_t>(), sp, dcw);
  });
  return dcw;
}

Tensor gate_grad_input(const Tensor& g, const Tensor& x, const Tensor& cw,
                       const c10::optional<Tensor>& sw, const c10::optional<Tensor>& sa,
                       const c10::optional<Tensor>& se, const c10::optional<Tensor>& smx,
                       const Tensor& ca, const Tensor& ce, const Tensor& cmx) {
  check_full(x, "x");
  check_grad(g, x);
  for (const auto* t : {&cw, &ca, &ce, &cmx}) check_small(*t, x.size(0), x.size(1), "channel term");
  const Spatial sp = spatial_terms(x, sw, sa, se, smx);
  Tensor dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grad_input", [&] {
    gate_grad_input_kernel<scalar_t>(g, x, cw.data_ptr<scalar_t>(), sp, ca.data_ptr<scalar_t>(),
                                     ce.data_ptr<scalar_t>(), cmx.data_ptr<scalar_t>(), dx);
  });
  return dx;
}

}  // namespace

#include "coord.h"

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
  m.def("coord_pool(Tensor x) -> (Tensor, Tensor)");
  m.def("coord_apply(Tensor x, Tensor ah, Tensor aw) -> Tensor");
  m.def("coord_grad_gates(Tensor g, Tensor x, Tensor ah, Tensor aw) -> (Tensor, Tensor)");
  m.def("coord_grad_input(Tensor g, Tensor ah, Tensor aw, Tensor dh, Tensor dw) -> Tensor");
}

TORCH_LIBRARY_IMPL(attnlab_fast, CPU, m) {
  m.impl("channel_pool", &channel_pool);
  m.impl("spatial_pool", &spatial_pool);
  m.impl("gate_apply", &gate_apply);
  m.impl("gate_grad_spatial", &gate_grad_spatial);
  m.impl("gate_grad_channel", &gate_grad_channel);
  m.impl("gate_grad_input", &gate_grad_input);
  m.impl("coord_pool", &coord_pool);
  m.impl("coord_apply", &coord_apply);
  m.impl("coord_grad_gates", &coord_grad_gates);
  m.impl("coord_grad_input", &coord_grad_input);
}
