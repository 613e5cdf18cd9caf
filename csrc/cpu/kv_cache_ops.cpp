// The CPU twin of csrc/cuda/kv_cache_ops.cu: the same three paged KV-cache ops with the same
// arguments (raw addresses as ints, sizes, strides in elements), done with memcpy. Layout and
// bounds rules: see csrc/kv_cache_common.h and csrc/README.md.
//
// Unlike the CUDA kernels (which skip out-of-range entries because they cannot raise), the twin
// validates every slot / block index first and raises ValueError before it writes anything.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <vector>

#include "kv_cache_common.h"
#include "kv_cache_ops.h"

namespace py = pybind11;
using namespace omni_kv;

namespace {

void store_kv(int64_t key, int64_t value, int64_t key_cache, int64_t value_cache, int64_t slot_mapping,
              int64_t num_tokens, int64_t num_heads, int64_t head_dim, int64_t elem_size, Strides2 key_strides,
              Strides2 value_strides, int64_t num_blocks, int64_t block_size, Strides3 key_cache_strides,
              Strides3 value_cache_strides) {
  const StoreKVArgs a = make_store_kv_args(key, value, key_cache, value_cache, slot_mapping, num_tokens, num_heads,
                                           head_dim, elem_size, key_strides, value_strides, num_blocks, block_size,
                                           key_cache_strides, value_cache_strides);
  for (int64_t i = 0; i < a.num_tokens; ++i) {
    const int64_t slot = a.slot_mapping[i];
    if (slot < -1 || slot >= a.num_slots)
      fail("slot_mapping[" + std::to_string(i) + "] = " + std::to_string(slot) + " is out of range: slots are -1 (skip) or in [0, num_blocks * block_size = " +
           std::to_string(a.num_slots) + ")");
  }
  py::gil_scoped_release release;
  for (int64_t i = 0; i < a.num_tokens; ++i) {
    const int64_t slot = a.slot_mapping[i];
    if (slot < 0) continue;
    const int64_t block = slot / a.block_size, offset = slot % a.block_size;
    const char* k_src = a.key + i * a.key_token;
    const char* v_src = a.value + i * a.value_token;
    char* k_dst = a.key_cache + block * a.kc_block + offset * a.kc_page;
    char* v_dst = a.value_cache + block * a.vc_block + offset * a.vc_page;
    for (int64_t h = 0; h < a.num_heads; ++h) {
      std::memcpy(k_dst + h * a.kc_head, k_src + h * a.key_head, a.row_bytes);
      std::memcpy(v_dst + h * a.vc_head, v_src + h * a.value_head, a.row_bytes);
    }
  }
}

void copy_blocks(const std::vector<int64_t>& key_caches, const std::vector<int64_t>& value_caches,
                 int64_t block_mapping, int64_t num_pairs, int64_t num_blocks, int64_t block_stride,
                 int64_t block_elems, int64_t elem_size) {
  if (key_caches.size() != value_caches.size())
    fail("key_caches and value_caches must have the same number of layers, got " + std::to_string(key_caches.size()) +
         " and " + std::to_string(value_caches.size()));
  check_block_copy_sizes(num_pairs, block_stride, block_elems, elem_size, "key_caches");
  check_non_negative("num_blocks", num_blocks);
  if (num_pairs == 0 || key_caches.empty()) return;
  check_not_null("block_mapping", block_mapping);
  for (size_t l = 0; l < key_caches.size(); ++l) {
    check_not_null("key_caches[i]", key_caches[l]);
    check_not_null("value_caches[i]", value_caches[l]);
  }
  const int64_t* mapping = as_ptr<const int64_t>(block_mapping);
  check_block_mapping_host(mapping, num_pairs, num_blocks, num_blocks);
  const int64_t stride_bytes = block_stride * elem_size, block_bytes = block_elems * elem_size;
  py::gil_scoped_release release;
  for (size_t l = 0; l < key_caches.size(); ++l) {
    for (char* cache : {as_ptr<char>(key_caches[l]), as_ptr<char>(value_caches[l])}) {
      for (int64_t i = 0; i < num_pairs; ++i) {
        // memmove: a (b, b) pair is a harmless no-op rather than an overlapping memcpy.
        std::memmove(cache + mapping[2 * i + 1] * stride_bytes, cache + mapping[2 * i] * stride_bytes, block_bytes);
      }
    }
  }
}

void swap_blocks(int64_t src_cache, int64_t dst_cache, int64_t block_mapping, int64_t num_pairs,
                 int64_t src_num_blocks, int64_t dst_num_blocks, int64_t src_block_stride, int64_t dst_block_stride,
                 int64_t block_elems, int64_t elem_size) {
  check_block_copy_sizes(num_pairs, src_block_stride, block_elems, elem_size, "src_cache");
  check_block_copy_sizes(num_pairs, dst_block_stride, block_elems, elem_size, "dst_cache");
  check_non_negative("src num_blocks", src_num_blocks);
  check_non_negative("dst num_blocks", dst_num_blocks);
  if (num_pairs == 0) return;
  check_not_null("block_mapping", block_mapping);
  check_not_null("src_cache", src_cache);
  check_not_null("dst_cache", dst_cache);
  const int64_t* mapping = as_ptr<const int64_t>(block_mapping);
  check_block_mapping_host(mapping, num_pairs, src_num_blocks, dst_num_blocks);
  const char* src = as_ptr<const char>(src_cache);
  char* dst = as_ptr<char>(dst_cache);
  const int64_t src_stride = src_block_stride * elem_size, dst_stride = dst_block_stride * elem_size;
  const int64_t block_bytes = block_elems * elem_size;
  py::gil_scoped_release release;
  for (int64_t i = 0; i < num_pairs; ++i)
    std::memmove(dst + mapping[2 * i + 1] * dst_stride, src + mapping[2 * i] * src_stride, block_bytes);
}

}  // namespace

void register_kv_cache_ops(py::module_& m) {
  m.def("store_kv", &store_kv, py::arg("key"), py::arg("value"), py::arg("key_cache"), py::arg("value_cache"),
        py::arg("slot_mapping"), py::arg("num_tokens"), py::arg("num_heads"), py::arg("head_dim"),
        py::arg("elem_size"), py::arg("key_strides"), py::arg("value_strides"), py::arg("num_blocks"),
        py::arg("block_size"), py::arg("key_cache_strides"), py::arg("value_cache_strides"),
        "Write token i's K/V rows into slot slot_mapping[i] (-1 = skip). Addresses are ints, strides in elements.");
  m.def("copy_blocks", &copy_blocks, py::arg("key_caches"), py::arg("value_caches"), py::arg("block_mapping"),
        py::arg("num_pairs"), py::arg("num_blocks"), py::arg("block_stride"), py::arg("block_elems"),
        py::arg("elem_size"), "Copy whole blocks (src, dst) within every layer's key and value cache.");
  m.def("swap_blocks", &swap_blocks, py::arg("src_cache"), py::arg("dst_cache"), py::arg("block_mapping"),
        py::arg("num_pairs"), py::arg("src_num_blocks"), py::arg("dst_num_blocks"), py::arg("src_block_stride"),
        py::arg("dst_block_stride"), py::arg("block_elems"), py::arg("elem_size"),
        "Copy whole blocks (src, dst) from src_cache to dst_cache (two CPU caches).");
}
