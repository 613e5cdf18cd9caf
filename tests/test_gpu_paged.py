"""The paged KV cache on a real GPU: the CUDA extension's store_kv / copy_blocks / swap_blocks equal
the C++ CPU twin on the same inputs, bit for bit (fp32, fp16, bf16; skipped slots; page sizes 16
and 256; strided and misaligned K/V views; block-strided cache views; more layers than one
copy_blocks launch takes; GPU <-> pinned and pageable CPU memory, out and back in); the compiled
Triton kernels paged_decode_attention and paged_prefill_attention (TRITON_INTERPRET=0) against the
fp32 references in omni_kernels/reference/ at the Thinker's shapes; a decode step (store_kv of the
new token + paged_decode_attention with max_seq_len given) captured in a CUDA graph and replayed
with new inputs equals eager; debug mode (OMNI_KERNELS_DEBUG=1) turns out-of-range indices on CUDA
into ValueError, and without it the CUDA kernels skip them and write nothing out of bounds.

Skipped without CUDA, and when the Triton interpreter is on (tests/conftest.py sets
TRITON_INTERPRET=1 by default; benchmarks/run_gpu.sh runs this file with TRITON_INTERPRET=0).

Error bounds, rel_err = ||out - ref|| / ||ref||, the reference in fp32 from the same (rounded)
inputs: fp32 1e-4 (3xTF32 dots, online-softmax order), fp16 3e-3, bf16 2e-2 (p and the rotated q
rounded to the input dtype before the dots; output rounded). The KV-cache ops only move bytes:
torch.equal.
"""
import pytest
import torch
from helpers import capture_cuda_graph, rel_err

from omni_kernels import backend, extension
from omni_kernels.kv_cache_ops import copy_blocks, store_kv, swap_blocks
from omni_kernels.paged_decode_attention import paged_decode_attention
from omni_kernels.paged_prefill_attention import paged_prefill_attention
from omni_kernels.reference.kv_cache_ops import copy_blocks_reference
from omni_kernels.reference.paged_decode_attention import paged_decode_attention_reference
from omni_kernels.reference.paged_prefill_attention import paged_prefill_attention_reference

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(backend.interpreter_active(),
                       reason="TRITON_INTERPRET=1 (tests/conftest.py's default): run with TRITON_INTERPRET=0 "
                              "to test the compiled kernels"),
]

CUDA = torch.device("cuda")
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
BOUND = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}
HQ, HK, D = 28, 4, 128  # the Thinker (7B)
SECTION = [16, 24, 24]


@pytest.fixture(autouse=True)
def _debug_off(monkeypatch):
    """Every test states its own debug mode; an OMNI_KERNELS_DEBUG from the shell does not leak in."""
    monkeypatch.delenv("OMNI_KERNELS_DEBUG", raising=False)


def _randn(*shape, dtype, device="cpu"):
    return torch.randn(*shape, device=device, dtype=torch.float32).to(dtype)


def test_cuda_extension_sees_the_gpu():
    assert extension.cuda_extension_available(), extension.cuda_device_status()
    count, reason = extension.cuda_device_status()
    assert count >= 1, reason


# -- store_kv: CUDA == CPU twin ----------------------------------------------------------------------

LAYOUTS = ["contiguous", "fused_qkv", "head_major", "misaligned"]


def _kv_pair(n, hk, d, dtype, layout):
    """(key, value) on the CPU and the same layout on CUDA (views of one base tensor each)."""
    if layout == "contiguous":
        base = _randn(2, n, hk, d, dtype=dtype)

        def view(b):
            return b[0], b[1]
    elif layout == "fused_qkv":  # columns of a fused qkv projection (7 q heads per kv head)
        q_width = 7 * hk * d
        base = _randn(n, q_width + 2 * hk * d, dtype=dtype)

        def view(b):
            return (b[:, q_width:q_width + hk * d].view(n, hk, d), b[:, q_width + hk * d:].view(n, hk, d))
    elif layout == "head_major":  # (Hk, N, D) transposed: token stride D, head stride N * D
        base = _randn(2, hk, n, d, dtype=dtype)

        def view(b):
            return b[0].transpose(0, 1), b[1].transpose(0, 1)
    elif layout == "misaligned":  # odd token stride and a one-element offset: only element-wide words
        width = 2 * hk * d + 1
        base = _randn(n * width + 1, dtype=dtype)

        def view(b):
            rows = b[1:].view(n, width)
            return rows[:, :hk * d].view(n, hk, d), rows[:, hk * d:2 * hk * d].view(n, hk, d)
    else:
        raise AssertionError(layout)
    return view(base), view(base.to(CUDA))


