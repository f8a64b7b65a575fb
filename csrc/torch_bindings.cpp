// The C++ ops, declared once (torch.ops.vaekernels_cpp.*) and implemented for CPU.
// Python sees them through vaekernels/backends/cpp.py, which also registers their fake implementations.
#include <Python.h>
#include <torch/library.h>

#include "vaekernels.h"

TORCH_LIBRARY(vaekernels_cpp, m) {
  // Causal 3-D conv (see vaekernels.ops.causal_conv3d): 2*pt zero frames minus the cache's frames in front,
  // ph/pw on both sides in space, bias and residual added. Output in x's memory format.
  m.def("causal_conv3d(Tensor x, Tensor weight, Tensor? bias, Tensor? cache, int[] stride, int[] padding, "
        "Tensor? residual) -> Tensor");
  // The same, written into `out` (any strided tensor of the output's shape).
  m.def("causal_conv3d_out(Tensor x, Tensor weight, Tensor? bias, Tensor? cache, int[] stride, int[] padding, "
        "Tensor? residual, Tensor(a!) out) -> ()");
  // Its weight's gradient given the output's gradient `grad`, for 3x3 spatial taps with padding 1 and stride 1.
  m.def("causal_conv3d_weight_grad(Tensor grad, Tensor x, Tensor weight, Tensor? cache, int[] stride, "
        "int[] padding) -> Tensor");
  // Its data gradient (stride 1) as a conv: the output's gradient `grad`, `front` zero frames before it and kt - 1
  // after, convolved with the weight's channels swapped and taps reversed; padding (ph, pw) in space.
  m.def("causal_conv3d_data_grad(Tensor grad, Tensor weight, int front, int[] padding) -> Tensor");
  // x / max(||x||_2 over dim 1, eps) * sqrt(C) * gamma, then SiLU if `silu`; float32 statistics.
  m.def("rms_norm_silu(Tensor x, Tensor gamma, bool silu, float eps) -> Tensor");
  // The same, written into `out` (x's shape, any strides).
  m.def("rms_norm_silu_out(Tensor x, Tensor gamma, bool silu, float eps, Tensor(a!) out) -> ()");
  // Its gradients (x's in x's memory format, gamma's in gamma's shape) given the output's gradient `grad`.
  m.def("rms_norm_silu_backward(Tensor grad, Tensor x, Tensor gamma, bool silu, float eps) -> (Tensor, Tensor)");
  // Nearest 2x upsampling in H and W, then a 3x3 conv with padding 1, frame by frame: [N,C,T,H,W] -> [N,Cout,T,2H,2W];
  // `residual` (the output's shape) added.
  m.def("upsample_conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor? residual) -> Tensor");
  // Wan2.2's downsampling shortcut: ft x fs x fs blocks of (zeros, cache, x) into channels, groups averaged.
  m.def("avg_down3d(Tensor x, Tensor? cache, int zeros, int factor_t, int factor_s, int out_channels) -> Tensor");
  // Wan2.2's upsampling shortcut: channels repeated and unfolded into ft x fs x fs blocks, the first `drop` frames
  // left out.
  m.def("dup_up3d(Tensor x, int factor_t, int factor_s, int out_channels, int drop) -> Tensor");
}

TORCH_LIBRARY_IMPL(vaekernels_cpp, CPU, m) {
  m.impl("causal_conv3d", &vaekernels::causal_conv3d);
  m.impl("causal_conv3d_out", &vaekernels::causal_conv3d_out);
  m.impl("causal_conv3d_weight_grad", &vaekernels::causal_conv3d_weight_grad);
  m.impl("causal_conv3d_data_grad", &vaekernels::causal_conv3d_data_grad);
  m.impl("rms_norm_silu", &vaekernels::rms_norm_silu);
  m.impl("rms_norm_silu_out", &vaekernels::rms_norm_silu_out);
  m.impl("rms_norm_silu_backward", &vaekernels::rms_norm_silu_backward);
  m.impl("upsample_conv2d", &vaekernels::upsample_conv2d);
  m.impl("avg_down3d", &vaekernels::avg_down3d);
  m.impl("dup_up3d", &vaekernels::dup_up3d);
}

namespace {

PyObject* call_noexcept(void (*fn)()) {
  try {
    fn();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* cpu_pool_enter(PyObject*, PyObject*) { return call_noexcept(&vaekernels::cpu_pool_enter); }
PyObject* cpu_pool_exit(PyObject*, PyObject*) { return call_noexcept(&vaekernels::cpu_pool_exit); }

PyObject* bf16_on_amx(PyObject*, PyObject*) { return PyBool_FromLong(vaekernels::bf16_on_amx()); }

PyObject* allow_amx(PyObject*, PyObject* allowed) {
  vaekernels::allow_amx(PyObject_IsTrue(allowed) == 1);
  Py_RETURN_NONE;
}

PyObject* brgemm_convs_serve(PyObject*, PyObject* bf16) {
  return PyBool_FromLong(vaekernels::brgemm_convs_serve(PyObject_IsTrue(bf16) == 1 ? at::kBFloat16 : at::kFloat));
}

PyObject* derived_weights_made(PyObject*, PyObject*) {
  return PyLong_FromUnsignedLongLong(vaekernels::derived_weights_made());
}

PyMethodDef methods[] = {
    {"bf16_on_amx", bf16_on_amx, METH_NOARGS, "Whether bf16 convs run on oneDNN's AMX kernels (vaekernels.h)."},
    {"allow_amx", allow_amx, METH_O, "allow_amx(False): act as on a CPU without AMX (VAEKERNELS_CPU_AMX=0)."},
    {"cpu_pool_enter", cpu_pool_enter, METH_NOARGS, "Start (or nest) a span of the CPU block pool (cpu_pool.cpp)."},
    {"cpu_pool_exit", cpu_pool_exit, METH_NOARGS, "End the span: unused pooled blocks go back to the OS."},
    {"brgemm_convs_serve", brgemm_convs_serve, METH_O,
     "brgemm_convs_serve(bf16): whether the brgemm convs (Winograd, strided, weight gradient) run that dtype here."},
    {"derived_weights_made", derived_weights_made, METH_NOARGS, "Derived weights made so far (for tests)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// Importing vaekernels._C loads this library, whose static initialisers register the ops above; the module
// itself holds the CPU pool's two functions, the AMX query and switch, and a counter the tests read.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module);
}
