// The blocks' inference call from Python in one C function: fused.residual_relu's checks,
// layer_gate's kept-plan checks and _run_plan's operator call, for the case a network's
// inference makes (grad mode off, the gate's spatial norm, if any, in eval mode, no map
// observed, nothing hooked). In a network each gate's Python runs cold, its code and objects
// evicted by the convolutions between two gates: about 57 Python calls, 90–135 µs per call
// measured there against 8 µs warm (benchmarks/gate_in_network.py). Here the same checks are
// dictionary lookups and pointer comparisons in C.
//
// residual_call returns the block's output, or None where any check fails or anything is
// unusual, having run nothing: the caller then takes the Python path, which makes the same
// checks and gives the same errors. So this needs to know the common case only, and every
// other case keeps its Python behaviour by construction.
//
// The plan's facts come from _Plan.fast, a tuple _make_plan builds once per plan (see there):
//   0 float64 (bool: the plan's dtype, float32 otherwise)
//   1 dicts, 2 their lengths, 3 their values (in order): identity-checked, as _Plan.valid
//   4 attr dicts, 5 attr keys, 6 attr values, 7 the owner's own (key, value) pairs: as there
//   8 the eight parameters (channel ×4, spatial ×4; empty tensors where absent)
//   9 (kind, use_avg, use_max, max_first)
//   10 the spatial BatchNorm2d or None, 11 its (running_mean, running_var) (empty: none)
//   12 whether a one-value batch must raise (stat_check), 13 the taps' hook dicts
#pragma once

#include <torch/extension.h>  // (Python.h first)
//
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <cstdlib>
#include <cstring>

