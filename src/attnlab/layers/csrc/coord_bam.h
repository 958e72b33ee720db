// Coordinate Attention and BAM kernels; included by gates.cpp inside its anonymous namespace's
// translation unit (after the helpers it defines).
#pragma once

namespace {

// ---------------------------------------------------------------------------------------------
// Coordinate Attention. NCHW: ph B×C×H (mean over W), pw B×C×W (mean over H).
// NHWC: ph B×H×C, pw B×W×C.

template <typename T>
void coord_pool_kernel(const Tensor& x, Tensor& ph, Tensor& pw) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const T* xp = x.data_ptr<T>();
  T* hp = ph.data_ptr<T>();
  T* wp = pw.data_ptr<T>();
  if (!channels_last(x)) {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> cols(W);
      for (int64_t bc = begin; bc < end; ++bc) {
        std::fill(cols.begin(), cols.end(), 0.0);
        double* col = cols.data();
        for (int64_t h = 0; h < H; ++h) {
          const T* r = xp + (bc * H + h) * W;
          double s = 0;
#pragma omp simd reduction(+ : s)
          for (int64_t w = 0; w < W; ++w) {
            s += r[w];
            col[w] += r[w];
          }
          hp[bc * H + h] = static_cast<T>(s / W);
        }
        for (int64_t w = 0; w < W; ++w) wp[bc * W + w] = static_cast<T>(cols[w] / H);
      }
    });
    return;
  }
  const int64_t nblk = (C + kBlock - 1) / kBlock;
  at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> rows(kBlock), cols(W * kBlock);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nblk, c0 = (i % nblk) * kBlock, n = std::min(kBlock, C - c0);
      std::fill(cols.begin(), cols.end(), 0.0);
      for (int64_t h = 0; h < H; ++h) {
        std::fill(rows.begin(), rows.begin() + n, 0.0);
        double* row = rows.data();
        for (int64_t w = 0; w < W; ++w) {
          const T* r = xp + ((b * H + h) * W + w) * C + c0;
          double* col = cols.data() + w * kBlock;
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) {
            row[c] += r[c];
            col[c] += r[c];
          }
        }
        for (int64_t c = 0; c < n; ++c) hp[(b * H + h) * C + c0 + c] = static_cast<T>(row[c] / W);
      }
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < n; ++c)
          wp[(b * W + w) * C + c0 + c] = static_cast<T>(cols[w * kBlock + c] / H);
    }
  });
}

std::tuple<Tensor, Tensor> coord_pool(const Tensor& x) {
  check_full(x, "x");
  const auto B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const bool cl = channels_last(x);
  Tensor ph = cl ? at::empty({B, H, C}, x.options()) : at::empty({B, C, H}, x.options());
  Tensor pw = cl ? at::empty({B, W, C}, x.options()) : at::empty({B, C, W}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "coord_pool",
                             [&] { coord_pool_kernel<scalar_t>(x, ph, pw); });
  return {ph, pw};
}

void check_coord(const Tensor& x, const Tensor& ah, const Tensor& aw) {
  const auto B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const bool cl = channels_last(x);
  const std::vector<int64_t> eh = cl ? std::vector<int64_t>{B, H, C} : std::vector<int64_t>{B, C, H};
  const std::vector<int64_t> ew = cl ? std::vector<int64_t>{B, W, C} : std::vector<int64_t>{B, C, W};
  TORCH_CHECK(ah.sizes() == eh && ah.is_contiguous() && aw.sizes() == ew && aw.is_contiguous(),
              "attnlab_fast: coordinate gates have the wrong shape or layout");
}

