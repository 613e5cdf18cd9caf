import torch


def gather_pages(cache, table_row, length):
    """Token j of the sequence is cache[table_row[j // page_size], j % page_size] -> (length, Hk, D)."""
    page_size = cache.shape[1]
    rows = [cache[int(table_row[j // page_size]), j % page_size] for j in range(length)]
    return torch.stack(rows) if rows else cache.new_zeros((0,) + tuple(cache.shape[2:]))


def paged_decode_attention_reference(q, key_cache, value_cache, block_tables, seq_lens, scale):
    """softmax(q k^T * scale) v over each sequence's seq_len cached keys, in fp32.
    q (B, Hq, D) already rotated; returns (B, Hq, D) in q's dtype."""
    group = q.shape[1] // key_cache.shape[2]
    out = torch.zeros(q.shape, dtype=torch.float32)
    for b, length in enumerate(seq_lens.tolist()):
        k = gather_pages(key_cache, block_tables[b], length).float().repeat_interleave(group, 1)  # (L, Hq, D)
        v = gather_pages(value_cache, block_tables[b], length).float().repeat_interleave(group, 1)
        scores = torch.einsum("hd,lhd->hl", q[b].float(), k) * scale
        out[b] = torch.einsum("hl,lhd->hd", scores.softmax(-1), v)
    return out.to(q.dtype)
