// omni_kernels._C: the C++ CPU twin of the CUDA extension.
// The paged KV-cache ops (issue #3) live in kv_cache_ops.cpp.
#include <pybind11/pybind11.h>

#include "kv_cache_ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "omni_kernels CPU extension (C++ twin of the CUDA ops)";
  m.def("build_info", []() {
    py::dict info;
    info["cxx_standard"] = __cplusplus;
#if defined(__VERSION__)
    info["compiler"] = __VERSION__;
#endif
    return info;
  });
  register_kv_cache_ops(m);
}
