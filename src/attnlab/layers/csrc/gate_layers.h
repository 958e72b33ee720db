// The small layers of the gate modules, forward and backward, for the one-call gate ops
// (gate_forward / gate_backward in gates.cpp): the spatial gate's k×k conv from the two pooled
// maps to one, its one-channel BatchNorm, ECA's 1-D conv across channels, the sigmoid's
// backward and the channel MLP's backward. (The MLP's forward: nn.Linear's values under autograd,
// by PyTorch's BLAS as addmm calls it (linear_exact in gates.cpp), so the gate values and which
// entries reach the max pools are the reference path's; rows_dot in rows.h for inference.)
//
// These work on B×P (P = H·W) or B×C tensors of a few thousand elements: what they cost in
// PyTorch is per-call overhead (a 2→1 7×7 conv backward through oneDNN takes over a
// millisecond on any map size), which calling them here, in one op, removes. Sums accumulate in
// double, vector lanes apart (omp simd; summed one entry after another, each addition waits
// for the one before). Included by gates.cpp inside its anonymous namespace.
#pragma once

namespace {

// o[x] += Σ_j wr[j] · src[x + s·(j - r)] along one row, zero outside it (r = k/2): s = +1 is
// the conv's correlation, s = -1 its transpose (ECA's 1-D conv and its input gradient).
template <typename T>
inline void add_row_taps(T* __restrict__ o, const T* __restrict__ src, const T* wr, int64_t k,
                         int64_t W, int64_t s) {
  const int64_t r = k / 2;
  for (int64_t j = 0; j < k; ++j) {
    const T wv = wr[j];
    const int64_t d = s * (j - r);
    const int64_t x0 = std::max<int64_t>(0, -d), x1 = std::min<int64_t>(W, W - d);
#pragma omp simd
    for (int64_t x = x0; x < x1; ++x) o[x] += wv * src[x + d];
  }
}

// The spatial gate's k×k conv works on zero-padded planes of (H + 2r) × (W + 2r), r = k/2:
// there every tap (c, i, j) is one long multiply-add over the whole plane at offset i·Wp + j
// (Wp = W + 2r), its output on the padded row pitch, instead of a short loop per row and tap.

// n planes of H×W → zero-padded planes, the data at (r, r).
template <typename T>
void pad_planes(const T* src, T* dst, int64_t n, int64_t H, int64_t W, int64_t r) {
  const int64_t Wp = W + 2 * r, Hp = H + 2 * r;
  std::fill(dst, dst + n * Hp * Wp, T(0));
  for (int64_t q = 0; q < n; ++q)
    for (int64_t y = 0; y < H; ++y)
      std::copy(src + (q * H + y) * W, src + (q * H + y + 1) * W, dst + (q * Hp + y + r) * Wp + r);
}

// The tap (c, i, j)'s weight; flip: the kernel rotated by 180° (the transpose).
template <typename T>
inline T tap(const T* w, int64_t c, int64_t i, int64_t j, int64_t k, bool flip) {
  return flip ? w[(c * k + k - 1 - i) * k + k - 1 - j] : w[(c * k + i) * k + j];
}

// out[n] += Σ_{c,i,j} w[c,i,j] · pad_c[n + i·Wp + j] for n0 ≤ n < n1 (out on pitch Wp); flip:
// the kernel rotated by 180° (the transpose, for the input gradient).
template <typename T>
void correlate_range(const T* pad, int64_t planes, const T* w, T* out, int64_t H, int64_t W,
                     int64_t k, bool flip, int64_t n0, int64_t n1) {
  const int64_t Wp = W + k - 1, Hp = H + k - 1;
  for (int64_t c = 0; c < planes; ++c)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) {
        const T wv = tap(w, c, i, j, k, flip);
        const T* __restrict__ src = pad + c * Hp * Wp + i * Wp + j;
        T* __restrict__ o = out;
#pragma omp simd
        for (int64_t n = n0; n < n1; ++n) o[n] += wv * src[n];
      }
}

// The whole output, n < (H - 1)·Wp + W.
template <typename T>
void correlate_padded(const T* pad, int64_t planes, const T* w, T* out, int64_t H, int64_t W,
                      int64_t k, bool flip) {
  correlate_range(pad, planes, w, out, H, W, k, flip, 0, (H - 1) * (W + k - 1) + W);
}

