"""Block-sparse attention masks in FlexAttention's layout, and builders for Qwen2.5-Omni's patterns.

A `BlockSparseMask` cuts the (Lq, Lk) score matrix into (Q_BLOCK, KV_BLOCK) tiles. For q block m
of batch b and query head h it lists

* `kv_indices[b, h, m, :kv_num_blocks[b, h, m]]`: *partial* kv blocks, visited with the element
  mask applied;
* `full_kv_indices[b, h, m, :full_kv_num_blocks[b, h, m]]`: *full* kv blocks, visited with no
  element mask (only the kv-length bound when Lk is not a multiple of KV_BLOCK).

This is exactly FlexAttention's `BlockMask` (`kv_num_blocks` counts the partial blocks only; a
block is never listed twice). Blocks not listed are never read. The element mask of partial
blocks is a spec a Triton kernel can evaluate, not an arbitrary Python function:

* `causal`: allowed iff q_idx + (Lk - Lq) >= kv_idx -- bottom-right aligned, so a chunk of new
  queries sees the whole cached prefix and itself causally;
* `q_segment_ids [B, Lq]` / `kv_segment_ids [B, Lk]` (int32): allowed iff the ids are equal.

Both may be combined; with neither, partial blocks are unmasked (pure block sparsity). B and H of
the block tensors (and B of the segment ids) may be 1: they broadcast over the batch / query heads.

The builders produce the model's patterns in O((L / block)^2) work and memory at most; none of
them materializes an L x L matrix:

* `segment_block_mask(cu_seqlens)`: block-diagonal (bidirectional inside each packed segment);
* `audio_chunk_block_mask(feature_lens, n_window)`: the audio encoder's per-chunk attention;
* `chunked_prefill_block_mask(q_len, kv_len)`: new tokens over a cached prefix, causal;
* `vision_window_block_mask(grid_thw)` / `vision_full_block_mask(grid_thw)`: the vision encoder's
  window-attention and full-attention (per frame) layers, over the window-reordered tokens.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

# Block-table codes (see `block_table`).
_NONE, _PARTIAL, _FULL = 0, 1, 2


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(pair) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def _check_int_tensor(name: str, t, ndim: int, dtype=torch.int32) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")


def _scatter_blocks(name: str, num: torch.Tensor, idx: torch.Tensor, n_kv: int) -> torch.Tensor:
    """How many times each kv block is listed: int32 [B, H, M, N]. Only the first `num` entries of
    each row are used (the rest may hold anything, as in FlexAttention)."""
    used = torch.arange(idx.shape[-1], device=idx.device) < num[..., None].long()
    bad = used & ((idx < 0) | (idx >= n_kv))
    if bool(bad.any()):
        where = bad.nonzero()[0].tolist()
        raise ValueError(f"{name}{where} = {int(idx[tuple(where)])} is out of range [0, {n_kv}) "
                         f"(ceil(Lk / KV_BLOCK) kv blocks)")
    target = torch.where(used, idx.long(), n_kv)  # unused entries land in a dump column
    counts = torch.zeros(*idx.shape[:-1], n_kv + 1, dtype=torch.int32, device=idx.device)
    counts.scatter_add_(-1, target, torch.ones_like(target, dtype=torch.int32))
    return counts[..., :n_kv]


def block_table(kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, n_kv: int) -> torch.Tensor:
    """int8 [B, H, M, N]: 0 = not visited, 1 = partial (element mask applies), 2 = full."""
    partial = _scatter_blocks("kv_indices", kv_num_blocks, kv_indices, n_kv)
    table = partial.to(torch.int8)
    if full_kv_num_blocks is not None:
        full = _scatter_blocks("full_kv_indices", full_kv_num_blocks, full_kv_indices, n_kv)
        table = table + 2 * full.to(torch.int8)
        partial = partial + full
    if bool((partial > 1).any()):
        where = (partial > 1).nonzero()[0].tolist()
        raise ValueError(f"kv_indices / full_kv_indices list kv block {where[3]} more than once for "
                         f"(batch, head, q block) = {tuple(where[:3])}")
    return table


def element_mask(q_idx: torch.Tensor, kv_idx: torch.Tensor, seq_lengths, causal: bool,
                 q_segment_ids: torch.Tensor | None, kv_segment_ids: torch.Tensor | None) -> torch.Tensor:
    """The element mask of partial blocks at rows q_idx (Lq',) and columns kv_idx (Lk',):
    bool [B|1, 1, Lq', Lk']."""
    q_len, kv_len = seq_lengths
    allowed = torch.ones(1, 1, q_idx.numel(), kv_idx.numel(), dtype=torch.bool, device=q_idx.device)
    if causal:
        allowed = allowed & (kv_idx[None, :] <= q_idx[:, None] + (kv_len - q_len))
    if q_segment_ids is not None:
        qs = q_segment_ids[:, q_idx]
        ks = kv_segment_ids[:, kv_idx]
        allowed = allowed & (qs[:, None, :, None] == ks[:, None, None, :])
    return allowed


def dense_mask(kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, block_size, seq_lengths,
               causal: bool, q_segment_ids=None, kv_segment_ids=None) -> torch.Tensor:
    """The exact element mask, bool [B, H, Lq, Lk] (B, H possibly 1): a pair (q, kv) is allowed iff
    its block is full, or its block is partial and the element mask allows it. O(Lq * Lk)."""
    q_block, kv_block = block_size
    q_len, kv_len = seq_lengths
    n_kv = _cdiv(kv_len, kv_block)
    table = block_table(kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, n_kv)
    device = kv_indices.device
    q_idx = torch.arange(q_len, device=device)
    kv_idx = torch.arange(kv_len, device=device)
    per_elem = table.index_select(2, q_idx // q_block).index_select(3, kv_idx // kv_block)
    elem = element_mask(q_idx, kv_idx, seq_lengths, causal, q_segment_ids, kv_segment_ids)
    return (per_elem == _FULL) | ((per_elem == _PARTIAL) & elem)


def indices_from_table(visited: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [B, H, M, N] -> (num int32 [B, H, M], indices int32 [B, H, M, K]), K = max(num, 1);
    the listed blocks come first, in ascending order (as FlexAttention lists them)."""
    num = visited.sum(-1, dtype=torch.int32)
    width = max(int(num.max()) if num.numel() else 0, 1)
    order = torch.argsort((~visited).to(torch.int8), dim=-1, stable=True)[..., :width]
    return num.contiguous(), order.to(torch.int32).contiguous()


