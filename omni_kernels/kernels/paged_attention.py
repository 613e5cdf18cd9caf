"""What the paged-KV-cache kernels (`paged_decode_attention`, `paged_prefill_attention`) share:
finding a sequence's cache rows through its block table. Not a kernel of its own (like core.py).

Cache layout (fixed by the cache extension): key_cache / value_cache `[num_blocks, page_size,
num_kv_heads, head_dim]`, any strides with a contiguous last dim; block_tables `[B, max_blocks]`
int32, logical page p of sequence b lives in physical block `block_tables[b, p]`.

Token j of a sequence sits in page j // page_size, slot j % page_size. The kernels look the page up
per KV row, so a KV tile of BLOCK_N rows is a sub-tile of one page when page_size >= BLOCK_N (the
tiles start at multiples of BLOCK_N, so they never straddle pages) and spans several pages when
the page is smaller. page_size is therefore a runtime int, not a compiled variant.
"""
import triton
import triton.language as tl


@triton.jit
def cache_slots(table_row, cols, page_size, col_mask):
    """(physical page as int64, slot in page) of the sequence's tokens `cols`. Masked-off columns
    never read the block table (entries past a sequence's length may hold anything) and get page 0."""
    page = tl.load(table_row + cols // page_size, mask=col_mask, other=0).to(tl.int64)
    return page, cols % page_size