#if defined(__GNUC__) && !defined(__clang__)
// For float: 64 outputs at a time (four 16-float vectors) summed over every tap in registers,
// one store each, instead of a load and a store of the output per tap; the taps in the same
// order, so the same sums. The rest of the plane as above.
inline void correlate_padded(const float* pad, int64_t planes, const float* w, float* out,
                             int64_t H, int64_t W, int64_t k, bool flip) {
  constexpr int NV = 4;
  const int64_t Wp = W + k - 1, Hp = H + k - 1, len = (H - 1) * Wp + W;
  int64_t n0 = 0;
  for (; n0 + 16 * NV <= len; n0 += 16 * NV) {
    f16 acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = load_vec<f16>(out + n0 + 16 * v);
    for (int64_t c = 0; c < planes; ++c)
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k; ++j) {
          const float wv = tap(w, c, i, j, k, flip);
          const float* __restrict__ src = pad + c * Hp * Wp + i * Wp + j + n0;
          for (int v = 0; v < NV; ++v) acc[v] += wv * load_vec<f16>(src + 16 * v);
        }
    for (int v = 0; v < NV; ++v) store_vec(out + n0 + 16 * v, acc[v]);
  }
  correlate_range(pad, planes, w, out, H, W, k, flip, n0, len);
}
#endif

// z[b,y,x] = bias + Σ_{c<2,i,j} w[c,i,j] · in[b,c,y+i-r,x+j-r], zero padding r = k/2.
template <typename T>
void conv2to1_forward(const T* in, const T* w, T bias, T* z, int64_t B, int64_t H, int64_t W,
                      int64_t k) {
  const int64_t r = k / 2, P = H * W, Wp = W + 2 * r, Hp = H + 2 * r;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> pad(2 * Hp * Wp), out(H * Wp);
    for (int64_t b = begin; b < end; ++b) {
      pad_planes(in + b * 2 * P, pad.data(), 2, H, W, r);
      std::fill(out.begin(), out.end(), bias);
      correlate_padded(pad.data(), 2, w, out.data(), H, W, k, false);
      for (int64_t y = 0; y < H; ++y)
        std::copy(out.data() + y * Wp, out.data() + y * Wp + W, z + b * P + y * W);
    }
  });
}

// din[b,c,y,x] = Σ_{i,j} w[c,i,j] · dz[b,y-i+r,x-j+r].
template <typename T>
void conv2to1_grad_input(const T* dz, const T* w, T* din, int64_t B, int64_t H, int64_t W,
                         int64_t k) {
  const int64_t r = k / 2, P = H * W, Wp = W + 2 * r, Hp = H + 2 * r;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> pad(Hp * Wp), out(H * Wp);
    for (int64_t b = begin; b < end; ++b) {
      pad_planes(dz + b * P, pad.data(), 1, H, W, r);
      for (int64_t c = 0; c < 2; ++c) {
        std::fill(out.begin(), out.end(), T(0));
        correlate_padded(pad.data(), 1, w + c * k * k, out.data(), H, W, k, true);
        for (int64_t y = 0; y < H; ++y)
          std::copy(out.data() + y * Wp, out.data() + y * Wp + W, din + (b * 2 + c) * P + y * W);
      }
    }
  });
}

// dw[j] = Σ_b Σ_{n<len} g_b[n] · src_b[n + j] for j < k (g_b = g + b·gs, src_b = src + b·ss):
// per plane a sum in T over vector lanes, in chunks that bound its rounding, then into double.
template <typename T>
void tap_row_sums(const T* g, int64_t gs, const T* src, int64_t ss, int64_t B, int64_t len,
                  int64_t k, T* dw) {
  for (int64_t j = 0; j < k; ++j) {
    double acc = 0;
    for (int64_t b = 0; b < B; ++b) {
      const T* __restrict__ gb = g + b * gs;
      const T* __restrict__ sb = src + b * ss + j;
      for (int64_t n0 = 0; n0 < len; n0 += 4096) {
        const int64_t n1 = std::min(len, n0 + 4096);
        T part = 0;
#pragma omp simd reduction(+ : part)
        for (int64_t n = n0; n < n1; ++n) part += gb[n] * sb[n];
        acc += part;
      }
    }
    dw[j] = static_cast<T>(acc);
  }
}