@dataclasses.dataclass(frozen=True, eq=False)
class BlockSparseMask:
    """FlexAttention-compatible block structure plus an element-mask spec for the partial blocks
    (see the module docstring). Validated at construction: bad input raises ValueError naming
    the field."""

    kv_num_blocks: torch.Tensor  # int32 [B, H, M], M = ceil(Lq / Q_BLOCK): partial blocks per q block
    kv_indices: torch.Tensor  # int32 [B, H, M, K]
    block_size: tuple[int, int]  # (Q_BLOCK, KV_BLOCK); an int means both
    seq_lengths: tuple[int, int]  # (Lq, Lk)
    full_kv_num_blocks: torch.Tensor | None = None  # int32 [B, H, M]
    full_kv_indices: torch.Tensor | None = None  # int32 [B, H, M, K_full]
    causal: bool = False
    q_segment_ids: torch.Tensor | None = None  # int32 [B|1, Lq]
    kv_segment_ids: torch.Tensor | None = None  # int32 [B|1, Lk]

    def __post_init__(self):
        block_size = _pair(self.block_size, "block_size")
        if min(block_size) <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        seq_lengths = _pair(self.seq_lengths, "seq_lengths")
        if min(seq_lengths) <= 0:
            raise ValueError(f"seq_lengths must be positive (Lq, Lk), got {seq_lengths}")
        object.__setattr__(self, "block_size", block_size)
        object.__setattr__(self, "seq_lengths", seq_lengths)
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be a bool, got {self.causal!r}")
        (q_block, kv_block), (q_len, kv_len) = block_size, seq_lengths
        n_q = _cdiv(q_len, q_block)

        _check_int_tensor("kv_num_blocks", self.kv_num_blocks, 3)
        _check_int_tensor("kv_indices", self.kv_indices, 4)
        device = self.kv_num_blocks.device
        batch, heads, m = self.kv_num_blocks.shape
        if m != n_q:
            raise ValueError(f"kv_num_blocks has {m} q blocks, but ceil(Lq={q_len} / Q_BLOCK={q_block}) = {n_q}")
        if self.kv_indices.shape[:3] != self.kv_num_blocks.shape:
            raise ValueError(f"kv_indices {tuple(self.kv_indices.shape)} must be [B, H, M, K] with "
                             f"[B, H, M] = {tuple(self.kv_num_blocks.shape)} (kv_num_blocks)")
        if self.kv_indices.device != device:
            raise ValueError(f"kv_indices is on {self.kv_indices.device} but kv_num_blocks is on {device}")
        self._check_counts("kv_num_blocks", self.kv_num_blocks, self.kv_indices.shape[-1])

        if (self.full_kv_num_blocks is None) != (self.full_kv_indices is None):
            raise ValueError("full_kv_num_blocks and full_kv_indices must be given together")
        if self.full_kv_num_blocks is not None:
            _check_int_tensor("full_kv_num_blocks", self.full_kv_num_blocks, 3)
            _check_int_tensor("full_kv_indices", self.full_kv_indices, 4)
            if self.full_kv_num_blocks.shape != self.kv_num_blocks.shape:
                raise ValueError(f"full_kv_num_blocks {tuple(self.full_kv_num_blocks.shape)} must have the shape "
                                 f"of kv_num_blocks {tuple(self.kv_num_blocks.shape)}")
            if self.full_kv_indices.shape[:3] != self.kv_num_blocks.shape:
                raise ValueError(f"full_kv_indices {tuple(self.full_kv_indices.shape)} must be [B, H, M, K] with "
                                 f"[B, H, M] = {tuple(self.kv_num_blocks.shape)}")
            for name in ("full_kv_num_blocks", "full_kv_indices"):
                if getattr(self, name).device != device:
                    raise ValueError(f"{name} is on {getattr(self, name).device} but kv_num_blocks is on {device}")
            self._check_counts("full_kv_num_blocks", self.full_kv_num_blocks, self.full_kv_indices.shape[-1])

        if (self.q_segment_ids is None) != (self.kv_segment_ids is None):
            raise ValueError("q_segment_ids and kv_segment_ids must be given together")
        if self.q_segment_ids is not None:
            for name, length in (("q_segment_ids", q_len), ("kv_segment_ids", kv_len)):
                seg = getattr(self, name)
                _check_int_tensor(name, seg, 2)
                if seg.shape[1] != length:
                    raise ValueError(f"{name} must be [B, {length}], got {tuple(seg.shape)}")
                if seg.device != device:
                    raise ValueError(f"{name} is on {seg.device} but kv_num_blocks is on {device}")
            seg_batch = self.q_segment_ids.shape[0]
            if self.kv_segment_ids.shape[0] != seg_batch:
                raise ValueError(f"q_segment_ids batch ({seg_batch}) and kv_segment_ids batch "
                                 f"({self.kv_segment_ids.shape[0]}) differ")
            if seg_batch != batch and 1 not in (seg_batch, batch):
                raise ValueError(f"q_segment_ids batch ({seg_batch}) does not broadcast with the block "
                                 f"tensors' batch ({batch})")
        # Index ranges and duplicates (raises naming kv_indices / full_kv_indices).
        self.block_table()

    @staticmethod
    def _check_counts(name: str, num: torch.Tensor, width: int) -> None:
        if num.numel() and (int(num.min()) < 0 or int(num.max()) > width):
            raise ValueError(f"{name} must be in [0, K={width}] (K = the indices' last dim), "
                             f"got values in [{int(num.min())}, {int(num.max())}]")

    # -- structure ---------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        """Batch size of the mask (1 = broadcast), counting the segment ids."""
        seg = 1 if self.q_segment_ids is None else self.q_segment_ids.shape[0]
        return max(self.kv_num_blocks.shape[0], seg)

    @property
    def heads(self) -> int:
        return self.kv_num_blocks.shape[1]

    @property
    def num_q_blocks(self) -> int:
        return self.kv_num_blocks.shape[2]

    @property
    def num_kv_blocks(self) -> int:
        return _cdiv(self.seq_lengths[1], self.block_size[1])

    @property
    def device(self) -> torch.device:
        return self.kv_num_blocks.device

    @property
    def has_segments(self) -> bool:
        return self.q_segment_ids is not None

    def block_table(self) -> torch.Tensor:
        """int8 [B, H, M, N]: 0 = block not visited, 1 = partial, 2 = full."""
        return block_table(self.kv_num_blocks, self.kv_indices, self.full_kv_num_blocks, self.full_kv_indices,
                           self.num_kv_blocks)

    def density(self) -> float:
        """Fraction of the M x N blocks that are visited (partial or full), averaged over B and H."""
        return float((self.block_table() != _NONE).float().mean())

    def to_dense(self) -> torch.Tensor:
        """The exact element mask: bool [B|1, H|1, Lq, Lk] (block structure AND element mask)."""
        return dense_mask(self.kv_num_blocks, self.kv_indices, self.full_kv_num_blocks, self.full_kv_indices,
                          self.block_size, self.seq_lengths, self.causal, self.q_segment_ids, self.kv_segment_ids)

    # -- FlexAttention -----------------------------------------------------------------------
    def to_flex(self):
        """A `torch.nn.attention.flex_attention.BlockMask` with the same blocks and a mask_mod that
        equals `to_dense()` (it also encodes the block structure, because eager FlexAttention
        evaluates only the mask_mod and ignores the block lists)."""
        from torch.nn.attention.flex_attention import BlockMask

        batch = self.batch
        (q_block, kv_block), (q_len, kv_len) = self.block_size, self.seq_lengths
        table = self.block_table().expand(batch, -1, -1, -1).contiguous()
        causal, offset = self.causal, kv_len - q_len
        q_seg, kv_seg = self.q_segment_ids, self.kv_segment_ids
        per_batch_table, per_head = table.shape[0] > 1, table.shape[1] > 1
        per_batch_seg = q_seg is not None and q_seg.shape[0] > 1

        def mask_mod(b, h, q_idx, kv_idx):
            q_idx = torch.clamp(q_idx, max=q_len - 1)
            kv_idx = torch.clamp(kv_idx, max=kv_len - 1)
            code = table[b if per_batch_table else 0, h if per_head else 0, q_idx // q_block, kv_idx // kv_block]
            elem = code == _PARTIAL
            if causal:
                elem = elem & (kv_idx <= q_idx + offset)
            if q_seg is not None:
                bs = b if per_batch_seg else 0
                elem = elem & (q_seg[bs, q_idx] == kv_seg[bs, kv_idx])
            return (code == _FULL) | elem

        n_kv = self.num_kv_blocks

        def expand(t):
            if t is None:
                return None
            if t.dim() == 4:  # FlexAttention reads the index width as the number of kv blocks
                t = F.pad(t, (0, max(n_kv - t.shape[-1], 0)))[..., :n_kv]
            return t.expand(batch, *t.shape[1:]).contiguous()

        return BlockMask.from_kv_blocks(
            expand(self.kv_num_blocks), expand(self.kv_indices),
            expand(self.full_kv_num_blocks), expand(self.full_kv_indices),
            BLOCK_SIZE=self.block_size, mask_mod=mask_mod, seq_lengths=self.seq_lengths,
        )

    @classmethod
    def from_flex(cls, block_mask, *, causal: bool = False, q_segment_ids=None, kv_segment_ids=None):
        """Take a FlexAttention BlockMask's block lists; the element mask of its partial blocks is
        given here (`causal` / segment ids), since an arbitrary mask_mod cannot run in the kernel."""
        def i32(t):
            return None if t is None else t.to(torch.int32)

        return cls(
            kv_num_blocks=i32(block_mask.kv_num_blocks), kv_indices=i32(block_mask.kv_indices),
            full_kv_num_blocks=i32(block_mask.full_kv_num_blocks), full_kv_indices=i32(block_mask.full_kv_indices),
            block_size=tuple(block_mask.BLOCK_SIZE), seq_lengths=tuple(block_mask.seq_lengths),
            causal=causal, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
        )


# -- builders --------------------------------------------------------------------------------

def _from_tables(partial: torch.Tensor, full: torch.Tensor, block_size, seq_lengths, **element) -> BlockSparseMask:
    """partial/full bool [M, N] -> a B = H = 1 mask."""
    num, idx = indices_from_table(partial[None, None])
    full_num, full_idx = indices_from_table(full[None, None])
    return BlockSparseMask(num, idx, block_size, seq_lengths, full_kv_num_blocks=full_num,
                           full_kv_indices=full_idx, **element)


def _block_bounds(length: int, block: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last token index of every block of a length-`length` axis."""
    first = torch.arange(_cdiv(length, block), device=device) * block
    last = torch.clamp(first + block, max=length) - 1
    return first, last


def _as_cu_seqlens(cu_seqlens, device=None) -> torch.Tensor:
    if not isinstance(cu_seqlens, torch.Tensor):
        try:
            cu_seqlens = torch.as_tensor(cu_seqlens, dtype=torch.int64, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"cu_seqlens must be a 1-D integer tensor or list, got {cu_seqlens!r}") from None
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype.is_floating_point \
            or cu_seqlens.dtype == torch.bool or cu_seqlens.is_complex():
        raise ValueError(f"cu_seqlens must be a 1-D integer tensor with at least 2 entries, got "
                         f"{cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}")
    cu = cu_seqlens.to(torch.int64)
    if int(cu[0]) != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {int(cu[0])}")
    if bool((cu.diff() < 0).any()):
        raise ValueError("cu_seqlens must be non-decreasing")
    if int(cu[-1]) <= 0:
        raise ValueError("cu_seqlens describes no tokens (its last entry is 0)")
    return cu


def segment_block_mask(cu_seqlens, block_size=128) -> BlockSparseMask:
    """Block-diagonal attention over packed segments (B = 1, H = 1 broadcast): token i attends to
    token j iff both lie in the same segment [cu_seqlens[s], cu_seqlens[s+1]), both directions.
    A block is full when its q and kv tokens all lie in one segment, partial when it only
    straddles segment boundaries, absent when it holds no same-segment pair."""
    q_block, kv_block = _pair(block_size, "block_size")
    if min(q_block, kv_block) <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    cu = _as_cu_seqlens(cu_seqlens)
    device = cu.device
    length = int(cu[-1])
    seg = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=device), cu.diff())
    q_first, q_last = (seg[i] for i in _block_bounds(length, q_block, device))
    k_first, k_last = (seg[i] for i in _block_bounds(length, kv_block, device))
    # Segments are sorted, so a block covers the contiguous id range [first, last].
    meets = (q_first[:, None] <= k_last[None, :]) & (k_first[None, :] <= q_last[:, None])
    full = ((q_first == q_last)[:, None] & (k_first == k_last)[None, :]
            & (q_first[:, None] == k_first[None, :]))
    seg_ids = seg.to(torch.int32)[None]
    return _from_tables(meets & ~full, full, (q_block, kv_block), (length, length),
                        q_segment_ids=seg_ids, kv_segment_ids=seg_ids)


def audio_chunk_lengths(feature_lens, n_window: int = 100) -> torch.Tensor:
    """Mel frames per chunk, as the Qwen2.5-Omni audio encoder cuts them: every audio is cut into
    chunks of n_window * 2 frames, the last one holding the remainder (a full chunk if none)."""
    if not isinstance(n_window, int) or isinstance(n_window, bool) or n_window <= 0:
        raise ValueError(f"n_window must be a positive int, got {n_window!r}")
    if not isinstance(feature_lens, torch.Tensor):
        try:
            feature_lens = torch.as_tensor(feature_lens, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"feature_lens must be a 1-D integer tensor or list, got {feature_lens!r}") from None
    if feature_lens.dim() != 1 or feature_lens.numel() == 0 or feature_lens.dtype.is_floating_point \
            or feature_lens.dtype == torch.bool:
        raise ValueError(f"feature_lens must be a non-empty 1-D integer tensor, got {feature_lens.dtype} "
                         f"of shape {tuple(feature_lens.shape)}")
    lens = feature_lens.to(torch.int64)
    if bool((lens <= 0).any()):
        raise ValueError(f"feature_lens must be positive, got {lens.tolist()}")
    chunk = 2 * n_window
    chunk_num = (lens + chunk - 1) // chunk
    lengths = torch.full((int(chunk_num.sum()),), chunk, dtype=torch.int64, device=lens.device)
    tail = chunk_num.cumsum(0) - 1
    lengths[tail] = lens % chunk
    return torch.where(lengths == 0, chunk, lengths)


def audio_chunk_block_mask(feature_lens, n_window: int = 100, block_size=128) -> tuple[BlockSparseMask, torch.Tensor]:
    """The audio encoder's attention: the tokens of each chunk (a chunk of c mel frames gives
    (c - 1) // 2 + 1 tokens after the stride-2 conv; 200 frames -> 100 tokens) attend only within
    the chunk. `feature_lens` are the per-audio mel lengths. Returns (mask, cu_seqlens int32) --
    cu_seqlens equal to what transformers' Qwen2_5OmniAudioEncoder.forward passes its layers."""
    tokens = (audio_chunk_lengths(feature_lens, n_window) - 1) // 2 + 1
    cu_seqlens = F.pad(tokens.cumsum(0), (1, 0)).to(torch.int32)
    return segment_block_mask(cu_seqlens, block_size), cu_seqlens


def chunked_prefill_block_mask(q_len: int, kv_len: int, block_size=128, device=None) -> BlockSparseMask:
    """q_len new tokens after kv_len - q_len cached ones: query i (absolute position
    kv_len - q_len + i) sees every key up to its own position. Blocks wholly below that diagonal
    are full; blocks crossing it are partial (causal element mask, bottom-right aligned)."""
    q_block, kv_block = _pair(block_size, "block_size")
    if min(q_block, kv_block) <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    for name, value in (("q_len", q_len), ("kv_len", kv_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if kv_len < q_len:
        raise ValueError(f"kv_len ({kv_len}) must be at least q_len ({q_len}): the keys include the new tokens")
    offset = kv_len - q_len
    q_first, q_last = _block_bounds(q_len, q_block, device)
    k_first, k_last = _block_bounds(kv_len, kv_block, device)
    meets = k_first[None, :] <= q_last[:, None] + offset
    full = k_last[None, :] <= q_first[:, None] + offset
    return _from_tables(meets & ~full, full, (q_block, kv_block), (q_len, kv_len), causal=True)


def _as_grid_thw(grid_thw, spatial_merge_size: int) -> list[tuple[int, int, int]]:
    if not isinstance(grid_thw, torch.Tensor):
        try:
            grid_thw = torch.as_tensor(grid_thw, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"grid_thw must be an (N, 3) integer tensor, got {grid_thw!r}") from None
    if grid_thw.dim() != 2 or grid_thw.shape[1] != 3 or grid_thw.shape[0] == 0 \
            or grid_thw.dtype.is_floating_point or grid_thw.dtype == torch.bool:
        raise ValueError(f"grid_thw must be a non-empty (N, 3) integer tensor, got {grid_thw.dtype} "
                         f"of shape {tuple(grid_thw.shape)}")
    grid = [tuple(int(x) for x in row) for row in grid_thw.tolist()]
    for t, h, w in grid:
        if min(t, h, w) <= 0 or h % spatial_merge_size or w % spatial_merge_size:
            raise ValueError(f"grid_thw rows must be positive with h and w multiples of spatial_merge_size="
                             f"{spatial_merge_size}, got {(t, h, w)}")
    return grid


def vision_window_index(grid_thw, window_size: int = 112, patch_size: int = 14,
                        spatial_merge_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The vision encoder's window reordering (transformers' `get_vision_window_index`): merged
    units (spatial_merge_size^2 patches each) are grouped into windows of
    window_size / patch_size / spatial_merge_size units per side (112 px -> 4 x 4 units = 8 x 8
    patches), windows in raster order within each frame, frames in order. Returns
    (window_index int64 over merged units, cu_window_seqlens int32 over patch tokens)."""
    for name, value in (("window_size", window_size), ("patch_size", patch_size),
                        ("spatial_merge_size", spatial_merge_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    win = window_size // spatial_merge_size // patch_size
    if win <= 0:
        raise ValueError(f"window_size ({window_size}) must be at least patch_size * spatial_merge_size "
                         f"({patch_size * spatial_merge_size})")
    device = grid_thw.device if isinstance(grid_thw, torch.Tensor) else None
    unit = spatial_merge_size ** 2
    indices, sizes, offset = [], [], 0
    for t, h, w in _as_grid_thw(grid_thw, spatial_merge_size):
        gh, gw = h // spatial_merge_size, w // spatial_merge_size
        nwh, nww = _cdiv(gh, win), _cdiv(gw, win)
        index = torch.arange(t * gh * gw, device=device).reshape(t, gh, gw)
        index = F.pad(index, (0, nww * win - gw, 0, nwh * win - gh), value=-1)
        index = index.reshape(t, nwh, win, nww, win).permute(0, 1, 3, 2, 4).reshape(t * nwh * nww, win * win)
        valid = index >= 0
        indices.append(index[valid] + offset)
        sizes.append(valid.sum(1) * unit)  # every window holds at least one unit
        offset += t * gh * gw
    cu = F.pad(torch.cat(sizes).cumsum(0), (1, 0)).to(torch.int32)
    return torch.cat(indices), cu


def vision_window_block_mask(grid_thw, window_size: int = 112, patch_size: int = 14, spatial_merge_size: int = 2,
                             block_size=128) -> tuple[BlockSparseMask, torch.Tensor, torch.Tensor]:
    """Window attention of the vision encoder over the window-reordered patch tokens (tokens of a
    window are contiguous there, so the mask is block-diagonal over cu_window_seqlens).
    Returns (mask, window_index, cu_window_seqlens); reorder hidden states with
    `x.reshape(-1, spatial_merge_size**2, d)[window_index].reshape(-1, d)` as transformers does."""
    window_index, cu_window_seqlens = vision_window_index(grid_thw, window_size, patch_size, spatial_merge_size)
    return segment_block_mask(cu_window_seqlens, block_size), window_index, cu_window_seqlens


def vision_full_block_mask(grid_thw, block_size=128,
                           spatial_merge_size: int = 2) -> tuple[BlockSparseMask, torch.Tensor]:
    """The full-attention layers of the vision encoder: block-diagonal per temporal frame
    (cu_seqlens = h * w repeated t times per image, as transformers' `get_vision_cu_seqlens`).
    The window reordering keeps every frame's tokens contiguous, so the same mask serves the
    reordered and the original token order. Returns (mask, cu_seqlens int32)."""
    grid = _as_grid_thw(grid_thw, spatial_merge_size)
    device = grid_thw.device if isinstance(grid_thw, torch.Tensor) else None
    t, hw = torch.tensor([[g[0], g[1] * g[2]] for g in grid], dtype=torch.int64, device=device).unbind(1)
    cu_seqlens = F.pad(torch.repeat_interleave(hw, t).cumsum(0), (1, 0)).to(torch.int32)
    return segment_block_mask(cu_seqlens, block_size), cu_seqlens
