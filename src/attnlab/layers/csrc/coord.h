// Coordinate Attention kernels; included by gates.cpp inside its anonymous namespace's
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
  Tensor out = pooled_empty_like(x);
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
  Tensor dx = pooled_empty_like(g);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "coord_grad_input",
                             [&] { coord_grad_input_kernel<scalar_t>(g, ah, aw, dh, dw, dx); });
  return dx;
}

}  // namespace
