// Registration hook for the paged KV-cache ops of the CUDA module (csrc/cuda/kv_cache_ops.cu).
#pragma once
#include <pybind11/pybind11.h>

void register_kv_cache_ops(pybind11::module_& m);
