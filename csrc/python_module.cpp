// Makes the shared library importable as the Python module gcnprune_fast._C. Importing it
// runs the static TORCH_LIBRARY registrations; the ops are then torch.ops.gcnprune.*.
// Not part of the CMake (libtorch-only) build.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
#ifdef GCNPRUNE_WITH_CUDA
  PyModule_AddIntConstant(m, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(m, "WITH_CUDA", 0);
#endif
  return m;
}
}
