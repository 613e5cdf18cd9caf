"""Paged KV-cache ops: the C++ CPU twin against the plain-torch reference (bit-exact: they only move
data), every ValueError, torch.library.opcheck, and the CUDA module (built, imports without a GPU,
carries sm_80 and sm_90 code)."""
import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import omni_kernels
from omni_kernels import extension
from omni_kernels.kv_cache_ops import copy_blocks, debug_enabled, store_kv, swap_blocks
from omni_kernels.reference.kv_cache_ops import copy_blocks_reference, store_kv_reference, swap_blocks_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _random_slots(n_tokens: int, num_slots: int, n_skipped: int) -> torch.Tensor:
    slots = torch.randperm(num_slots)[:n_tokens]
    slots[torch.randperm(n_tokens)[:n_skipped]] = -1
    return slots


def _kv(n_tokens, heads, head_dim, dtype, layout):
    """key/value (N, Hk, D) in one of the layouts the op accepts."""
    if layout == "contiguous":
        make = lambda: torch.randn(n_tokens, heads, head_dim).to(dtype)  # noqa: E731
    elif layout == "fused_qkv":  # columns of a fused qkv projection: token stride > Hk * D
        q_width = 3 * heads * head_dim
        qkv = torch.randn(n_tokens, q_width + 2 * heads * head_dim + 8).to(dtype)
        key = qkv[:, q_width:q_width + heads * head_dim].view(n_tokens, heads, head_dim)
        value = qkv[:, q_width + heads * head_dim:q_width + 2 * heads * head_dim].view(n_tokens, heads, head_dim)
        assert key.stride(0) == qkv.shape[1] and not key.is_contiguous()
        return key, value
    elif layout == "head_major":  # (Hk, N, D) transposed: head stride N * D, token stride D
        make = lambda: torch.randn(heads, n_tokens, head_dim).to(dtype).transpose(0, 1)  # noqa: E731
    else:
        raise AssertionError(layout)
    return make(), make()


def _caches(num_blocks, block_size, heads, head_dim, dtype, combined=False):
    if combined:  # key_cache / value_cache as views of one [num_blocks, 2, ...] allocation
        kv = torch.randn(num_blocks, 2, block_size, heads, head_dim).to(dtype)
        return kv[:, 0], kv[:, 1]
    return (torch.randn(num_blocks, block_size, heads, head_dim).to(dtype),
            torch.randn(num_blocks, block_size, heads, head_dim).to(dtype))


def _store_and_compare(key, value, key_cache, value_cache, slots):
    ref_k, ref_v = key_cache.clone(), value_cache.clone()
    store_kv_reference(key, value, ref_k, ref_v, slots)
    assert not torch.equal(ref_k, key_cache) and not torch.equal(ref_v, value_cache)  # something to write
    store_kv(key, value, key_cache, value_cache, slots)
    assert torch.equal(key_cache, ref_k) and torch.equal(value_cache, ref_v)