namespace {

// Set once by fused.py (register_entry): fused._state (its "backend"), the gate classes whose
// _fused_residual this replaces as a list of (class, needs channel-spatial order), nn.BatchNorm2d,
// torch.nn.modules.module's globals (the global hooks' dicts) and os.environ's data.
struct Entry {
  PyObject* state = nullptr;
  PyObject* gates = nullptr;
  PyObject* batchnorm = nullptr;
  PyObject* module_globals = nullptr;
  PyObject* environ = nullptr;  // os.environ's own dict (CPython) and the key, as get_backend
  PyObject* env_key = nullptr;  // reads them; else getenv
};
Entry entry_state;
// benchmarks/gate_in_network.py's "Python only": everything but the operator (x returned).
bool entry_dry_run = false;

PyObject* interned(const char* s) {
  PyObject* o = PyUnicode_InternFromString(s);
  TORCH_CHECK(o, "attnlab_fast: interning ", s);
  return o;
}

struct Keys {
  PyObject* fwd = interned("_forward_hooks");
  PyObject* fwd_pre = interned("_forward_pre_hooks");
  PyObject* bwd = interned("_backward_hooks");
  PyObject* bwd_pre = interned("_backward_pre_hooks");
  PyObject* plan = interned("_attnlab_plan");
  PyObject* fast = interned("fast");
  PyObject* training = interned("training");
  PyObject* buffers = interned("_buffers");
  PyObject* parameters = interned("_parameters");
  PyObject* running_mean = interned("running_mean");
  PyObject* running_var = interned("running_var");
  PyObject* weight = interned("weight");
  PyObject* bias = interned("bias");
  PyObject* eps = interned("eps");
  PyObject* channels = interned("channels");
  PyObject* order = interned("order");
  PyObject* backend = interned("backend");
  PyObject* channel_spatial = interned("channel-spatial");
  PyObject* global_hooks[6] = {interned("_global_backward_pre_hooks"),
                               interned("_global_backward_hooks"),
                               interned("_global_forward_pre_hooks"),
                               interned("_global_forward_hooks"),
                               interned("_global_forward_hooks_always_called"),
                               interned("_global_forward_hooks_with_kwargs")};
};

const Keys& keys() {
  static const Keys* k = new Keys();  // never destroyed: the strings outlive the interpreter's use
  return *k;
}

// An object's __dict__ (a new reference), or null (no dict; no error left set).
PyObject* dict_of(PyObject* obj) {
  PyObject* d = PyObject_GenericGetDict(obj, nullptr);
  if (!d) PyErr_Clear();
  return d;
}

// A borrowed dict entry or null (absent; no error set).
PyObject* item(PyObject* d, PyObject* key) { return d ? PyDict_GetItemWithError(d, key) : nullptr; }

// Whether a hook dict is there and empty, by one lookup: missing (not an nn.Module as expected,
// or a torch without that global), non-empty, or an error all count as hooks.
bool hooks_at(PyObject* d, PyObject* key) {
  PyObject* v = item(d, key);
  if (!v) {
    PyErr_Clear();
    return true;
  }
  const int t = PyObject_IsTrue(v);
  if (t < 0) PyErr_Clear();
  return t != 0;
}

// _hooked(module) without the global hooks: any of the module's own hook dicts non-empty.
bool own_hooks(PyObject* d) {
  const Keys& k = keys();
  for (PyObject* key : {k.fwd, k.fwd_pre, k.bwd, k.bwd_pre})
    if (hooks_at(d, key)) return true;
  return false;
}

bool global_hooks() {
  for (PyObject* key : keys().global_hooks)
    if (hooks_at(entry_state.module_globals, key)) return true;
  return false;
}

// A tensor argument (borrowed) or null.
const Tensor* tensor_of(PyObject* o) {
  return o && THPVariable_Check(o) ? &THPVariable_Unpack(o) : nullptr;
}

// get_backend() is "auto" or "fast": set_backend's choice, else $ATTNLAB_BACKEND exactly (any
// other spelling, valid or not, goes to the Python path, which parses it or raises).
bool backend_fast() {
  PyObject* name = item(entry_state.state, keys().backend);
  if (!name) return false;
  if (name == Py_None && entry_state.environ) {
    PyObject* raw = item(entry_state.environ, entry_state.env_key);
    if (!raw) return !PyErr_Occurred();
    if (!PyBytes_Check(raw)) return false;
    const char* env = PyBytes_AS_STRING(raw);
    return std::strcmp(env, "auto") == 0 || std::strcmp(env, "fast") == 0;
  }
  if (name == Py_None) {
    const char* env = std::getenv("ATTNLAB_BACKEND");
    return !env || std::strcmp(env, "auto") == 0 || std::strcmp(env, "fast") == 0;
  }
  return PyUnicode_Check(name) && (PyUnicode_CompareWithASCIIString(name, "auto") == 0 ||
                                   PyUnicode_CompareWithASCIIString(name, "fast") == 0);
}

// _Plan.valid(x, owner), from the plan's fast tuple (f) and the owner's __dict__ (od).
bool plan_valid(PyObject* f, PyObject* od, bool x_double) {
  if ((PyTuple_GET_ITEM(f, 0) == Py_True) != x_double) return false;
  PyObject *dicts = PyTuple_GET_ITEM(f, 1), *lens = PyTuple_GET_ITEM(f, 2),
           *values = PyTuple_GET_ITEM(f, 3);
  const Py_ssize_t nd = PyTuple_GET_SIZE(dicts), nv = PyTuple_GET_SIZE(values);
  Py_ssize_t at = 0;
  for (Py_ssize_t i = 0; i < nd; ++i) {
    PyObject* d = PyTuple_GET_ITEM(dicts, i);
    if (PyDict_GET_SIZE(d) != PyLong_AsSsize_t(PyTuple_GET_ITEM(lens, i))) return false;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(d, &pos, &key, &value)) {
      if (at >= nv || value != PyTuple_GET_ITEM(values, at)) return false;
      ++at;
    }
  }
  if (at != nv) return false;
  PyObject *ad = PyTuple_GET_ITEM(f, 4), *ak = PyTuple_GET_ITEM(f, 5), *av = PyTuple_GET_ITEM(f, 6);
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(ad); ++i)
    if (item(PyTuple_GET_ITEM(ad, i), PyTuple_GET_ITEM(ak, i)) != PyTuple_GET_ITEM(av, i))
      return false;
  PyObject* own = PyTuple_GET_ITEM(f, 7);
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(own); ++i) {
    PyObject* kv = PyTuple_GET_ITEM(own, i);
    if (item(od, PyTuple_GET_ITEM(kv, 0)) != PyTuple_GET_ITEM(kv, 1)) return false;
  }
  if (PyErr_Occurred()) PyErr_Clear();
  return true;
}

