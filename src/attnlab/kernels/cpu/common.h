// Shared checks and helpers of the CPU gate kernels.
//
// Every kernel takes a full-size tensor x of B×C×H×W, NCHW-contiguous, float32 or float64,
// and small per-channel (B×C) or per-position (B×P, P = H·W) tensors, contiguous, of x's
// dtype. A sample is walked as a C×P plane: the per-channel passes run along a row of P
// contiguous values, the per-position passes over channels in tiles of kTile positions, so
// that the loop over the tile is contiguous and vectorises.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Optional.h>
#include <torch/types.h>

#include <cstdint>

namespace attnlab {

using at::Tensor;

// Positions per work item of the passes that reduce over channels.
constexpr int64_t kTile = 256;

inline void check_full(const Tensor& x, const char* op, const char* what) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu() && x.is_contiguous() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "attnlab_kernels::", op, ": ", what,
              " must be a contiguous (NCHW) 4-D float32 or float64 CPU tensor, got sizes ",
              x.sizes(), " and dtype ", x.scalar_type());
}

inline void check_like(const Tensor& t, const Tensor& x, const char* op, const char* what) {
  TORCH_CHECK(t.sizes() == x.sizes() && t.is_contiguous() && t.dtype() == x.dtype() &&
                  t.device() == x.device(),
              "attnlab_kernels::", op, ": ", what, " must match x (", x.sizes(),
              ", contiguous, same dtype and device), got ", t.sizes());
}

inline void check_small(const Tensor& t, const Tensor& x, int64_t cols, const char* op,
                        const char* what) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == x.size(0) && t.size(1) == cols &&
                  t.is_contiguous() && t.dtype() == x.dtype() && t.device() == x.device(),
              "attnlab_kernels::", op, ": ", what, " must be a contiguous ", x.size(0), "×",
              cols, " tensor of x's dtype, got ", t.sizes());
}

inline void check_small(const c10::optional<Tensor>& t, const Tensor& x, int64_t cols,
                        const char* op, const char* what) {
  if (t.has_value() && t->defined()) check_small(*t, x, cols, op, what);
}

template <typename T>
const T* ptr_or_null(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

// The number of kTile-wide tiles covering P positions.
inline int64_t tiles(int64_t P) { return (P + kTile - 1) / kTile; }

}  // namespace attnlab