// out = (x·ah[b,c,h])·aw[b,c,w]
template <typename T>
void coord_apply_kernel(const Tensor& x, const Tensor& ah, const Tensor& aw, Tensor& out) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const T* xp = x.data_ptr<T>();
  const T* hp = ah.data_ptr<T>();
  const T* wp = aw.data_ptr<T>();
  T* op = out.data_ptr<T>();
  if (!channels_last(x)) {
    at::parallel_for(0, B * C * H, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const T a = hp[row];
        const T* w = wp + (row / H) * W;
        const T* r = xp + row * W;
        T* o = op + row * W;
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) o[j] = (r[j] * a) * w[j];
      }
    });
    return;
  }
  at::parallel_for(0, B * H * W, 16, [&](int64_t begin, int64_t end) {
    for (int64_t pix = begin; pix < end; ++pix) {
      const int64_t b = pix / (H * W), h = (pix / W) % H, j = pix % W;
      const T* a = hp + (b * H + h) * C;
      const T* w = wp + (b * W + j) * C;
      const T* r = xp + pix * C;
      T* o = op + pix * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = (r[c] * a[c]) * w[c];
    }
  });
}

Tensor coord_apply(const Tensor& x, const Tensor& ah, const Tensor& aw) {
  check_full(x, "x");
  check_coord(x, ah, aw);
  Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "coord_apply",
                             [&] { coord_apply_kernel<scalar_t>(x, ah, aw, out); });
  return out;
}

// dah[b,c,h] = Σ_w (g·aw)·x, daw[b,c,w] = Σ_h g·(x·ah)  (same layouts as the gates)
template <typename T>
void coord_grad_gates_kernel(const Tensor& g, const Tensor& x, const Tensor& ah,
                             const Tensor& aw, Tensor& dah, Tensor& daw) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const T* gp = g.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  const T* hp = ah.data_ptr<T>();
  const T* wp = aw.data_ptr<T>();
  T* dhp = dah.data_ptr<T>();
  T* dwp = daw.data_ptr<T>();
  if (!channels_last(x)) {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> cols(W);
      for (int64_t bc = begin; bc < end; ++bc) {
        std::fill(cols.begin(), cols.end(), 0.0);
        double* col = cols.data();
        const T* w = wp + bc * W;
        for (int64_t h = 0; h < H; ++h) {
          const T a = hp[bc * H + h];
          const T* r = xp + (bc * H + h) * W;
          const T* q = gp + (bc * H + h) * W;
          double s = 0;
#pragma omp simd reduction(+ : s)
          for (int64_t j = 0; j < W; ++j) {
            s += (q[j] * w[j]) * r[j];
            col[j] += q[j] * (r[j] * a);
          }
          dhp[bc * H + h] = static_cast<T>(s);
        }
        for (int64_t j = 0; j < W; ++j) dwp[bc * W + j] = static_cast<T>(cols[j]);
      }
    });
    return;
  }
  const int64_t nblk = (C + kBlock - 1) / kBlock;
  at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> rows(kBlock), cols(W * kBlock);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nblk, c0 = (i % nblk) * kBlock, n = std::min(kBlock, C - c0);
      std::fill(cols.begin(), cols.end(), 0.0);
      for (int64_t h = 0; h < H; ++h) {
        std::fill(rows.begin(), rows.begin() + n, 0.0);
        double* row = rows.data();
        const T* a = hp + (b * H + h) * C + c0;
        for (int64_t j = 0; j < W; ++j) {
          const int64_t off = ((b * H + h) * W + j) * C + c0;
          const T* r = xp + off;
          const T* q = gp + off;
          const T* w = wp + (b * W + j) * C + c0;
          double* col = cols.data() + j * kBlock;
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) {
            row[c] += (q[c] * w[c]) * r[c];
            col[c] += q[c] * (r[c] * a[c]);
          }
        }
        for (int64_t c = 0; c < n; ++c) dhp[(b * H + h) * C + c0 + c] = static_cast<T>(row[c]);
      }
      for (int64_t j = 0; j < W; ++j)
        for (int64_t c = 0; c < n; ++c)
          dwp[(b * W + j) * C + c0 + c] = static_cast<T>(cols[j * kBlock + c]);
    }
  });
}

