// Operator schemas of the CPU gate kernels, registered as torch.ops.attnlab_kernels.*.
//
// out = (x·cw[b,c])·sw[b,p]: the full-size passes of a gate module whose small layers (MLP,
// conv, norm, sigmoid) run in PyTorch between them. See attnlab/kernels/gate.py.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(attnlab_kernels, m) {
  m.def("channel_pool(Tensor x, bool with_max) -> (Tensor, Tensor, Tensor)");
  m.def("spatial_pool(Tensor x, Tensor cw) -> (Tensor, Tensor, Tensor)");
  m.def("gate_apply(Tensor x, Tensor cw, Tensor? sw) -> Tensor");
  m.def("gate_apply_relu(Tensor x, Tensor cw, Tensor? sw, Tensor residual) -> Tensor");
  m.def("gate_grad_spatial(Tensor g, Tensor x, Tensor cw) -> Tensor");
  m.def(
      "gate_grad_channel(Tensor g, Tensor x, Tensor cw, Tensor? sw, Tensor? sa, Tensor? se, "
      "Tensor? smx) -> Tensor");
  m.def(
      "gate_grad_input(Tensor g, Tensor x, Tensor cw, Tensor? sw, Tensor? sa, Tensor? se, "
      "Tensor? smx, Tensor ca, Tensor ce, Tensor cmx) -> Tensor");
}

TORCH_LIBRARY_IMPL(attnlab_kernels, CPU, m) {
  m.impl("channel_pool", &attnlab::channel_pool);
  m.impl("spatial_pool", &attnlab::spatial_pool);
  m.impl("gate_apply", &attnlab::gate_apply);
  m.impl("gate_apply_relu", &attnlab::gate_apply_relu);
  m.impl("gate_grad_spatial", &attnlab::gate_grad_spatial);
  m.impl("gate_grad_channel", &attnlab::gate_grad_channel);
  m.impl("gate_grad_input", &attnlab::gate_grad_input);
}
