// omni_kernels._cuda: CUDA ops with raw device pointers and the stream passed as integers, so it
// builds against the CUDA runtime alone (the CPU torch wheel cannot compile torch's CUDA headers).
// The paged KV-cache kernels (issue #3) live in kv_cache_ops.cu.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include "kv_cache_ops.h"

#include <string>

namespace py = pybind11;

// (device count, "" ) or (0, reason): never throws, so importing works on a machine with no GPU.
static py::tuple device_status() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls are not poisoned
    return py::make_tuple(0, std::string("no CUDA device: cudaGetDeviceCount failed with error ") +
                                 std::to_string(static_cast<int>(err)) + " (" + cudaGetErrorString(err) + ")");
  }
  if (count == 0) return py::make_tuple(0, std::string("no CUDA device: cudaGetDeviceCount returned 0"));
  return py::make_tuple(count, std::string());
}

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "omni_kernels CUDA extension";
  m.def("device_status", &device_status, "(count, reason) of the visible CUDA devices");
  m.attr("cuda_runtime_version") = CUDART_VERSION;
  register_kv_cache_ops(m);
}
