// Paged KV-cache ops: what the CPU twin (csrc/cpu/kv_cache_ops.cpp) and the CUDA module
// (csrc/cuda/kv_cache_ops.cu) share -- the argument checks and the byte arithmetic of the layout --
// so both sides follow exactly the same rules.
//
// Cache layout (per layer, one tensor for K and one for V):
//
//     [num_blocks, block_size, num_kv_heads, head_dim]      (vLLM's "flash" layout)
//
// Why this layout: (1) one token's heads are contiguous, so store_kv writes a token as one
// contiguous row of num_kv_heads * head_dim elements (a single vectorized copy per token instead
// of one scattered head_dim-sized write per head); (2) a decode kernel reads a page as, per head, a
// [block_size, head_dim] tile with the fixed row stride num_kv_heads * head_dim -- a regular 2-D
// load that TMA / block pointers describe directly; (3) a block is one contiguous chunk of
// block_size * num_kv_heads * head_dim elements, so copy_blocks and swap_blocks are plain memcpys
// of whole blocks; (4) it is what vLLM and FlashAttention's paged kernels use, so caches can be
// handed to them without a transpose. The alternative [num_blocks, heads, block_size, head_dim]
// makes each head's tile fully contiguous but turns a token write into num_kv_heads strided writes.
//
// Element types are opaque: fp32, fp16 and bf16 are moved as raw 4- or 2-byte elements; nothing
// here does arithmetic on values. All strides passed in are in elements (as torch reports them);
// they are converted to bytes here.
//
// Bounds: a slot is block * block_size + offset; slot -1 means "skip" (padding). The CPU twin
// rejects every out-of-range slot / block index with ValueError before it writes anything. The CUDA
// kernels cannot raise without a host sync, so they skip out-of-range entries (never write out of
// bounds); the Python wrapper checks values on CUDA only in debug mode (OMNI_KERNELS_DEBUG=1).
#pragma once

#include <pybind11/pybind11.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

namespace omni_kv {

using Strides2 = std::array<int64_t, 2>;  // (token, head) strides of key / value, in elements
using Strides3 = std::array<int64_t, 3>;  // (block, page, head) strides of a cache, in elements

[[noreturn]] inline void fail(const std::string& msg) { throw pybind11::value_error(msg); }

template <typename T>
inline T* as_ptr(int64_t address) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(address));
}

inline void check_elem_size(int64_t elem_size) {
  if (elem_size != 2 && elem_size != 4)
    fail("elem_size must be 2 (fp16/bf16) or 4 (fp32), got " + std::to_string(elem_size));
}

inline void check_positive(const char* name, int64_t v) {
  if (v <= 0) fail(std::string(name) + " must be > 0, got " + std::to_string(v));
}

inline void check_non_negative(const char* name, int64_t v) {
  if (v < 0) fail(std::string(name) + " must be >= 0, got " + std::to_string(v));
}

inline void check_not_null(const char* name, int64_t address) {
  if (address == 0) fail(std::string(name) + " is a null pointer");
}

// The widest copy unit (16, 8, 4 or 2 bytes) that divides every address and byte stride given, so
// a kernel can move uint4 / uint2 / uint32 / uint16 words without misaligned accesses.
inline int copy_unit_bytes(std::initializer_list<int64_t> values) {
  int64_t unit = 16;
  for (int64_t v : values)
    while (unit > 1 && v % unit != 0) unit >>= 1;
  return static_cast<int>(unit);
}

// ---------------------------------------------------------------------------------------------
// store_kv
// ---------------------------------------------------------------------------------------------
struct StoreKVArgs {
  const char* key;
  const char* value;
  char* key_cache;
  char* value_cache;
  const int64_t* slot_mapping;  // [num_tokens], contiguous
  int64_t num_tokens;
  int64_t num_heads;
  int64_t row_bytes;  // head_dim * elem_size: one head's vector
  int64_t block_size;
  int64_t num_slots;  // num_blocks * block_size
  int64_t key_token, key_head, value_token, value_head;  // bytes
  int64_t kc_block, kc_page, kc_head;                     // bytes
  int64_t vc_block, vc_page, vc_head;                     // bytes
};

