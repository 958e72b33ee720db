// Operator schemas of the CPU gate kernels, registered as torch.ops.attnlab_kernels.*.
//
// out = (x·cw[b,c])·sw[b,p]: the full-size passes of a gate module whose small layers (MLP,
// conv, norm, sigmoid) run in PyTorch between them (see attnlab/kernels/product.py), and a
// block tail with its last BatchNorm folded into a channel gate (attnlab/kernels/norm_tail.py).
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(attnlab_kernels, m) {
  m.def("channel_pool(Tensor x, bool with_max) -> (Tensor, Tensor, Tensor)");
  m.def("spatial_pool(Tensor x, Tensor cw) -> (Tensor, Tensor, Tensor)");
  m.def("gate_apply(Tensor x, Tensor cw, Tensor? sw) -> Tensor");
  m.def("gate_apply_relu(Tensor x, Tensor cw, Tensor? sw, Tensor residual) -> Tensor");
  m.def(
      "gate_grad_input(Tensor g, Tensor x, Tensor cw, Tensor? sw, Tensor? sa, Tensor? se, "
      "Tensor? smx, Tensor ca, Tensor ce, Tensor cmx) -> Tensor");
  m.def(
      "gate_grad_product(Tensor grad, Tensor x, Tensor cw, Tensor? sw, Tensor? out) -> "
      "(Tensor, Tensor, Tensor)");
  m.def("gate_grad_pool(Tensor x, Tensor cw, Tensor sa, Tensor se, Tensor smx) -> Tensor");
  m.def("row_moments(Tensor x) -> (Tensor, Tensor)");
  m.def("affine_relu(Tensor x, Tensor scale, Tensor shift, Tensor residual) -> Tensor");
  m.def("relu_grad_sums(Tensor g, Tensor out, Tensor x) -> (Tensor, Tensor, Tensor)");
  m.def("affine_grad(Tensor d, Tensor x, Tensor p, Tensor m, Tensor q, Tensor r) -> Tensor");
}

TORCH_LIBRARY_IMPL(attnlab_kernels, CPU, m) {
  m.impl("channel_pool", &attnlab::channel_pool);
  m.impl("spatial_pool", &attnlab::spatial_pool);
  m.impl("gate_apply", &attnlab::gate_apply);
  m.impl("gate_apply_relu", &attnlab::gate_apply_relu);
  m.impl("gate_grad_input", &attnlab::gate_grad_input);
  m.impl("gate_grad_product", &attnlab::gate_grad_product);
  m.impl("gate_grad_pool", &attnlab::gate_grad_pool);
  m.impl("row_moments", &attnlab::row_moments);
  m.impl("affine_relu", &attnlab::affine_relu);
  m.impl("relu_grad_sums", &attnlab::relu_grad_sums);
  m.impl("affine_grad", &attnlab::affine_grad);
}
