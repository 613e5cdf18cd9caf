// Paged KV-cache ops on CUDA: store_kv, copy_blocks, swap_blocks.
//
// Same arguments as the CPU twin (csrc/cpu/kv_cache_ops.cpp) plus (stream, device) at the end:
// raw addresses as ints, sizes, strides in elements, the cudaStream_t as an int. No torch headers,
// no host synchronization and no allocation, so every op can be captured in a CUDA graph; every
// launch / copy is checked and a failure becomes a RuntimeError carrying the CUDA error string.
//
// Layout ([num_blocks, block_size, num_kv_heads, head_dim], vLLM's flash layout) and bounds rules:
// see csrc/kv_cache_common.h and csrc/README.md. The kernels cannot raise without a host sync, so
// an out-of-range slot or block index is skipped (nothing is written out of bounds); the Python
// wrapper validates the values on CUDA when OMNI_KERNELS_DEBUG=1.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "kv_cache_common.h"
#include "kv_cache_ops.h"

namespace py = pybind11;
using namespace omni_kv;

namespace {

// ---------------------------------------------------------------------------------------------
// errors and device selection
// ---------------------------------------------------------------------------------------------
std::string cuda_error_text(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

void check_cuda(cudaError_t err, const char* op, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so later calls are not poisoned
  std::string msg = std::string("omni_kernels._cuda.") + op + ": " + what + " failed (" + cuda_error_text(err) + ")";
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver)
    msg = std::string("omni_kernels._cuda.") + op + ": no CUDA device (" + what + ": " + cuda_error_text(err) + ")";
  throw std::runtime_error(msg);
}

// Makes `device` current for the call and restores the caller's device afterwards. The Python side
// already runs under torch.cuda.device(...); this keeps the module correct on its own.
class DeviceGuard {
 public:
  DeviceGuard(int device, const char* op) {
    check_cuda(cudaGetDevice(&previous_), op, "cudaGetDevice");
    if (previous_ != device) {
      check_cuda(cudaSetDevice(device), op, "cudaSetDevice");
      changed_ = true;
    }
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

cudaStream_t as_stream(int64_t stream) { return reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(stream)); }

template <int kBytes>
struct CopyWord;
template <>
struct CopyWord<16> { using type = uint4; };
template <>
struct CopyWord<8> { using type = uint2; };
template <>
struct CopyWord<4> { using type = unsigned int; };
template <>
struct CopyWord<2> { using type = unsigned short; };

int threads_for(int64_t work) {
  int64_t t = (work + 31) / 32 * 32;
  return static_cast<int>(std::max<int64_t>(32, std::min<int64_t>(256, t)));
}

// ---------------------------------------------------------------------------------------------
// store_kv: one CUDA block per token; its threads copy the token's num_heads * head_dim row of K
// and of V in words of U (16 bytes when every address and stride allows it).
// ---------------------------------------------------------------------------------------------
template <typename U>
__global__ void store_kv_kernel(const StoreKVArgs a, const int units_per_row) {
  const int64_t token = blockIdx.x;
  const int64_t slot = a.slot_mapping[token];
  if (slot < 0 || slot >= a.num_slots) return;  // -1 = padding; out of range = skipped, never written
  const int64_t block = slot / a.block_size;
  const int64_t offset = slot - block * a.block_size;
  const char* k_src = a.key + token * a.key_token;
  const char* v_src = a.value + token * a.value_token;
  char* k_dst = a.key_cache + block * a.kc_block + offset * a.kc_page;
  char* v_dst = a.value_cache + block * a.vc_block + offset * a.vc_page;
  const int total = static_cast<int>(a.num_heads) * units_per_row;
  for (int i = threadIdx.x; i < total; i += blockDim.x) {
    const int h = i / units_per_row;
    const int64_t u = static_cast<int64_t>(i - h * units_per_row) * sizeof(U);
    *reinterpret_cast<U*>(k_dst + h * a.kc_head + u) = *reinterpret_cast<const U*>(k_src + h * a.key_head + u);
    *reinterpret_cast<U*>(v_dst + h * a.vc_head + u) = *reinterpret_cast<const U*>(v_src + h * a.value_head + u);
  }
}

template <int kBytes>
void launch_store_kv(const StoreKVArgs& a, cudaStream_t stream) {
  using U = typename CopyWord<kBytes>::type;
  const int units_per_row = static_cast<int>(a.row_bytes / kBytes);
  const int threads = threads_for(a.num_heads * units_per_row);
  store_kv_kernel<U><<<static_cast<unsigned int>(a.num_tokens), threads, 0, stream>>>(a, units_per_row);
}

void store_kv(int64_t key, int64_t value, int64_t key_cache, int64_t value_cache, int64_t slot_mapping,
              int64_t num_tokens, int64_t num_heads, int64_t head_dim, int64_t elem_size, Strides2 key_strides,
              Strides2 value_strides, int64_t num_blocks, int64_t block_size, Strides3 key_cache_strides,
              Strides3 value_cache_strides, int64_t stream, int device) {
  const StoreKVArgs a = make_store_kv_args(key, value, key_cache, value_cache, slot_mapping, num_tokens, num_heads,
                                           head_dim, elem_size, key_strides, value_strides, num_blocks, block_size,
                                           key_cache_strides, value_cache_strides);
  if (a.num_tokens > 0x7fffffff) fail("store_kv: at most 2^31 - 1 tokens per call");
  if (a.num_heads * head_dim > (1 << 24)) fail("store_kv: num_heads * head_dim is too large");
  if (a.num_tokens == 0) return;
  DeviceGuard guard(device, "store_kv");
  const cudaStream_t s = as_stream(stream);
  switch (store_kv_copy_unit(a)) {
    case 16: launch_store_kv<16>(a, s); break;
    case 8: launch_store_kv<8>(a, s); break;
    case 4: launch_store_kv<4>(a, s); break;
    default: launch_store_kv<2>(a, s); break;
  }
  check_cuda(cudaGetLastError(), "store_kv", "kernel launch");
}

// ---------------------------------------------------------------------------------------------
// copy_blocks: grid (pairs, layers); each CUDA block copies one (src -> dst) block of one layer's K
// and V cache. The layer addresses travel in the kernel's parameter block (no device pointer table,
// so nothing is allocated or uploaded), up to kMaxLayersPerLaunch layers per launch.
// ---------------------------------------------------------------------------------------------
constexpr int kMaxLayersPerLaunch = 64;  // 2 * 64 * 8 = 1 KiB of the 4 KiB kernel parameter space

struct LayerAddresses {
  char* key[kMaxLayersPerLaunch];
  char* value[kMaxLayersPerLaunch];
};

template <typename U>
__global__ void copy_blocks_kernel(const LayerAddresses layers, const int64_t* __restrict__ mapping,
                                   const int64_t num_blocks, const int64_t stride_bytes, const int64_t units) {
  const int64_t pair = blockIdx.x;
  const int64_t src = mapping[2 * pair], dst = mapping[2 * pair + 1];
  if (src < 0 || src >= num_blocks || dst < 0 || dst >= num_blocks || src == dst) return;
  const int layer = blockIdx.y;
  const U* k_src = reinterpret_cast<const U*>(layers.key[layer] + src * stride_bytes);
  U* k_dst = reinterpret_cast<U*>(layers.key[layer] + dst * stride_bytes);
  const U* v_src = reinterpret_cast<const U*>(layers.value[layer] + src * stride_bytes);
  U* v_dst = reinterpret_cast<U*>(layers.value[layer] + dst * stride_bytes);
  for (int64_t i = threadIdx.x; i < units; i += blockDim.x) {
    k_dst[i] = k_src[i];
    v_dst[i] = v_src[i];
  }
}

template <int kBytes>
void launch_copy_blocks(const LayerAddresses& layers, int n_layers, const int64_t* mapping, int64_t num_pairs,
                        int64_t num_blocks, int64_t stride_bytes, int64_t block_bytes, cudaStream_t stream) {
  using U = typename CopyWord<kBytes>::type;
  const int64_t units = block_bytes / kBytes;
  const dim3 grid(static_cast<unsigned int>(num_pairs), static_cast<unsigned int>(n_layers));
  copy_blocks_kernel<U><<<grid, threads_for(units), 0, stream>>>(layers, mapping, num_blocks, stride_bytes, units);
}

void copy_blocks(const std::vector<int64_t>& key_caches, const std::vector<int64_t>& value_caches,
                 int64_t block_mapping, int64_t num_pairs, int64_t num_blocks, int64_t block_stride,
                 int64_t block_elems, int64_t elem_size, int64_t stream, int device) {
  if (key_caches.size() != value_caches.size())
    fail("key_caches and value_caches must have the same number of layers, got " + std::to_string(key_caches.size()) +
         " and " + std::to_string(value_caches.size()));
  check_block_copy_sizes(num_pairs, block_stride, block_elems, elem_size, "key_caches");
  check_non_negative("num_blocks", num_blocks);
  if (num_pairs > 0x7fffffff) fail("copy_blocks: at most 2^31 - 1 block pairs per call");
  if (num_pairs == 0 || key_caches.empty()) return;
  check_not_null("block_mapping", block_mapping);
  const int64_t stride_bytes = block_stride * elem_size, block_bytes = block_elems * elem_size;
  int unit = copy_unit_bytes({stride_bytes, block_bytes});
  for (size_t l = 0; l < key_caches.size(); ++l) {
    check_not_null("key_caches[i]", key_caches[l]);
    check_not_null("value_caches[i]", value_caches[l]);
    unit = std::min(unit, copy_unit_bytes({key_caches[l], value_caches[l]}));
  }
  DeviceGuard guard(device, "copy_blocks");
  const cudaStream_t s = as_stream(stream);
  const int64_t* mapping = as_ptr<const int64_t>(block_mapping);
  for (size_t first = 0; first < key_caches.size(); first += kMaxLayersPerLaunch) {
    const int n = static_cast<int>(std::min<size_t>(kMaxLayersPerLaunch, key_caches.size() - first));
    LayerAddresses layers{};
    for (int l = 0; l < n; ++l) {
      layers.key[l] = as_ptr<char>(key_caches[first + l]);
      layers.value[l] = as_ptr<char>(value_caches[first + l]);
    }
    switch (unit) {
      case 16: launch_copy_blocks<16>(layers, n, mapping, num_pairs, num_blocks, stride_bytes, block_bytes, s); break;
      case 8: launch_copy_blocks<8>(layers, n, mapping, num_pairs, num_blocks, stride_bytes, block_bytes, s); break;
      case 4: launch_copy_blocks<4>(layers, n, mapping, num_pairs, num_blocks, stride_bytes, block_bytes, s); break;
      default: launch_copy_blocks<2>(layers, n, mapping, num_pairs, num_blocks, stride_bytes, block_bytes, s); break;
    }
    check_cuda(cudaGetLastError(), "copy_blocks", "kernel launch");
  }
}

// ---------------------------------------------------------------------------------------------
// swap_blocks: one cudaMemcpyAsync per block pair, on the given stream. The mapping lives in host
// memory (the loop reads it on the host, which needs no sync) and is validated before any copy.
// ---------------------------------------------------------------------------------------------
void swap_blocks(int64_t src_cache, int64_t dst_cache, int64_t block_mapping, int64_t num_pairs,
                 int64_t src_num_blocks, int64_t dst_num_blocks, int64_t src_block_stride, int64_t dst_block_stride,
                 int64_t block_elems, int64_t elem_size, bool src_on_device, bool dst_on_device, int64_t stream,
                 int device) {
  check_block_copy_sizes(num_pairs, src_block_stride, block_elems, elem_size, "src_cache");
  check_block_copy_sizes(num_pairs, dst_block_stride, block_elems, elem_size, "dst_cache");
  check_non_negative("src num_blocks", src_num_blocks);
  check_non_negative("dst num_blocks", dst_num_blocks);
  if (!src_on_device && !dst_on_device)
    fail("swap_blocks on the CUDA module needs a CUDA cache on at least one side (CPU to CPU is omni_kernels._C)");
  if (num_pairs == 0) return;
  check_not_null("block_mapping", block_mapping);
  check_not_null("src_cache", src_cache);
  check_not_null("dst_cache", dst_cache);
  const int64_t* mapping = as_ptr<const int64_t>(block_mapping);
  check_block_mapping_host(mapping, num_pairs, src_num_blocks, dst_num_blocks);
  const cudaMemcpyKind kind = src_on_device ? (dst_on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
                                            : cudaMemcpyHostToDevice;
  const char* src = as_ptr<const char>(src_cache);
  char* dst = as_ptr<char>(dst_cache);
  const int64_t src_stride = src_block_stride * elem_size, dst_stride = dst_block_stride * elem_size;
  const size_t block_bytes = static_cast<size_t>(block_elems * elem_size);
  DeviceGuard guard(device, "swap_blocks");
  const cudaStream_t s = as_stream(stream);
  for (int64_t i = 0; i < num_pairs; ++i) {
    check_cuda(cudaMemcpyAsync(dst + mapping[2 * i + 1] * dst_stride, src + mapping[2 * i] * src_stride, block_bytes,
                               kind, s),
               "swap_blocks", "cudaMemcpyAsync");
  }
}

}  // namespace

void register_kv_cache_ops(py::module_& m) {
  m.def("store_kv", &store_kv, py::arg("key"), py::arg("value"), py::arg("key_cache"), py::arg("value_cache"),
        py::arg("slot_mapping"), py::arg("num_tokens"), py::arg("num_heads"), py::arg("head_dim"),
        py::arg("elem_size"), py::arg("key_strides"), py::arg("value_strides"), py::arg("num_blocks"),
        py::arg("block_size"), py::arg("key_cache_strides"), py::arg("value_cache_strides"), py::arg("stream"),
        py::arg("device"),
        "Write token i's K/V rows into slot slot_mapping[i] (-1 = skip) on `stream`. Device addresses as ints.");
  m.def("copy_blocks", &copy_blocks, py::arg("key_caches"), py::arg("value_caches"), py::arg("block_mapping"),
        py::arg("num_pairs"), py::arg("num_blocks"), py::arg("block_stride"), py::arg("block_elems"),
        py::arg("elem_size"), py::arg("stream"), py::arg("device"),
        "Copy whole blocks (src, dst) within every layer's caches; block_mapping is a device [M, 2] int64 array.");
  m.def("swap_blocks", &swap_blocks, py::arg("src_cache"), py::arg("dst_cache"), py::arg("block_mapping"),
        py::arg("num_pairs"), py::arg("src_num_blocks"), py::arg("dst_num_blocks"), py::arg("src_block_stride"),
        py::arg("dst_block_stride"), py::arg("block_elems"), py::arg("elem_size"), py::arg("src_on_device"),
        py::arg("dst_on_device"), py::arg("stream"), py::arg("device"),
        "cudaMemcpyAsync whole blocks (src, dst) between a CUDA cache and a (pinned) host or CUDA cache; "
        "block_mapping is a host [M, 2] int64 array.");
}