std::tuple<Tensor, Tensor> coord_grad_gates(const Tensor& g, const Tensor& x, const Tensor& ah,
                                            const Tensor& aw) {
  check_full(x, "x");
  check_coord(x, ah, aw);
  check_grad(g, x);
  Tensor dah = at::empty_like(ah), daw = at::empty_like(aw);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "coord_grad_gates",
                             [&] { coord_grad_gates_kernel<scalar_t>(g, x, ah, aw, dah, daw); });
  return {dah, daw};
}

// dx = (g·aw)·ah + dh[b,c,h] + dw[b,c,w]  (dh = dph / W and dw = dpw / H, from the caller)
template <typename T>
void coord_grad_input_kernel(const Tensor& g, const Tensor& ah, const Tensor& aw,
                             const Tensor& dh, const Tensor& dw, Tensor& dx) {
  const int64_t B = g.size(0), C = g.size(1), H = g.size(2), W = g.size(3);
  const T* gp = g.data_ptr<T>();
  const T* hp = ah.data_ptr<T>();
  const T* wp = aw.data_ptr<T>();
  const T* dhp = dh.data_ptr<T>();
  const T* dwp = dw.data_ptr<T>();
  T* dp = dx.data_ptr<T>();
  if (!channels_last(g)) {
    at::parallel_for(0, B * C * H, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const T a = hp[row], e = dhp[row];
        const T* w = wp + (row / H) * W;
        const T* f = dwp + (row / H) * W;
        const T* q = gp + row * W;
        T* d = dp + row * W;
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) d[j] = (q[j] * w[j]) * a + e + f[j];
      }
    });
    return;
  }
  at::parallel_for(0, B * H * W, 16, [&](int64_t begin, int64_t end) {
    for (int64_t pix = begin; pix < end; ++pix) {
      const int64_t b = pix / (H * W), h = (pix / W) % H, j = pix % W;
      const T* a = hp + (b * H + h) * C;
      const T* e = dhp + (b * H + h) * C;
      const T* w = wp + (b * W + j) * C;
      const T* f = dwp + (b * W + j) * C;
      const T* q = gp + pix * C;
      T* d = dp + pix * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) d[c] = (q[c] * w[c]) * a[c] + e[c] + f[c];
    }
  });
}

Tensor coord_grad_input(const Tensor& g, const Tensor& ah, const Tensor& aw, const Tensor& dh,
                        const Tensor& dw) {
  check_full(g, "grad");
  check_coord(g, ah, aw);
  check_coord(g, dh, dw);
  Tensor dx = at::empty_like(g);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "coord_grad_input",
                             [&] { coord_grad_input_kernel<scalar_t>(g, ah, aw, dh, dw, dx); });
  return dx;
}

// ---------------------------------------------------------------------------------------------
// BAM: out = x + x·σ(m), m = mc[b,c] + ms[b,p] (sum) or mc·ms (product).

template <typename T>
inline T bam_logit(T c, T s, bool product) {
  return product ? c * s : c + s;
}

template <typename T>
inline T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

template <typename T>
void bam_combine_kernel(const Tensor& x, const T* mc, const T* ms, bool product, Tensor& out) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  if (!channels_last(x)) {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const T c = mc[bc];
        const T* s = ms + (bc / C) * P;
        const T* r = xp + bc * P;
        T* o = op + bc * P;
        for (int64_t p = 0; p < P; ++p) o[p] = r[p] + r[p] * sigmoid(bam_logit(c, s[p], product));
      }
    });
    return;
  }
  at::parallel_for(0, B * P, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const T s = ms[bp];
      const T* c = mc + (bp / P) * C;
      const T* r = xp + bp * C;
      T* o = op + bp * C;
      for (int64_t k = 0; k < C; ++k) o[k] = r[k] + r[k] * sigmoid(bam_logit(c[k], s, product));
    }
  });
}

