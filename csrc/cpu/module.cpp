// omni_kernels._C: the C++ CPU twin of the CUDA extension.
// Issue #3 adds the paged KV-cache ops here; for now it reports how it was built.
#include <pybind11/pybind11.h>

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
}