#if defined(__GNUC__) && !defined(__clang__)
// For float and K taps: the K sums in registers, each vector of g loaded once for the K taps
// (one tap at a time loads g and src for every multiply-add); the same chunks.
template <int K>
void tap_row_sums_k(const float* g, int64_t gs, const float* src, int64_t ss, int64_t B,
                    int64_t len, float* dw) {
  double acc[K] = {};
  for (int64_t b = 0; b < B; ++b) {
    const float* __restrict__ gb = g + b * gs;
    const float* __restrict__ sb = src + b * ss;
    for (int64_t n0 = 0; n0 < len; n0 += 4096) {
      const int64_t n1 = std::min(len, n0 + 4096);
      f16 part[K] = {};
      int64_t n = n0;
      for (; n + 16 <= n1; n += 16) {
        const f16 gv = load_vec<f16>(gb + n);
        for (int j = 0; j < K; ++j) part[j] += gv * load_vec<f16>(sb + n + j);
      }
      for (int j = 0; j < K; ++j) {
        float tail = 0;
        for (int64_t m = n; m < n1; ++m) tail += gb[m] * sb[m + j];
        double s = tail;
        for (int l = 0; l < 16; ++l) s += part[j][l];
        acc[j] += s;
      }
    }
  }
  for (int j = 0; j < K; ++j) dw[j] = static_cast<float>(acc[j]);
}

inline void tap_row_sums(const float* g, int64_t gs, const float* src, int64_t ss, int64_t B,
                         int64_t len, int64_t k, float* dw) {
  switch (k) {
    case 3: return tap_row_sums_k<3>(g, gs, src, ss, B, len, dw);
    case 5: return tap_row_sums_k<5>(g, gs, src, ss, B, len, dw);
    case 7: return tap_row_sums_k<7>(g, gs, src, ss, B, len, dw);
    default: return tap_row_sums<float>(g, gs, src, ss, B, len, k, dw);
  }
}
#endif

// dw[c,i,j] = Σ_{b,y,x} dz[b,y,x] · in[b,c,y+i-r,x+j-r]; returns Σ dz (the bias gradient).
// On padded planes each tap is one long dot product: dz laid on the pitch Wp with zeros in the
// extra columns, against the padded input at offset i·Wp + j.
template <typename T>
double conv2to1_grad_weight(const T* dz, const T* in, T* dw, int64_t B, int64_t H, int64_t W,
                            int64_t k) {
  const int64_t r = k / 2, P = H * W, Wp = W + 2 * r, Hp = H + 2 * r, len = (H - 1) * Wp + W;
  std::vector<T> pad(B * 2 * Hp * Wp), dzp(B * H * Wp, T(0));
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      pad_planes(in + b * 2 * P, pad.data() + b * 2 * Hp * Wp, 2, H, W, r);
      for (int64_t y = 0; y < H; ++y)
        std::copy(dz + b * P + y * W, dz + b * P + (y + 1) * W, dzp.data() + (b * H + y) * Wp);
    }
  });
  at::parallel_for(0, 2 * k, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {  // the k taps of row i of plane c
      const int64_t c = t / k, i = t % k;
      tap_row_sums(dzp.data(), H * Wp, pad.data() + c * Hp * Wp + i * Wp, 2 * Hp * Wp, B, len, k,
                   dw + t * k);
    }
  });
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t p = 0; p < B * P; ++p) s += dz[p];
  return s;
}

// ECA: logits[b,c] = Σ_j w[j] · y[b,c+j-r] (zero padding r = (k-1)/2).
template <typename T>
void eca_forward(const T* y, const T* w, T* logits, int64_t B, int64_t C, int64_t k) {
  for (int64_t b = 0; b < B; ++b) {  // k is odd: (k - 1) / 2 = k / 2
    for (int64_t c = 0; c < C; ++c) logits[b * C + c] = T(0);
    add_row_taps(logits + b * C, y + b * C, w, k, C, 1);
  }
}

// ECA backward: dy[b,c] = Σ_j w[j] · dl[b,c-j+r], dw[j] = Σ_{b,c} dl[b,c] · y[b,c+j-r].
template <typename T>
void eca_backward(const T* dl, const T* y, const T* w, T* dy, T* dw, int64_t B, int64_t C,
                  int64_t k) {
  const int64_t r = (k - 1) / 2;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t d = j - r;
    const int64_t c0 = std::max<int64_t>(0, -d), c1 = std::min<int64_t>(C, C - d);
    double acc = 0;
    for (int64_t b = 0; b < B; ++b) {
      const T* __restrict__ g = dl + b * C;
      const T* __restrict__ v = y + b * C + d;
#pragma omp simd reduction(+ : acc)
      for (int64_t c = c0; c < c1; ++c) acc += double(g[c]) * double(v[c]);
    }
    dw[j] = static_cast<T>(acc);
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) dy[b * C + c] = T(0);
    add_row_taps(dy + b * C, dl + b * C, w, k, C, -1);
  }
}