Tensor bam_combine(const Tensor& x, const Tensor& mc, const Tensor& ms, bool product) {
  check_full(x, "x");
  const auto B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  check_small(mc, B, C, "mc");
  check_small(ms, B, P, "ms");
  Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bam_combine", [&] {
    bam_combine_kernel<scalar_t>(x, mc.data_ptr<scalar_t>(), ms.data_ptr<scalar_t>(), product,
                                 out);
  });
  return out;
}

// dx = g·(1 + t), dm = g·x·t·(1 − t); dmc = Σ_p dm (·ms), dms = Σ_c dm (·mc).
template <typename T>
void bam_backward_kernel(const Tensor& g, const Tensor& x, const T* mc, const T* ms, bool product,
                         Tensor& dx, Tensor& dmc, Tensor& dms) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const T* gp = g.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  T* dp = dx.data_ptr<T>();
  T* dcp = dmc.data_ptr<T>();
  T* dsp = dms.data_ptr<T>();
  // One task per (b, block of the inner axis); the outer-axis sums go to per-task buffers and
  // are reduced afterwards, so no two threads write the same accumulator.
  const bool cl = channels_last(x);
  const int64_t outer = cl ? P : C, inner = cl ? C : P;
  const int64_t nblk = (inner + kBlock - 1) / kBlock;
  at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> acc_inner(kBlock);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nblk, j0 = (i % nblk) * kBlock, n = std::min(kBlock, inner - j0);
      std::fill(acc_inner.begin(), acc_inner.begin() + n, 0.0);
      for (int64_t o = 0; o < outer; ++o) {
        const int64_t base = (b * outer + o) * inner + j0;
        double acc_outer = 0;
        for (int64_t j = 0; j < n; ++j) {
          const int64_t c = cl ? j0 + j : o, p = cl ? o : j0 + j;
          const T cv = mc[b * C + c], sv = ms[b * P + p];
          const T t = sigmoid(bam_logit(cv, sv, product));
          const T q = gp[base + j], r = xp[base + j];
          dp[base + j] = q + q * t;
          const T dm = q * r * t * (T(1) - t);
          // d/dmc picks up ms under product fusion, d/dms picks up mc.
          const T to_c = product ? dm * sv : dm, to_s = product ? dm * cv : dm;
          if (cl) {  // inner = channels, outer = positions
            acc_inner[j] += to_c;
            acc_outer += to_s;
          } else {
            acc_inner[j] += to_s;
            acc_outer += to_c;
          }
        }
        // The outer-axis entry gets contributions from every inner block: accumulate into the
        // zero-initialised output with one writer per (b, block) — see the reduction below.
        if (cl) {
          dsp[(b * P + o) * nblk + (i % nblk)] = static_cast<T>(acc_outer);
        } else {
          dcp[(b * C + o) * nblk + (i % nblk)] = static_cast<T>(acc_outer);
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        if (cl) {
          dcp[(b * C + j0 + j) * nblk] = static_cast<T>(acc_inner[j]);  // placeholder slot 0
        } else {
          dsp[(b * P + j0 + j) * nblk] = static_cast<T>(acc_inner[j]);
        }
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> bam_combine_backward(const Tensor& g, const Tensor& x,
                                                        const Tensor& mc, const Tensor& ms,
                                                        bool product) {
  check_full(x, "x");
  check_grad(g, x);
  const auto B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  check_small(mc, B, C, "mc");
  check_small(ms, B, P, "ms");
  const bool cl = channels_last(x);
  const int64_t inner = cl ? C : P;
  const int64_t nblk = (inner + kBlock - 1) / kBlock;
  Tensor dx = at::empty_like(x);
  // Partial sums: the outer axis has one slot per inner block; the inner axis uses slot 0.
  Tensor dmc = at::zeros({B, C, nblk}, x.options());
  Tensor dms = at::zeros({B, P, nblk}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bam_combine_backward", [&] {
    bam_backward_kernel<scalar_t>(g, x, mc.data_ptr<scalar_t>(), ms.data_ptr<scalar_t>(),
                                  product, dx, dmc, dms);
  });
  return {dx, dmc.sum(2), dms.sum(2)};
}

}  // namespace