def _cache_pair(num_blocks, page, hk, d, dtype, combined=False):
    """(key_cache, value_cache) on the CPU and equal copies on CUDA; combined = views of one
    [num_blocks, 2, page, Hk, D] allocation (block stride twice a block)."""
    if combined:
        base = _randn(num_blocks, 2, page, hk, d, dtype=dtype)
        gpu = base.to(CUDA)
        return (base[:, 0], base[:, 1]), (gpu[:, 0], gpu[:, 1])
    k, v = _randn(num_blocks, page, hk, d, dtype=dtype), _randn(num_blocks, page, hk, d, dtype=dtype)
    return (k, v), (k.to(CUDA), v.to(CUDA))


def _slots(n, num_slots, n_skipped):
    slots = torch.randperm(num_slots)[:n]
    slots[torch.randperm(n)[:n_skipped]] = -1
    return slots


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("page", [16, 256])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("combined", [False, True], ids=["separate_caches", "combined_caches"])
def test_store_kv_cuda_equals_cpu_twin(combined, layout, page, dtype):
    n = 3 * page + 5
    num_blocks = n // page + 6
    (key, value), (key_g, value_g) = _kv_pair(n, HK, D, dtype, layout)
    (kc, vc), (kc_g, vc_g) = _cache_pair(num_blocks, page, HK, D, dtype, combined)
    slots = _slots(n, num_blocks * page, n_skipped=n // 5)
    before = kc.clone()
    store_kv(key, value, kc, vc, slots)  # the CPU twin
    store_kv(key_g, value_g, kc_g, vc_g, slots.to(CUDA))
    torch.cuda.synchronize()
    assert not torch.equal(kc, before)
    assert torch.equal(kc_g.cpu(), kc) and torch.equal(vc_g.cpu(), vc)


@pytest.mark.parametrize("hk,d,dtype", [(2, 64, torch.float16), (2, 80, torch.bfloat16), (1, 128, torch.float32),
                                        (16, 80, torch.float16)])
def test_store_kv_cuda_other_head_shapes(hk, d, dtype):
    n, page, num_blocks = 100, 16, 12
    (key, value), (key_g, value_g) = _kv_pair(n, hk, d, dtype, "fused_qkv")
    (kc, vc), (kc_g, vc_g) = _cache_pair(num_blocks, page, hk, d, dtype)
    slots = _slots(n, num_blocks * page, n_skipped=9)
    store_kv(key, value, kc, vc, slots)
    store_kv(key_g, value_g, kc_g, vc_g, slots.to(CUDA))
    torch.cuda.synchronize()
    assert torch.equal(kc_g.cpu(), kc) and torch.equal(vc_g.cpu(), vc)


def test_store_kv_cuda_all_padding_and_empty():
    kc, vc = _randn(3, 16, HK, D, dtype=torch.bfloat16, device=CUDA), _randn(3, 16, HK, D, dtype=torch.bfloat16,
                                                                             device=CUDA)
    before = kc.clone(), vc.clone()
    key, value = _randn(8, HK, D, dtype=torch.bfloat16, device=CUDA), _randn(8, HK, D, dtype=torch.bfloat16,
                                                                            device=CUDA)
    store_kv(key, value, kc, vc, torch.full((8,), -1, device=CUDA))
    store_kv(key[:0], value[:0], kc, vc, torch.empty(0, dtype=torch.int64, device=CUDA))
    torch.cuda.synchronize()
    assert torch.equal(kc, before[0]) and torch.equal(vc, before[1])


def test_store_kv_cuda_skips_out_of_range_slots_without_debug():
    """Debug off: bad slots are not checked on the host, and the kernel writes nothing for them --
    the guard blocks around the cache stay untouched."""
    page, num_blocks, dtype = 16, 4, torch.float16
    guard_k = _randn(num_blocks + 2, page, HK, D, dtype=dtype, device=CUDA)
    guard_v = _randn(num_blocks + 2, page, HK, D, dtype=dtype, device=CUDA)
    kc, vc = guard_k[1:-1], guard_v[1:-1]
    num_slots = num_blocks * page
    key, value = _randn(6, HK, D, dtype=dtype, device=CUDA), _randn(6, HK, D, dtype=dtype, device=CUDA)
    slots = torch.tensor([3, num_slots, -2, num_slots + page, 10**9, 40], device=CUDA)
    want_k, want_v = guard_k.clone(), guard_v.clone()
    want_k[1:-1].reshape(-1, HK, D)[[3, 40]] = key[[0, 5]]
    want_v[1:-1].reshape(-1, HK, D)[[3, 40]] = value[[0, 5]]
    store_kv(key, value, kc, vc, slots)
    torch.cuda.synchronize()
    assert torch.equal(guard_k, want_k) and torch.equal(guard_v, want_v)


# -- copy_blocks: CUDA == CPU twin --------------------------------------------------------------------

def _cow_mapping(num_blocks, n_pairs, n_sources):
    """Copy-on-write: n_sources shared blocks, each feeding one or more of n_pairs distinct
    destinations that are not sources."""
    perm = torch.randperm(num_blocks)
    sources, dests = perm[:n_sources], perm[n_sources:n_sources + n_pairs]
    return torch.stack([sources[torch.arange(n_pairs) % n_sources], dests], dim=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layers,page", [(1, 16), (1, 256), (28, 16), (28, 256), (70, 16)])
def test_copy_blocks_cuda_equals_cpu_twin(layers, page, dtype):
    """70 layers: more than one launch's worth of layer addresses (64)."""
    num_blocks = 10
    pairs = [_cache_pair(num_blocks, page, HK, D, dtype) for _ in range(layers)]
    kcs, vcs = [p[0][0] for p in pairs], [p[0][1] for p in pairs]
    kcs_g, vcs_g = [p[1][0] for p in pairs], [p[1][1] for p in pairs]
    mapping = _cow_mapping(num_blocks, n_pairs=5, n_sources=2)
    ref_k, ref_v = [k.clone() for k in kcs], [v.clone() for v in vcs]
    copy_blocks_reference(ref_k, ref_v, mapping)
    copy_blocks(kcs, vcs, mapping)  # the CPU twin
    copy_blocks(kcs_g, vcs_g, mapping.to(CUDA))
    torch.cuda.synchronize()
    for got, cpu, ref in zip(kcs_g + vcs_g, kcs + vcs, ref_k + ref_v):
        assert torch.equal(cpu, ref)
        assert torch.equal(got.cpu(), cpu)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_copy_blocks_cuda_combined_cache_views(dtype):
    pairs = [_cache_pair(9, 16, HK, D, dtype, combined=True) for _ in range(3)]
    kcs, vcs = [p[0][0] for p in pairs], [p[0][1] for p in pairs]
    kcs_g, vcs_g = [p[1][0] for p in pairs], [p[1][1] for p in pairs]
    mapping = _cow_mapping(9, n_pairs=4, n_sources=1)
    copy_blocks(kcs, vcs, mapping)
    copy_blocks(kcs_g, vcs_g, mapping.to(CUDA))
    torch.cuda.synchronize()
    for got, cpu in zip(kcs_g + vcs_g, kcs + vcs):
        assert torch.equal(got.cpu(), cpu)


# -- swap_blocks: GPU <-> CPU, out and back in --------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("page", [16, 256])
@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "pageable"])
def test_swap_blocks_out_and_back_in(pinned, page, dtype):
    gpu_blocks, cpu_blocks, m = 12, 9, 5
    gpu = _randn(gpu_blocks, page, HK, D, dtype=dtype, device=CUDA)
    host = _randn(cpu_blocks, page, HK, D, dtype=dtype)
    if pinned:
        host = host.pin_memory()
    original = gpu.to("cpu", copy=True)
    g_out = torch.randperm(gpu_blocks)[:m]
    c_dst = torch.randperm(cpu_blocks)[:m]
    out_map = torch.stack([g_out, c_dst], 1)
    want_host = host.clone()
    swap_blocks(original, want_host, out_map)  # the CPU twin on the same bytes
    swap_blocks(gpu, host, out_map)  # device -> host
    torch.cuda.synchronize()
    assert torch.equal(host, want_host)

    gpu.index_fill_(0, g_out.to(CUDA), -1234.0)  # the swapped-out blocks are reused meanwhile
    g_in = torch.randperm(gpu_blocks)[:m]  # back in, to other blocks
    in_map = torch.stack([c_dst, g_in], 1)
    want_gpu = gpu.to("cpu", copy=True)
    swap_blocks(host.clone(), want_gpu, in_map)
    swap_blocks(host, gpu, in_map)  # host -> device
    torch.cuda.synchronize()
    assert torch.equal(gpu.cpu(), want_gpu)
    assert torch.equal(gpu[g_in.to(CUDA)].cpu(), original[g_out])  # the round trip restored the blocks


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_swap_blocks_between_gpu_caches_and_block_strided_views(dtype):
    src_base = _randn(8, 2, 16, HK, D, dtype=dtype, device=CUDA)
    src = src_base[:, 1]  # block stride 2 blocks
    dst = _randn(6, 16, HK, D, dtype=dtype, device=CUDA)
    host = _randn(7, 2, 16, HK, D, dtype=dtype).pin_memory()[:, 0]
    mapping = torch.tensor([[7, 0], [2, 5], [3, 1]])
    want = dst.to("cpu", copy=True)
    swap_blocks(src.cpu(), want, mapping)
    swap_blocks(src, dst, mapping)  # device -> device
    want_host = host.clone()
    swap_blocks(src.cpu(), want_host, mapping)
    swap_blocks(src, host, mapping)  # device -> block-strided pinned host view
    torch.cuda.synchronize()
    assert torch.equal(dst.cpu(), want)
    assert torch.equal(host, want_host)