// One-channel BatchNorm over all N values of z, in place: z ← γ·ẑ + β with ẑ = (z - μ)·s.
// Batch statistics (train): μ, s = 1/√(var + eps) from z (biased var), and the running
// statistics, when given, move by `momentum` (unbiased var), as nn.BatchNorm2d does. Running
// statistics (eval): μ = running mean, s = 1/√(running var + eps). Writes ẑ to zhat; returns s.
template <typename T>
T batch_norm1_forward(T* z, T* zhat, int64_t N, const T* gamma, const T* beta, bool batch,
                      T* running_mean, T* running_var, double momentum, double eps) {
  double mean, invstd;
  if (batch) {
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t n = 0; n < N; ++n) s += z[n];
    mean = s / N;
    double q = 0;
#pragma omp simd reduction(+ : q)
    for (int64_t n = 0; n < N; ++n) q += (z[n] - mean) * (z[n] - mean);
    const double var = q / N;
    invstd = 1.0 / std::sqrt(var + eps);
    if (running_mean) {
      *running_mean = static_cast<T>((1 - momentum) * *running_mean + momentum * mean);
      const double unbiased = N > 1 ? q / (N - 1) : var;
      *running_var = static_cast<T>((1 - momentum) * *running_var + momentum * unbiased);
    }
  } else {
    mean = *running_mean;
    invstd = 1.0 / std::sqrt(double(*running_var) + eps);
  }
  const T g = gamma ? *gamma : T(1), bt = beta ? *beta : T(0);
  const T m = static_cast<T>(mean), s = static_cast<T>(invstd);
  for (int64_t n = 0; n < N; ++n) {
    zhat[n] = (z[n] - m) * s;
    z[n] = zhat[n] * g + bt;
  }
  return s;
}

// Backward of batch_norm1_forward, in place on d (dL/d out → dL/dz); writes dγ and dβ.
template <typename T>
void batch_norm1_backward(T* d, const T* zhat, int64_t N, const T* gamma, T invstd, bool batch,
                          T* dgamma, T* dbeta) {
  double sd = 0, sdz = 0;
#pragma omp simd reduction(+ : sd, sdz)
  for (int64_t n = 0; n < N; ++n) sd += d[n], sdz += double(d[n]) * zhat[n];
  if (dgamma) *dgamma = static_cast<T>(sdz);
  if (dbeta) *dbeta = static_cast<T>(sd);
  const T scale = (gamma ? *gamma : T(1)) * invstd;
  if (batch) {
    const T md = static_cast<T>(sd / N), mdz = static_cast<T>(sdz / N);
    for (int64_t n = 0; n < N; ++n) d[n] = scale * (d[n] - md - zhat[n] * mdz);
  } else {
    for (int64_t n = 0; n < N; ++n) d[n] *= scale;
  }
}

// d ← d · s · (1 - s): the gradient through s = σ(v).
template <typename T>
void sigmoid_backward_inplace(T* d, const T* s, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] *= s[i] * (T(1) - s[i]);
}

// ---------------------------------------------------------------------------------------------
// The channel MLP's backward (logits = Σ_d W2·relu(W1·v_d + b1) + b2, d over the D pooled
// descriptors), given dl = dL/dlogits (B×C), the descriptors V (D·B×C) and the saved hidden
// activations h (D·B×R, after the ReLU). Writes dW1 (R×C), db1 (R), dW2 (C×R), db2 (C) (each
// may be null) and dV (D·B×C). Each product is a sum of scaled rows (o += Σ_j g_j·row_j),
// four rows per sweep of o, skipping the rows the ReLU zeroed; the long sum over C (dh)
// accumulates in double. A few hundred kFLOP at the early stages, a few tens of MFLOP at the
// last: the threads split the work only where that pays for their start.

// o[0..n) += Σ_j g[j]·rows[j][0..n) over the m rows given (pointers), four at a time.
template <typename T, typename A>
inline void add_scaled_rows(A* __restrict__ o, const T* const* rows, const T* g, int64_t m,
                            int64_t n) {
  int64_t j = 0;
  for (; j + 4 <= m; j += 4) {
    const T* __restrict__ r0 = rows[j];
    const T* __restrict__ r1 = rows[j + 1];
    const T* __restrict__ r2 = rows[j + 2];
    const T* __restrict__ r3 = rows[j + 3];
    const A g0 = g[j], g1 = g[j + 1], g2 = g[j + 2], g3 = g[j + 3];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) o[i] += (g0 * r0[i] + g1 * r1[i]) + (g2 * r2[i] + g3 * r3[i]);
  }
  for (; j < m; ++j) {
    const T* __restrict__ r = rows[j];
    const A gj = g[j];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) o[i] += gj * r[i];
  }
}