// The block's eval-mode BatchNorm2d as _norm_args takes it: running mean and variance, weight
// and bias (undefined without affine), eps. False where _norm_args would say None.
bool eval_norm(PyObject* norm, int64_t C, at::ScalarType dtype, std::vector<Tensor>& ts,
               double& eps) {
  const Keys& k = keys();
  if (Py_TYPE(norm) != reinterpret_cast<PyTypeObject*>(entry_state.batchnorm)) return false;
  PyObject* d = dict_of(norm);
  bool ok = d && item(d, k.training) == Py_False && !own_hooks(d);
  PyObject *bufs = ok ? item(d, k.buffers) : nullptr,
           *params = ok ? item(d, k.parameters) : nullptr;
  ok = ok && bufs && params && PyDict_Check(bufs) && PyDict_Check(params);
  if (ok) {
    const Tensor* mean = tensor_of(item(bufs, k.running_mean));
    const Tensor* var = tensor_of(item(bufs, k.running_var));
    PyObject* w = item(params, k.weight);
    PyObject* b = item(params, k.bias);
    const Tensor* wt = tensor_of(w);
    const Tensor* bt = tensor_of(b);
    PyObject* e = item(d, k.eps);
    ok = mean && var && (wt || !w || w == Py_None) && (bt || !b || b == Py_None) && e &&
         PyFloat_Check(e) && mean->dim() == 1 && mean->size(0) == C;
    for (const Tensor* t : {mean, var, wt, bt}) ok = ok && (!t || t->scalar_type() == dtype);
    if (ok) {
      ts = {*mean, *var, wt ? *wt : Tensor(), bt ? *bt : Tensor()};
      eps = PyFloat_AS_DOUBLE(e);
    }
  }
  Py_XDECREF(d);
  if (PyErr_Occurred()) PyErr_Clear();
  return ok;
}

using GateForwardFn = std::vector<Tensor>(
    const Tensor&, at::TensorList, int64_t, bool, bool, at::TensorList, bool, int64_t,
    const Tensor&, const Tensor&, double, double, bool, const c10::optional<Tensor>&,
    const c10::optional<Tensor>&, const c10::optional<Tensor>&, const c10::optional<Tensor>&,
    const c10::optional<Tensor>&, double);

// residual_call's work: the output, or an undefined tensor where the Python path must run.
Tensor residual_run(PyObject* attn, PyObject* x_obj, PyObject* shortcut_obj, PyObject* norm) {
  if (c10::GradMode::is_enabled() || !entry_state.state) return Tensor();
  const Tensor* xp = tensor_of(x_obj);
  const Tensor* sp = tensor_of(shortcut_obj);
  if (!xp || !sp) return Tensor();
  const Tensor &x0 = *xp, &shortcut = *sp;
  // residual_relu's and use_fast's checks
  const auto dtype = x0.scalar_type();
  if (x0.dim() != 4 || !x0.is_cpu() || (dtype != at::kFloat && dtype != at::kDouble) ||
      shortcut.sizes() != x0.sizes() || shortcut.scalar_type() != dtype || !shortcut.is_cpu() ||
      at::autocast::is_autocast_enabled(at::kCPU) || torch::jit::tracer::isTracing() ||
      !backend_fast())
    return Tensor();
  // the gate: a registered class exactly (its own _fused_residual), in channel-spatial order
  // where the class has an order
  bool order = false, known = false;
  PyObject* gates = entry_state.gates;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(gates); ++i) {
    PyObject* g = PyList_GET_ITEM(gates, i);
    if (reinterpret_cast<PyObject*>(Py_TYPE(attn)) == PyTuple_GET_ITEM(g, 0)) {
      known = true;
      order = PyTuple_GET_ITEM(g, 1) == Py_True;
      break;
    }
  }
  if (!known || global_hooks()) return Tensor();
  const Keys& k = keys();
  py::object owner_dict = py::reinterpret_steal<py::object>(dict_of(attn));
  PyObject* od = owner_dict.ptr();
  if (!od || own_hooks(od)) return Tensor();
  const int64_t B = x0.size(0), C = x0.size(1), H = x0.size(2), W = x0.size(3);
  PyObject* ch = item(od, k.channels);  // check_input's channel count and non-empty sizes
  if (!ch || !PyLong_Check(ch) || PyLong_AsLongLong(ch) != C || B == 0 || H == 0 || W == 0)
    return Tensor();
  if (order) {
    PyObject* o = item(od, k.order);
    if (!o || !PyUnicode_Check(o) || PyUnicode_Compare(o, k.channel_spatial) != 0) return Tensor();
  }
  // the block's norm
  std::vector<Tensor> nts;
  double neps = 0;
  if (norm != Py_None && !eval_norm(norm, C, dtype, nts, neps)) return Tensor();
  // the kept plan
  PyObject* plan = item(od, k.plan);
  if (!plan) return Tensor();
  py::object fast = py::reinterpret_steal<py::object>(PyObject_GetAttr(plan, k.fast));
  PyObject* f = fast.ptr();
  if (!f || !PyTuple_Check(f) || PyTuple_GET_SIZE(f) != 14 ||
      !plan_valid(f, od, dtype == at::kDouble))
    return Tensor();
  // _run_plan's per-call checks
  PyObject* params = PyTuple_GET_ITEM(f, 8);
  std::vector<Tensor> ps;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(params); ++i) {
    const Tensor* t = tensor_of(PyTuple_GET_ITEM(params, i));
    if (!t || t->scalar_type() != dtype) return Tensor();
    ps.push_back(*t);
  }
  if (ps.size() != 8) return Tensor();
  if (PyTuple_GET_ITEM(f, 12) == Py_True && B * H * W == 1) return Tensor();  // its error
  PyObject* taps = PyTuple_GET_ITEM(f, 13);
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(taps); ++i)
    if (PyObject_IsTrue(PyTuple_GET_ITEM(taps, i)) != 0) return Tensor();  // an observed map
  PyObject* cfg = PyTuple_GET_ITEM(f, 9);
  const int64_t kind = PyLong_AsLongLong(PyTuple_GET_ITEM(cfg, 0));
  const bool use_avg = PyTuple_GET_ITEM(cfg, 1) == Py_True;
  const bool use_max = PyTuple_GET_ITEM(cfg, 2) == Py_True;
  const bool max_first = PyTuple_GET_ITEM(cfg, 3) == Py_True;
  PyObject* snorm = PyTuple_GET_ITEM(f, 10);
  PyObject* running = PyTuple_GET_ITEM(f, 11);
  const Tensor* rm = tensor_of(PyTuple_GET_ITEM(running, 0));
  const Tensor* rv = tensor_of(PyTuple_GET_ITEM(running, 1));
  if (!rm || !rv) return Tensor();
  int64_t bn = 0;
  double eps = 1e-5;
  if (snorm != Py_None) {  // eval mode only (in training the norm updates its statistics)
    py::object norm_dict = py::reinterpret_steal<py::object>(dict_of(snorm));
    PyObject* sd = norm_dict.ptr();
    PyObject* e = item(sd, k.eps);
    if (!sd || item(sd, k.training) != Py_False || !e || !PyFloat_Check(e)) return Tensor();
    eps = PyFloat_AS_DOUBLE(e);
    bn = rm->numel() > 0 ? 2 : 1;
  }
  if (PyErr_Occurred()) return Tensor();
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("attnlab_fast::gate_forward", "")
                             .typed<GateForwardFn>();
  py::gil_scoped_release release;
  // _layout(x), and the shortcut in x's layout (_format)
  const bool nchw = x0.is_contiguous();
  const bool nhwc = !nchw && x0.is_contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor x = nchw || nhwc ? x0 : x0.contiguous();
  const Tensor res =
      shortcut.contiguous(nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  auto norm_arg = [&](size_t i) {
    return nts.empty() || !nts[i].defined() ? c10::optional<Tensor>()
                                            : c10::optional<Tensor>(nts[i]);
  };
  if (entry_dry_run) return x;
  return op.call(x, at::TensorList(ps.data(), 4), kind, use_avg, use_max,
                 at::TensorList(ps.data() + 4, 4), max_first, bn, *rm, *rv, 0.0, eps, false, res,
                 norm_arg(0), norm_arg(1), norm_arg(2), norm_arg(3), neps)[0];
}