# ------------------------------------------------------------------------------------------------
# store_kv
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize("block_size", [16, 32, 256])
def test_store_kv_matches_reference(dtype, head_dim, block_size):
    heads, num_blocks = 2, 5
    n_tokens = min(3 * block_size, 200)
    key, value = _kv(n_tokens, heads, head_dim, dtype, "contiguous")
    key_cache, value_cache = _caches(num_blocks, block_size, heads, head_dim, dtype)
    slots = _random_slots(n_tokens, num_blocks * block_size, n_skipped=n_tokens // 5)
    _store_and_compare(key, value, key_cache, value_cache, slots)


@pytest.mark.parametrize("layout", ["fused_qkv", "head_major"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("combined_cache", [False, True])
def test_store_kv_strided_views(layout, dtype, combined_cache):
    heads, head_dim, block_size, num_blocks, n_tokens = 4, 80, 16, 6, 50
    key, value = _kv(n_tokens, heads, head_dim, dtype, layout)
    key_cache, value_cache = _caches(num_blocks, block_size, heads, head_dim, dtype, combined=combined_cache)
    slots = _random_slots(n_tokens, num_blocks * block_size, n_skipped=7)
    _store_and_compare(key, value, key_cache, value_cache, slots)


def test_store_kv_skips_padding_and_leaves_other_slots():
    key, value = _kv(4, 2, 64, torch.float16, "contiguous")
    key_cache, value_cache = _caches(2, 16, 2, 64, torch.float16)
    before_k, before_v = key_cache.clone(), value_cache.clone()
    store_kv(key, value, key_cache, value_cache, torch.tensor([17, -1, 0, -1]))
    assert torch.equal(key_cache[1, 1], key[0]) and torch.equal(value_cache[1, 1], value[0])
    assert torch.equal(key_cache[0, 0], key[2]) and torch.equal(value_cache[0, 0], value[2])
    written = torch.zeros(2, 16, dtype=torch.bool)
    written[1, 1] = written[0, 0] = True
    assert torch.equal(key_cache[~written], before_k[~written]) and torch.equal(value_cache[~written], before_v[~written])
    store_kv(key[:0], value[:0], key_cache, value_cache, torch.empty(0, dtype=torch.int64))  # no tokens: no-op


def test_store_kv_decode_step_all_padding():
    key_cache, value_cache = _caches(3, 16, 2, 128, torch.bfloat16)
    before = key_cache.clone(), value_cache.clone()
    key, value = _kv(8, 2, 128, torch.bfloat16, "contiguous")
    store_kv(key, value, key_cache, value_cache, torch.full((8,), -1))
    assert torch.equal(key_cache, before[0]) and torch.equal(value_cache, before[1])


# ------------------------------------------------------------------------------------------------
# copy_blocks
# ------------------------------------------------------------------------------------------------
def _block_mapping(num_blocks, n_pairs, n_sources):
    """Copy-on-write forks of shared prefix blocks: n_sources sources, each feeding one or more of
    n_pairs distinct destinations that are not sources themselves."""
    perm = torch.randperm(num_blocks)
    sources, dests = perm[:n_sources], perm[n_sources:n_sources + n_pairs]
    src = sources[torch.arange(n_pairs) % n_sources]
    return torch.stack([src, dests], dim=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim,block_size", [(64, 16), (80, 32), (128, 256)])
def test_copy_blocks_matches_reference(dtype, head_dim, block_size):
    layers, num_blocks, heads = 3, 12, 2
    caches = [_caches(num_blocks, block_size, heads, head_dim, dtype) for _ in range(layers)]
    key_caches, value_caches = [c[0] for c in caches], [c[1] for c in caches]
    mapping = _block_mapping(num_blocks, n_pairs=5, n_sources=2)
    ref_k, ref_v = [k.clone() for k in key_caches], [v.clone() for v in value_caches]
    copy_blocks_reference(ref_k, ref_v, mapping)
    copy_blocks(key_caches, value_caches, mapping)
    for got, want in zip(key_caches + value_caches, ref_k + ref_v):
        assert torch.equal(got, want)
    src, dst = mapping[0].tolist()
    assert torch.equal(key_caches[2][dst], key_caches[2][src])


def test_copy_blocks_on_views_of_combined_caches():
    caches = [_caches(9, 16, 4, 64, torch.float16, combined=True) for _ in range(2)]
    key_caches, value_caches = [c[0] for c in caches], [c[1] for c in caches]
    assert key_caches[0].stride(0) == 2 * 16 * 4 * 64
    mapping = _block_mapping(9, n_pairs=4, n_sources=1)
    ref_k, ref_v = [k.clone() for k in key_caches], [v.clone() for v in value_caches]
    copy_blocks_reference(ref_k, ref_v, mapping)
    copy_blocks(key_caches, value_caches, mapping)
    for got, want in zip(key_caches + value_caches, ref_k + ref_v):
        assert torch.equal(got, want)


def test_copy_blocks_empty():
    k, v = _caches(4, 16, 2, 64, torch.float32)
    before = k.clone()
    copy_blocks([k], [v], torch.empty(0, 2, dtype=torch.int64))
    copy_blocks([], [], torch.empty(0, 2, dtype=torch.int64))
    assert torch.equal(k, before)


# ------------------------------------------------------------------------------------------------
# swap_blocks (CPU -> CPU on this machine)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim,block_size", [(64, 16), (80, 32), (128, 256)])
def test_swap_blocks_cpu_matches_reference(dtype, head_dim, block_size):
    src_cache, _ = _caches(10, block_size, 2, head_dim, dtype)
    _, dst_cache = _caches(6, block_size, 2, head_dim, dtype, combined=True)  # a view: block stride 2x
    mapping = torch.stack([torch.randperm(10)[:4], torch.randperm(6)[:4]], dim=1)
    ref = dst_cache.clone()
    swap_blocks_reference(src_cache, ref, mapping)
    src_before = src_cache.clone()
    swap_blocks(src_cache, dst_cache, mapping)
    assert torch.equal(dst_cache, ref) and torch.equal(src_cache, src_before)
    back = torch.zeros_like(src_cache)
    swap_blocks(dst_cache, back, mapping.flip(1))  # and back
    assert torch.equal(back[mapping[:, 0]], src_cache[mapping[:, 0]])


# ------------------------------------------------------------------------------------------------
# validation: every ValueError names its argument, and nothing is written
# ------------------------------------------------------------------------------------------------
def _store_inputs(**over):
    k, v = _caches(4, 16, 2, 64, torch.float16)
    args = dict(key=torch.randn(5, 2, 64).half(), value=torch.randn(5, 2, 64).half(), key_cache=k, value_cache=v,
                slot_mapping=torch.tensor([0, 1, 2, -1, 63]))
    args.update(over)
    return args


STORE_ERRORS = {
    "key not a tensor": (dict(key=[1.0]), "key"),
    "key ndim": (dict(key=torch.randn(5, 128).half()), "key"),
    "key dtype int": (dict(key=torch.zeros(5, 2, 64, dtype=torch.int16)), "key"),
    "key vs cache dtype": (dict(key=torch.randn(5, 2, 64), value=torch.randn(5, 2, 64)), "key.*key_cache"),
    "value vs cache dtype": (dict(value=torch.randn(5, 2, 64).bfloat16()), "value"),
    "value shape": (dict(value=torch.randn(4, 2, 64).half()), "value"),
    "heads mismatch": (dict(key=torch.randn(5, 4, 64).half(), value=torch.randn(5, 4, 64).half()), "key_cache"),
    "head_dim mismatch": (dict(key=torch.randn(5, 2, 80).half(), value=torch.randn(5, 2, 80).half()), "key_cache"),
    "key last dim strided": (dict(key=torch.randn(5, 2, 128).half()[..., ::2]), "key"),
    "key_cache ndim": (dict(key_cache=torch.randn(64, 2, 64).half()), "key_cache"),
    "key_cache float64": (dict(key_cache=torch.randn(4, 16, 2, 64, dtype=torch.float64)), "key_cache"),
    "value_cache shape": (dict(value_cache=torch.randn(5, 16, 2, 64).half()), "value_cache"),
    "value_cache dtype": (dict(value_cache=torch.randn(4, 16, 2, 64).bfloat16()), "value_cache"),
    "cache last dim strided": (dict(key_cache=torch.randn(4, 16, 2, 128).half()[..., ::2]), "key_cache"),
    "cache on meta": (dict(key_cache=torch.empty(4, 16, 2, 64, dtype=torch.float16, device="meta")), "key_cache"),
    "slot_mapping dtype": (dict(slot_mapping=torch.tensor([0, 1, 2, -1, 63], dtype=torch.int32)), "slot_mapping"),
    "slot_mapping ndim": (dict(slot_mapping=torch.tensor([[0, 1, 2, -1, 63]])), "slot_mapping"),
    "slot_mapping length": (dict(slot_mapping=torch.tensor([0, 1, 2, -1])), "slot_mapping"),
    "slot too large": (dict(slot_mapping=torch.tensor([0, 1, 2, -1, 64])), "slot_mapping"),
    "slot below -1": (dict(slot_mapping=torch.tensor([0, 1, -2, -1, 5])), "slot_mapping"),
    "duplicate slot": (dict(slot_mapping=torch.tensor([0, 1, 1, -1, 5])), "slot_mapping"),
}


@pytest.mark.parametrize("case", list(STORE_ERRORS))
def test_store_kv_errors(case):
    over, pattern = STORE_ERRORS[case]
    args = _store_inputs(**over)
    caches = [t.clone() for t in (args["key_cache"], args["value_cache"]) if isinstance(t, torch.Tensor) and t.device.type == "cpu"]
    with pytest.raises(ValueError, match=pattern):
        store_kv(**args)
    after = [t for t in (args["key_cache"], args["value_cache"]) if isinstance(t, torch.Tensor) and t.device.type == "cpu"]
    assert all(torch.equal(a, b) for a, b in zip(after, caches))  # nothing written before the error


def test_value_checks_on_cpu_ignore_debug_flag(monkeypatch):
    monkeypatch.setenv("OMNI_KERNELS_DEBUG", "0")
    assert not debug_enabled() and debug_enabled(True)
    monkeypatch.setenv("OMNI_KERNELS_DEBUG", "1")
    assert debug_enabled() and not debug_enabled(False)
    with pytest.raises(ValueError, match="slot_mapping"):
        store_kv(**_store_inputs(slot_mapping=torch.tensor([0, 1, 2, -1, 99])), debug=False)


def _copy_inputs(**over):
    caches = [_caches(6, 16, 2, 64, torch.float32) for _ in range(2)]
    args = dict(key_caches=[c[0] for c in caches], value_caches=[c[1] for c in caches],
                block_mapping=torch.tensor([[0, 3], [0, 4], [1, 5]]))
    args.update(over)
    return args


COPY_ERRORS = {
    "key_caches not a list": (dict(key_caches=torch.randn(6, 16, 2, 64)), "key_caches"),
    "layer counts": (dict(value_caches=[torch.randn(6, 16, 2, 64)]), "value_caches"),
    "layer dtype": (dict(value_caches=[torch.randn(6, 16, 2, 64), torch.randn(6, 16, 2, 64).half()]), r"value_caches\[1\]"),
    "layer shape": (dict(value_caches=[torch.randn(6, 16, 2, 64), torch.randn(7, 16, 2, 64)]), r"value_caches\[1\]"),
    "layer strides": (dict(value_caches=[torch.randn(6, 16, 2, 64), torch.randn(6, 2, 16, 2, 64)[:, 0]]), r"value_caches\[1\]"),
    "block not contiguous": (dict(key_caches=[torch.randn(6, 2, 16, 64).transpose(1, 2)] * 2,
                                  value_caches=[torch.randn(6, 2, 16, 64).transpose(1, 2)] * 2), r"key_caches\[0\]"),
    "mapping dtype": (dict(block_mapping=torch.tensor([[0, 3]], dtype=torch.int32)), "block_mapping"),
    "mapping shape": (dict(block_mapping=torch.tensor([0, 3])), "block_mapping"),
    "mapping width": (dict(block_mapping=torch.tensor([[0, 3, 4]])), "block_mapping"),
    "src out of range": (dict(block_mapping=torch.tensor([[6, 3]])), "block_mapping"),
    "dst out of range": (dict(block_mapping=torch.tensor([[0, -1]])), "block_mapping"),
    "dst twice": (dict(block_mapping=torch.tensor([[0, 3], [1, 3]])), "block_mapping"),
    "dst is a source": (dict(block_mapping=torch.tensor([[0, 3], [3, 4]])), "block_mapping"),
}


@pytest.mark.parametrize("case", list(COPY_ERRORS))
def test_copy_blocks_errors(case):
    over, pattern = COPY_ERRORS[case]
    args = _copy_inputs(**over)
    with pytest.raises(ValueError, match=pattern):
        copy_blocks(**args)


def _swap_inputs(**over):
    args = dict(src_cache=torch.randn(6, 16, 2, 64).half(), dst_cache=torch.zeros(3, 16, 2, 64).half(),
                block_mapping=torch.tensor([[5, 0], [1, 2]]))
    args.update(over)
    return args


SWAP_ERRORS = {
    "src ndim": (dict(src_cache=torch.randn(6, 16, 128).half()), "src_cache"),
    "dst dtype": (dict(dst_cache=torch.zeros(3, 16, 2, 64)), "dst_cache"),
    "block shape": (dict(dst_cache=torch.zeros(3, 32, 2, 64).half()), "dst_cache"),
    "dst block not contiguous": (dict(dst_cache=torch.zeros(3, 2, 16, 64).half().transpose(1, 2)), "dst_cache"),
    "mapping dtype": (dict(block_mapping=torch.tensor([[5, 0]], dtype=torch.int32)), "block_mapping"),
    "mapping shape": (dict(block_mapping=torch.tensor([[5, 0, 1]])), "block_mapping"),
    "src out of range": (dict(block_mapping=torch.tensor([[6, 0]])), "block_mapping"),
    "dst out of range": (dict(block_mapping=torch.tensor([[0, 3]])), "block_mapping"),
    "negative": (dict(block_mapping=torch.tensor([[-1, 0]])), "block_mapping"),
    "dst twice": (dict(block_mapping=torch.tensor([[0, 1], [2, 1]])), "block_mapping"),
}


@pytest.mark.parametrize("case", list(SWAP_ERRORS))
def test_swap_blocks_errors(case):
    over, pattern = SWAP_ERRORS[case]
    args = _swap_inputs(**over)
    before = args["dst_cache"].clone()
    with pytest.raises(ValueError, match=pattern):
        swap_blocks(**args)
    assert torch.equal(args["dst_cache"], before)


def test_swap_blocks_rejects_shared_memory():
    cache = torch.randn(6, 16, 2, 64)
    with pytest.raises(ValueError, match="copy_blocks"):
        swap_blocks(cache, cache, torch.tensor([[0, 1]]))


def test_cpu_twin_bounds_checks_itself():
    """The C++ twin raises ValueError on its own (no Python validation in front of it)."""
    C = extension._C
    key, value = torch.randn(2, 2, 64), torch.randn(2, 2, 64)
    k, v = torch.zeros(2, 16, 2, 64), torch.zeros(2, 16, 2, 64)
    for bad in ([0, 32], [0, -2]):
        slots = torch.tensor(bad)
        with pytest.raises(ValueError, match=r"slot_mapping\[1\]"):
            C.store_kv(key.data_ptr(), value.data_ptr(), k.data_ptr(), v.data_ptr(), slots.data_ptr(), 2, 2, 64, 4,
                       key.stride()[:2], value.stride()[:2], 2, 16, k.stride()[:3], v.stride()[:3])
    assert k.count_nonzero() == 0  # the valid first token was not written either
    mapping = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"block_mapping\[1\].*destination"):
        C.copy_blocks([k.data_ptr()], [v.data_ptr()], mapping.data_ptr(), 2, 2, 2048, 2048, 4)
    with pytest.raises(ValueError, match=r"block_mapping\[1\].*destination"):
        C.swap_blocks(k.data_ptr(), v.data_ptr(), mapping.data_ptr(), 2, 2, 2, 2048, 2048, 2048, 4)
    with pytest.raises(ValueError, match="elem_size"):
        C.copy_blocks([k.data_ptr()], [v.data_ptr()], mapping.data_ptr(), 1, 2, 2048, 2048, 8)
    with pytest.raises(ValueError, match="null pointer"):
        C.swap_blocks(0, v.data_ptr(), mapping.data_ptr(), 1, 2, 2, 2048, 2048, 2048, 4)


def test_direct_torch_ops_call_is_validated():
    """torch.ops.omni_kernels.* bypasses the wrapper; the op still validates shapes (no corruption)."""
    args = _store_inputs(key=torch.randn(5, 4, 64).half(), value=torch.randn(5, 4, 64).half())
    with pytest.raises(ValueError, match="key_cache"):
        torch.ops.omni_kernels.store_kv(*args.values())
    args = _store_inputs(slot_mapping=torch.tensor([0, 1, 2, -1, 64]))
    with pytest.raises(ValueError, match="slot_mapping"):  # the C++ twin's own check
        torch.ops.omni_kernels.store_kv(*args.values())


# ------------------------------------------------------------------------------------------------
# torch.library
# ------------------------------------------------------------------------------------------------
def test_opcheck_store_kv():
    key, value = _kv(20, 2, 64, torch.float16, "fused_qkv")
    k, v = _caches(4, 16, 2, 64, torch.float16)
    torch.library.opcheck(torch.ops.omni_kernels.store_kv.default, (key, value, k, v, _random_slots(20, 64, 3)))


def test_opcheck_copy_blocks():
    caches = [_caches(8, 16, 2, 64, torch.bfloat16) for _ in range(2)]
    torch.library.opcheck(torch.ops.omni_kernels.copy_blocks.default,
                          ([c[0] for c in caches], [c[1] for c in caches], _block_mapping(8, 3, 2)))


def test_opcheck_swap_blocks():
    src, dst = _caches(8, 16, 2, 64, torch.float32)[0], torch.zeros(4, 16, 2, 64)
    torch.library.opcheck(torch.ops.omni_kernels.swap_blocks.default, (src, dst, torch.tensor([[7, 0], [2, 3]])))


def test_ops_declare_their_mutations():
    assert "Tensor(a2!) key_cache" in str(torch.ops.omni_kernels.store_kv.default._schema)
    assert "Tensor(a0!)[] key_caches" in str(torch.ops.omni_kernels.copy_blocks.default._schema)
    assert "Tensor(a1!) dst_cache" in str(torch.ops.omni_kernels.swap_blocks.default._schema)


# ------------------------------------------------------------------------------------------------
# the CUDA module
# ------------------------------------------------------------------------------------------------
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: the CUDA module is not built")


@needs_nvcc
def test_cuda_extension_built_and_imports():
    assert extension.cuda_extension_available(), extension._cuda_import_error
    for op in ("store_kv", "copy_blocks", "swap_blocks", "device_status"):
        assert hasattr(extension._cuda, op)


@needs_nvcc
def test_cuda_module_reports_no_device_cleanly():
    count, reason = extension.cuda_device_status()
    if count:
        pytest.skip(f"{count} CUDA device(s) present")
    assert reason.startswith("no CUDA device"), reason
    # an op called anyway raises a RuntimeError with the CUDA error, before touching memory
    cuda = extension._cuda
    fake = 1 << 20
    with pytest.raises(RuntimeError, match="no CUDA device.*cuda"):
        cuda.store_kv(fake, fake, fake, fake, fake, 1, 2, 64, 2, (128, 64), (128, 64), 1, 16, (2048, 128, 64),
                      (2048, 128, 64), 0, 0)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        cuda.copy_blocks([fake], [fake], fake, 1, 4, 2048, 2048, 2, 0, 0)
    mapping = torch.tensor([[0, 1]])
    with pytest.raises(RuntimeError, match="no CUDA device"):
        cuda.swap_blocks(fake, fake, mapping.data_ptr(), 1, 2, 2, 2048, 2048, 2048, 2, True, False, 0, 0)
    # argument errors are ValueErrors on the CUDA module too, raised before any CUDA call
    with pytest.raises(ValueError, match=r"block_mapping\[0\].*source"):
        cuda.swap_blocks(fake, fake, torch.tensor([[5, 1]]).data_ptr(), 1, 2, 2, 2048, 2048, 2048, 2, True, False, 0, 0)


def _cuobjdump():
    candidates = [shutil.which("cuobjdump")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"))):
        if home:
            candidates.append(os.path.join(home, "bin", "cuobjdump"))
    try:  # triton ships one
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@needs_nvcc
def test_cuda_module_has_sm80_and_sm90_code():
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found")
    so = Path(extension._cuda.__file__)
    elves = subprocess.run([tool, "--list-elf", str(so)], capture_output=True, text=True, check=True).stdout
    assert "sm_80" in elves and "sm_90" in elves, elves
    usage = subprocess.run([tool, "--dump-resource-usage", str(so)], capture_output=True, text=True, check=True).stdout
    kernels_by_arch, arch = {}, None
    for line in usage.splitlines():
        if "arch = " in line:
            arch = line.split("arch = ")[1].split()[0]
        elif "Function" in line and arch:
            kernels_by_arch.setdefault(arch, set()).add(line)
    for arch in ("sm_80", "sm_90"):
        names = " ".join(kernels_by_arch.get(arch, ()))
        assert "store_kv_kernel" in names and "copy_blocks_kernel" in names, (arch, names[:500])


def test_public_names():
    from omni_kernels import kv_cache_ops

    assert set(kv_cache_ops.__all__) >= {"store_kv", "copy_blocks", "swap_blocks"}
    assert omni_kernels.kv_cache_ops is kv_cache_ops
