// Registration hook for the paged KV-cache ops of the CPU twin (csrc/cpu/kv_cache_ops.cpp).
#pragma once
#include <pybind11/pybind11.h>

void register_kv_cache_ops(pybind11::module_& m);