// fused.residual_relu's inference call: relu(attn(norm(x)) + shortcut), or None (nothing ran).
py::object residual_call(py::handle attn, py::handle x, py::handle shortcut, py::handle norm) {
  Tensor out = residual_run(attn.ptr(), x.ptr(), shortcut.ptr(), norm.ptr());
  if (PyErr_Occurred()) PyErr_Clear();  // a failed lookup: the Python path decides
  if (!out.defined()) return py::none();
  return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(out)));
}

void register_entry(py::handle state, py::handle gates, py::handle batchnorm,
                    py::handle module_globals, py::handle environ, py::handle env_key) {
  const bool env = !environ.is_none();
  TORCH_CHECK(PyDict_Check(state.ptr()) && PyList_Check(gates.ptr()) &&
                  PyType_Check(batchnorm.ptr()) && PyDict_Check(module_globals.ptr()) &&
                  (!env || (PyDict_Check(environ.ptr()) && PyBytes_Check(env_key.ptr()))),
              "attnlab_fast: register_entry(state dict, gates list, class, globals dict, "
              "environ dict or None, key bytes)");
  for (py::handle h : {state, gates, batchnorm, module_globals, environ, env_key})
    h.inc_ref();  // kept for good
  entry_state = {state.ptr(),
                 gates.ptr(),
                 batchnorm.ptr(),
                 module_globals.ptr(),
                 env ? environ.ptr() : nullptr,
                 env ? env_key.ptr() : nullptr};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("residual_call", &residual_call);
  m.def("register_entry", &register_entry);
  m.def("set_dry_run", [](bool on) { entry_dry_run = on; });
}