inline StoreKVArgs make_store_kv_args(int64_t key, int64_t value, int64_t key_cache, int64_t value_cache,
                                      int64_t slot_mapping, int64_t num_tokens, int64_t num_heads,
                                      int64_t head_dim, int64_t elem_size, Strides2 key_strides,
                                      Strides2 value_strides, int64_t num_blocks, int64_t block_size,
                                      Strides3 key_cache_strides, Strides3 value_cache_strides) {
  check_elem_size(elem_size);
  check_non_negative("num_tokens", num_tokens);
  check_positive("num_heads", num_heads);
  check_positive("head_dim", head_dim);
  check_non_negative("num_blocks", num_blocks);
  check_positive("block_size", block_size);
  if (num_blocks > std::numeric_limits<int64_t>::max() / block_size) fail("num_blocks * block_size overflows");
  for (int64_t s : key_strides) check_non_negative("key stride", s);
  for (int64_t s : value_strides) check_non_negative("value stride", s);
  for (int64_t s : key_cache_strides) check_non_negative("key_cache stride", s);
  for (int64_t s : value_cache_strides) check_non_negative("value_cache stride", s);
  if (num_tokens > 0) {
    check_not_null("key", key);
    check_not_null("value", value);
    check_not_null("slot_mapping", slot_mapping);
    if (num_blocks > 0) {
      check_not_null("key_cache", key_cache);
      check_not_null("value_cache", value_cache);
    }
  }
  StoreKVArgs a;
  a.key = as_ptr<const char>(key);
  a.value = as_ptr<const char>(value);
  a.key_cache = as_ptr<char>(key_cache);
  a.value_cache = as_ptr<char>(value_cache);
  a.slot_mapping = as_ptr<const int64_t>(slot_mapping);
  a.num_tokens = num_tokens;
  a.num_heads = num_heads;
  a.row_bytes = head_dim * elem_size;
  a.block_size = block_size;
  a.num_slots = num_blocks * block_size;
  a.key_token = key_strides[0] * elem_size;
  a.key_head = key_strides[1] * elem_size;
  a.value_token = value_strides[0] * elem_size;
  a.value_head = value_strides[1] * elem_size;
  a.kc_block = key_cache_strides[0] * elem_size;
  a.kc_page = key_cache_strides[1] * elem_size;
  a.kc_head = key_cache_strides[2] * elem_size;
  a.vc_block = value_cache_strides[0] * elem_size;
  a.vc_page = value_cache_strides[1] * elem_size;
  a.vc_head = value_cache_strides[2] * elem_size;
  return a;
}

inline int store_kv_copy_unit(const StoreKVArgs& a) {
  return copy_unit_bytes({static_cast<int64_t>(reinterpret_cast<uintptr_t>(a.key)),
                          static_cast<int64_t>(reinterpret_cast<uintptr_t>(a.value)),
                          static_cast<int64_t>(reinterpret_cast<uintptr_t>(a.key_cache)),
                          static_cast<int64_t>(reinterpret_cast<uintptr_t>(a.value_cache)), a.row_bytes,
                          a.key_token, a.key_head, a.value_token, a.value_head, a.kc_block, a.kc_page,
                          a.kc_head, a.vc_block, a.vc_page, a.vc_head});
}

// ---------------------------------------------------------------------------------------------
// copy_blocks / swap_blocks: whole blocks of block_elems contiguous elements, block stride free
// ---------------------------------------------------------------------------------------------
inline void check_block_copy_sizes(int64_t num_pairs, int64_t block_stride, int64_t block_elems, int64_t elem_size,
                                   const char* cache_name) {
  check_elem_size(elem_size);
  check_non_negative("number of block pairs", num_pairs);
  check_positive("block_elems", block_elems);
  if (block_stride < block_elems)
    fail(std::string(cache_name) + ": block stride " + std::to_string(block_stride) +
         " is smaller than the block size in elements " + std::to_string(block_elems) + " (blocks would overlap)");
}

inline std::string pair_text(int64_t i, int64_t src, int64_t dst) {
  return "block_mapping[" + std::to_string(i) + "] = (" + std::to_string(src) + ", " + std::to_string(dst) + ")";
}

// Host-side check of a host-resident [num_pairs, 2] mapping (the CPU twin and CUDA swap_blocks).
inline void check_block_mapping_host(const int64_t* mapping, int64_t num_pairs, int64_t src_num_blocks,
                                     int64_t dst_num_blocks) {
  for (int64_t i = 0; i < num_pairs; ++i) {
    const int64_t src = mapping[2 * i], dst = mapping[2 * i + 1];
    if (src < 0 || src >= src_num_blocks)
      fail(pair_text(i, src, dst) + ": source block out of range [0, " + std::to_string(src_num_blocks) + ")");
    if (dst < 0 || dst >= dst_num_blocks)
      fail(pair_text(i, src, dst) + ": destination block out of range [0, " + std::to_string(dst_num_blocks) + ")");
  }
}

}  // namespace omni_kv