template <typename T>
void mlp_backward(const T* dl, const T* V, const T* h, const T* W1, const T* W2, int64_t B,
                  int64_t C, int64_t R, int64_t D, T* dW1, T* db1, T* dW2, T* db2, T* dV) {
  const int64_t N = D * B;
  auto grain = [](int64_t work_per_row) {
    return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, work_per_row));
  };
  // dh = relu'(h) · (dl·W2), the same dl·W2 for every descriptor.
  std::vector<T> dh(N * R);
  at::parallel_for(0, B, grain(C * R), [&](int64_t begin, int64_t end) {
    std::vector<double> acc(R);
    std::vector<const T*> rows(C);
    for (int64_t c = 0; c < C; ++c) rows[c] = W2 + c * R;
    for (int64_t b = begin; b < end; ++b) {
      std::fill(acc.begin(), acc.end(), 0.0);
      std::vector<T> g(dl + b * C, dl + (b + 1) * C);
      add_scaled_rows<T, double>(acc.data(), rows.data(), g.data(), C, R);
      for (int64_t d = 0; d < D; ++d) {
        const T* __restrict__ hr = h + (d * B + b) * R;
        T* __restrict__ o = dh.data() + (d * B + b) * R;
        for (int64_t r = 0; r < R; ++r) o[r] = hr[r] > T(0) ? static_cast<T>(acc[r]) : T(0);
      }
    }
  });
  // dW2[c, :] = Σ_b dl[b,c] · Σ_d h[d,b,:];  db2[c] = D · Σ_b dl[b,c]
  std::vector<T> hs(B * R, T(0));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t r = 0; r < R; ++r) hs[(n % B) * R + r] += h[n * R + r];
  at::parallel_for(0, C, grain(B * R), [&](int64_t begin, int64_t end) {
    std::vector<const T*> rows(B);
    std::vector<T> g(B);
    for (int64_t b = 0; b < B; ++b) rows[b] = hs.data() + b * R;
    for (int64_t c = begin; c < end; ++c) {
      T sum = 0;
      for (int64_t b = 0; b < B; ++b) sum += (g[b] = dl[b * C + c]);
      if (db2) db2[c] = sum * T(D);
      if (!dW2) continue;
      T* __restrict__ o = dW2 + c * R;
      std::fill(o, o + R, T(0));
      add_scaled_rows<T, T>(o, rows.data(), g.data(), B, R);
    }
  });
  // dW1[r, :] = Σ_n dh[n,r] · V[n, :];  db1[r] = Σ_n dh[n,r]
  at::parallel_for(0, R, grain(N * C), [&](int64_t begin, int64_t end) {
    std::vector<const T*> rows(N);
    std::vector<T> g(N);
    for (int64_t r = begin; r < end; ++r) {
      int64_t m = 0;
      T sum = 0;
      for (int64_t n = 0; n < N; ++n) {
        const T gn = dh[n * R + r];
        if (gn == T(0)) continue;  // a ReLU-zeroed unit
        sum += gn;
        rows[m] = V + n * C, g[m++] = gn;
      }
      if (db1) db1[r] = sum;
      if (!dW1) continue;
      T* __restrict__ o = dW1 + r * C;
      std::fill(o, o + C, T(0));
      add_scaled_rows<T, T>(o, rows.data(), g.data(), m, C);
    }
  });
  // dV[n, :] = Σ_r dh[n,r] · W1[r, :]
  at::parallel_for(0, N, grain(R * C), [&](int64_t begin, int64_t end) {
    std::vector<const T*> rows(R);
    std::vector<T> g(R);
    for (int64_t n = begin; n < end; ++n) {
      int64_t m = 0;
      for (int64_t r = 0; r < R; ++r) {
        const T gr = dh[n * R + r];
        if (gr != T(0)) rows[m] = W1 + r * C, g[m++] = gr;
      }
      T* __restrict__ o = dV + n * C;
      std::fill(o, o + C, T(0));
      add_scaled_rows<T, T>(o, rows.data(), g.data(), m, C);
    }
  });
}

}  // namespace
