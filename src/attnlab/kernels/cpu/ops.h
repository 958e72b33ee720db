// Declarations of the CPU gate operators (schemas and registration: ops.cpp).
#pragma once

#include <c10/util/Optional.h>
#include <torch/types.h>

#include <tuple>

namespace attnlab {

using at::Tensor;

// pool.cpp
std::tuple<Tensor, Tensor, Tensor> channel_pool(const Tensor& x, bool with_max);
std::tuple<Tensor, Tensor, Tensor> spatial_pool(const Tensor& x, const Tensor& cw);

// apply.cpp
Tensor gate_apply(const Tensor& x, const Tensor& cw, const c10::optional<Tensor>& sw);
Tensor gate_apply_relu(const Tensor& x, const Tensor& cw, const c10::optional<Tensor>& sw,
                       const Tensor& residual);

// grad.cpp
Tensor gate_grad_input(const Tensor& g, const Tensor& x, const Tensor& cw,
                       const c10::optional<Tensor>& sw, const c10::optional<Tensor>& sa,
                       const c10::optional<Tensor>& se, const c10::optional<Tensor>& smx,
                       const Tensor& ca, const Tensor& ce, const Tensor& cmx);

std::tuple<Tensor, Tensor, Tensor> gate_grad_product(const Tensor& grad, const Tensor& x,
                                                     const Tensor& cw,
                                                     const c10::optional<Tensor>& sw,
                                                     const c10::optional<Tensor>& out);
Tensor gate_grad_pool(const Tensor& x, const Tensor& cw, const Tensor& sa, const Tensor& se,
                      const Tensor& smx);

// norm.cpp
std::tuple<Tensor, Tensor> row_moments(const Tensor& x);
Tensor affine_relu(const Tensor& x, const Tensor& scale, const Tensor& shift,
                   const Tensor& residual);
std::tuple<Tensor, Tensor, Tensor> relu_grad_sums(const Tensor& g, const Tensor& out,
                                                  const Tensor& x);
Tensor affine_grad(const Tensor& d, const Tensor& x, const Tensor& p, const Tensor& m,
                   const Tensor& q, const Tensor& r);

}  // namespace attnlab