# -- paged attention on CUDA vs the fp32 references ----------------------------------------------------

def make_paged_cache(lengths, hk, d, page, dtype, spare=3, poison=None):
    """CPU caches whose pages are a random permutation of the physical blocks (+ spare blocks),
    block_tables (B, max_pages + 2) int32 whose unused entries point at a spare block, seq_lens.
    poison: a value written into every slot no sequence owns (spare blocks, tails of last pages)."""
    pages = [-(-length // page) for length in lengths]
    num_blocks = sum(pages) + spare
    key_cache, value_cache = _randn(num_blocks, page, hk, d, dtype=dtype), _randn(num_blocks, page, hk, d, dtype=dtype)
    physical = torch.randperm(num_blocks).int()
    spare_block = int(physical[-1])
    tables = torch.full((len(lengths), max(max(pages), 1) + 2), spare_block, dtype=torch.int32)
    owned = torch.zeros(num_blocks, page, dtype=torch.bool)
    used = 0
    for b, (length, n) in enumerate(zip(lengths, pages)):
        tables[b, :n] = physical[used:used + n]
        for j in range(n):
            owned[int(physical[used + j]), :min(page, length - j * page)] = True
        used += n
    if poison is not None:
        key_cache[~owned] = poison
        value_cache[~owned] = poison
    return key_cache, value_cache, tables, torch.tensor(lengths, dtype=torch.int32)


DECODE_SHAPES = {  # name: (seq_lens, q heads, kv heads, page)
    "thinker7b_b8_mixed_page16": ([1, 15, 16, 17, 1000, 2049, 4096, 333], HQ, HK, 16),
    "thinker7b_b8_mixed_page256": ([1, 15, 16, 17, 1000, 2049, 4096, 333], HQ, HK, 256),
    "thinker3b_b3_page16": ([5, 700, 3000], 16, 2, 16),
    "thinker7b_b1_32k_page16": ([32768], HQ, HK, 16),  # one long sequence: split-KV fills the GPU
    "thinker7b_b64_page256": ([64 + 37 * i for i in range(64)], HQ, HK, 256),  # batch-filled: no split
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(DECODE_SHAPES))
def test_paged_decode_attention_gpu(shape, dtype):
    lengths, hq, hk, page = DECODE_SHAPES[shape]
    kc, vc, tables, seq_lens = make_paged_cache(lengths, hk, D, page, dtype)
    q = _randn(len(lengths), hq, D, dtype=dtype)
    out = paged_decode_attention(q.to(CUDA), kc.to(CUDA), vc.to(CUDA), tables.to(CUDA), seq_lens.to(CUDA),
                                 max_seq_len=max(lengths))
    ref = paged_decode_attention_reference(q, kc, vc, tables, seq_lens, D ** -0.5)
    assert out.dtype == dtype and out.shape == q.shape and out.device.type == CUDA.type
    assert torch.isfinite(out).all()
    assert rel_err(out.cpu(), ref) < BOUND[dtype], rel_err(out.cpu(), ref)


@pytest.mark.parametrize("num_splits", [1, 3, 16])
def test_paged_decode_attention_gpu_forced_splits(num_splits):
    lengths, dtype = [1, 63, 64, 65, 1000, 5000], torch.bfloat16
    kc, vc, tables, seq_lens = make_paged_cache(lengths, HK, D, 16, dtype)
    q = _randn(len(lengths), HQ, D, dtype=dtype)
    out = paged_decode_attention(q.to(CUDA), kc.to(CUDA), vc.to(CUDA), tables.to(CUDA), seq_lens.to(CUDA),
                                 num_splits=num_splits)
    ref = paged_decode_attention_reference(q, kc, vc, tables, seq_lens, D ** -0.5)
    assert rel_err(out.cpu(), ref) < BOUND[dtype]


def test_paged_decode_attention_gpu_ignores_unowned_slots():
    """Slots no sequence owns (tails of last pages, spare blocks that unused table entries point
    at) hold NaN, as an uninitialized cache may: the output stays finite and correct."""
    lengths, dtype = [1, 17, 300, 2049], torch.bfloat16
    kc, vc, tables, seq_lens = make_paged_cache(lengths, HK, D, 16, dtype, poison=float("nan"))
    q = _randn(len(lengths), HQ, D, dtype=dtype)
    out = paged_decode_attention(q.to(CUDA), kc.to(CUDA), vc.to(CUDA), tables.to(CUDA), seq_lens.to(CUDA))
    ref = paged_decode_attention_reference(q, kc, vc, tables, seq_lens, D ** -0.5)
    assert torch.isfinite(out).all()
    assert rel_err(out.cpu(), ref) < BOUND[dtype]


def prefill_inputs(chunks, hq, hk, page, dtype, poison=None):
    """chunks: [(prefix, new tokens)] per sequence -> CPU q (N, Hq, D), positions (3, N), caches,
    block_tables, cu_seqlens_q, seq_lens. Positions: text ids with an image block (t fixed, h/w on
    a grid) inside chunks long enough."""
    lengths = [prefix + n for prefix, n in chunks]
    kc, vc, tables, seq_lens = make_paged_cache(lengths, hk, D, page, dtype, poison=poison)
    n_total = sum(n for _, n in chunks)
    q = _randn(n_total, hq, D, dtype=dtype)
    pos = []
    for prefix, n in chunks:
        p = torch.arange(prefix, prefix + n).repeat(3, 1)
        side = 8
        if n >= 2 * side * side:
            lo, idx = n // 4, torch.arange(side * side)
            p[0, lo:lo + side * side] = prefix + lo
            p[1, lo:lo + side * side] = prefix + lo + idx // side
            p[2, lo:lo + side * side] = prefix + lo + idx % side
            p[:, lo + side * side:] -= side * side - side
        pos.append(p)
    positions = torch.cat(pos, 1)
    cu = torch.tensor([0] + torch.tensor([n for _, n in chunks]).cumsum(0).tolist(), dtype=torch.int32)
    return q, positions, kc, vc, tables, cu, seq_lens


PREFILL_SHAPES = {  # name: ([(cached prefix, new tokens)], q heads, kv heads, page)
    "thinker7b_chunk512_over_1536_page16": ([(1536, 512)], HQ, HK, 16),
    "thinker7b_varlen_page16": ([(0, 300), (1000, 257), (3000, 64), (77, 1), (50, 0)], HQ, HK, 16),
    "thinker7b_varlen_page256": ([(0, 300), (1000, 257), (3000, 64), (77, 1), (50, 0)], HQ, HK, 256),
    "thinker3b_page16": ([(2000, 200), (0, 129)], 16, 2, 16),
}


def _run_prefill(q, positions, kc, vc, tables, cu, seq_lens, **kw):
    return paged_prefill_attention(q.to(CUDA), positions.to(CUDA), kc.to(CUDA), vc.to(CUDA), tables.to(CUDA),
                                   cu.to(CUDA), seq_lens.to(CUDA), mrope_section=SECTION, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(PREFILL_SHAPES))
def test_paged_prefill_attention_gpu(shape, dtype):
    chunks, hq, hk, page = PREFILL_SHAPES[shape]
    inputs = prefill_inputs(chunks, hq, hk, page, dtype)
    out = _run_prefill(*inputs, max_seqlen_q=max(n for _, n in chunks))
    ref = paged_prefill_attention_reference(*inputs, SECTION, 1e6, D ** -0.5)
    assert out.dtype == dtype and out.shape == inputs[0].shape and out.device.type == CUDA.type
    assert torch.isfinite(out).all()
    assert rel_err(out.cpu(), ref) < BOUND[dtype], rel_err(out.cpu(), ref)


def test_paged_prefill_attention_gpu_ignores_unowned_slots_and_reads_max_seqlen():
    """NaN in every slot no sequence owns; max_seqlen_q left to the op (one host read)."""
    chunks, dtype = [(0, 100), (700, 300), (33, 17)], torch.bfloat16
    inputs = prefill_inputs(chunks, HQ, HK, 16, dtype, poison=float("nan"))
    out = _run_prefill(*inputs)
    ref = paged_prefill_attention_reference(*inputs, SECTION, 1e6, D ** -0.5)
    assert torch.isfinite(out).all()
    assert rel_err(out.cpu(), ref) < BOUND[dtype]


# -- CUDA graph: a decode step (store the new token, attend) replays like eager -----------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("page", [16, 256])
def test_decode_step_cuda_graph_replay_equals_eager(page, dtype):
    """Static buffers q / new k, v / slot_mapping / seq_lens; the block table holds every
    sequence's pages up to the capacity. Each replay: new values copied into the static inputs
    (lengths grow by one, crossing page boundaries; the last row is padding with slot -1), replay
    == eager on a copy of the cache, the new token's K/V landed in its slot, and the output
    matches the reference."""
    capacity = 1280
    max_pages = -(-capacity // page)
    start = torch.tensor([15, 16, 255, 256, 700, 1])  # lengths before the step; row 5 is padding
    batch = start.numel()
    num_blocks = batch * max_pages + 1
    kc = _randn(num_blocks, page, HK, D, dtype=dtype, device=CUDA)
    vc = _randn(num_blocks, page, HK, D, dtype=dtype, device=CUDA)
    tables = torch.randperm(num_blocks)[:batch * max_pages].view(batch, max_pages).int().to(CUDA)
    q = torch.empty(batch, HQ, D, dtype=dtype, device=CUDA)
    k_new, v_new = torch.empty(batch, HK, D, dtype=dtype, device=CUDA), torch.empty(batch, HK, D, dtype=dtype,
                                                                                   device=CUDA)
    slot_mapping = torch.empty(batch, dtype=torch.int64, device=CUDA)
    seq_lens = torch.empty(batch, dtype=torch.int32, device=CUDA)

    def step_inputs(lengths):
        """Fresh inputs for a step whose sequences have `lengths` tokens including the new one."""
        pos = torch.tensor(lengths) - 1
        rows = tables.cpu().long()[torch.arange(batch), pos // page]
        slots = rows * page + pos % page
        slots[-1] = -1  # padding row: nothing stored
        return (_randn(batch, HQ, D, dtype=dtype, device=CUDA), _randn(batch, HK, D, dtype=dtype, device=CUDA),
                _randn(batch, HK, D, dtype=dtype, device=CUDA), slots.to(CUDA),
                torch.tensor(lengths, dtype=torch.int32, device=CUDA))

    def load(inputs):
        for dst, src in zip((q, k_new, v_new, slot_mapping, seq_lens), inputs):
            dst.copy_(src)

    def step():
        store_kv(k_new, v_new, kc, vc, slot_mapping)
        return paged_decode_attention(q, kc, vc, tables, seq_lens, max_seq_len=capacity)

    lengths = (start + 1).tolist()
    load(step_inputs(lengths))
    graph, out = capture_cuda_graph(step)
    for _ in range(3):
        lengths = [n + 1 for n in lengths[:-1]] + [1]
        inputs = step_inputs(lengths)
        load(inputs)
        kc_eager, vc_eager = kc.clone(), vc.clone()
        graph.replay()
        torch.cuda.synchronize()
        q2, k2, v2, slots2, lens2 = inputs
        store_kv(k2, v2, kc_eager, vc_eager, slots2)
        eager = paged_decode_attention(q2, kc_eager, vc_eager, tables, lens2, max_seq_len=capacity)
        torch.cuda.synchronize()
        assert torch.equal(kc, kc_eager) and torch.equal(vc, vc_eager)
        assert torch.equal(out, eager)
        stored = slots2[:-1]
        assert torch.equal(kc.view(-1, HK, D)[stored], k2[:-1]) and torch.equal(vc.view(-1, HK, D)[stored], v2[:-1])
        ref = paged_decode_attention_reference(q2.cpu(), kc.cpu(), vc.cpu(), tables.cpu(), lens2.cpu(), D ** -0.5)
        assert rel_err(out.cpu(), ref) < BOUND[dtype]


# -- debug mode on CUDA -------------------------------------------------------------------------------

def _small_cache(dtype=torch.float16, num_blocks=4, page=16):
    return (_randn(num_blocks, page, HK, D, dtype=dtype, device=CUDA),
            _randn(num_blocks, page, HK, D, dtype=dtype, device=CUDA))


@pytest.mark.parametrize("bad", [64, 10**6, -2])
def test_debug_mode_catches_out_of_range_slot_on_cuda(monkeypatch, bad):
    monkeypatch.setenv("OMNI_KERNELS_DEBUG", "1")
    kc, vc = _small_cache()  # 4 blocks x 16 = 64 slots
    key, value = _randn(3, HK, D, dtype=torch.float16, device=CUDA), _randn(3, HK, D, dtype=torch.float16,
                                                                          device=CUDA)
    before = kc.clone(), vc.clone()
    with pytest.raises(ValueError, match=r"slot_mapping\[1\]"):
        store_kv(key, value, kc, vc, torch.tensor([0, bad, 5], device=CUDA))
    torch.cuda.synchronize()
    assert torch.equal(kc, before[0]) and torch.equal(vc, before[1])  # checked before anything is written
    with pytest.raises(ValueError, match="twice"):
        store_kv(key, value, kc, vc, torch.tensor([7, 7, 5], device=CUDA))
    store_kv(key, value, kc, vc, torch.tensor([0, -1, 63], device=CUDA))  # valid slots still store
    torch.cuda.synchronize()
    assert torch.equal(kc[0, 0], key[0]) and torch.equal(vc[3, 15], value[2])


def test_debug_argument_without_env_and_no_check_without_debug():
    kc, vc = _small_cache()
    key, value = _randn(2, HK, D, dtype=torch.float16, device=CUDA), _randn(2, HK, D, dtype=torch.float16,
                                                                          device=CUDA)
    bad = torch.tensor([1, 64], device=CUDA)
    with pytest.raises(ValueError, match="slot_mapping"):
        store_kv(key, value, kc, vc, bad, debug=True)
    store_kv(key, value, kc, vc, bad)  # debug off: no host check; the kernel skips slot 64
    torch.cuda.synchronize()
    assert torch.equal(kc[0, 1], key[0])


def test_debug_mode_catches_bad_block_indices_on_cuda(monkeypatch):
    monkeypatch.setenv("OMNI_KERNELS_DEBUG", "1")
    kc, vc = _small_cache()
    with pytest.raises(ValueError, match="block_mapping"):
        copy_blocks([kc], [vc], torch.tensor([[0, 4]], device=CUDA))
    with pytest.raises(ValueError, match="block_mapping"):
        copy_blocks([kc], [vc], torch.tensor([[0, 1], [2, 1]], device=CUDA))  # one destination twice
    q = _randn(2, HQ, D, dtype=torch.float16, device=CUDA)
    tables = torch.tensor([[0, 1], [2, 9]], dtype=torch.int32, device=CUDA)  # block 9 does not exist
    with pytest.raises(ValueError, match="block_tables"):
        paged_decode_attention(q, kc, vc, tables, torch.tensor([20, 30], dtype=torch.int32, device=CUDA))
    with pytest.raises(ValueError, match="seq_lens"):  # longer than the table's 2 pages
        paged_decode_attention(q, kc, vc, tables, torch.tensor([20, 33], dtype=torch.int32, device=CUDA))
    # Entries past a sequence's pages are never read and not checked: block 9 is unused at length 16.
    out = paged_decode_attention(q, kc, vc, tables, torch.tensor([20, 16], dtype=torch.int32, device=CUDA))
    assert torch.isfinite(out).all()
