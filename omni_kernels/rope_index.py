"""3-D (t, h, w) multimodal RoPE position ids for the Qwen2.5-Omni thinker (TMRoPE).

`rope_index` returns exactly what transformers'
`Qwen2_5OmniPreTrainedModelForConditionalGeneration.get_rope_index` returns (same argument
names and meaning), but builds every run of positions with tensor ops instead of Python loops
over tokens (transformers' audio-in-video chunking walks every video token in Python: ~0.5 s
for a 10-minute video, against a few ms here).

Layout rules (per batch row, after dropping the tokens where ``attention_mask == 0``):

* Text tokens, and the bos / eos token around every multimodal segment, take consecutive
  positions (the same value on t, h and w), continuing from ``max(previous positions) + 1``.
* Image: ``<vision_bos> <IMAGE>*N <vision_eos>`` with ``N = T*H*W / merge**2``.  Token
  ``(f, i, j)`` of the merged ``T x H/merge x W/merge`` grid gets ``start + (f * pps, i, j)``
  where ``pps = position_id_per_seconds`` (an image is treated as 1 s per temporal patch).
* Video: ``<vision_bos> <VIDEO>*N <vision_eos>``: same grid but the temporal id of frame
  ``f`` is ``int(f * second_per_grids[v] * pps)`` evaluated in float32, as transformers does.
* Audio: ``<audio_bos> <AUDIO>*N <audio_eos>`` with ``N`` derived from the mel length
  (two stride-2 convolutions: ``((L - 1) // 2 + 1 - 2) // 2 + 1``); consecutive positions.
* Audio in video (``use_audio_in_video=True``):
  ``<vision_bos> <audio_bos> [video chunk 0][audio chunk 0][video chunk 1]... <audio_eos>
  <vision_eos>``.  Both bos tokens share one position, and so do both eos tokens.  Video and
  audio tokens both start at ``bos + 1``; chunk ``c`` holds the tokens whose temporal id lies
  in ``[c, c + 1) * int(pps * seconds_per_chunk)`` -- except that, like transformers, the chunk
  counter advances by at most one per token, so a frame that jumps several chunks is split
  into one-token chunks.  The eos position is ``max(last chunk emitted) + 1`` (which may be
  below the largest position of the video).
* Padded slots get position 1.  ``mrope_position_deltas = max(positions) + 1 - n_tokens``.
* Without any grid (``image_grid_thw`` and ``video_grid_thw`` both None) transformers takes
  its text-only branch: ``cumsum(mask) - 1`` and a delta computed over the padded row too
  (so a row with a single real token gets delta 1).  That branch is reproduced as is.

Grids, ``second_per_grids`` and ``audio_seqlens`` are consumed in order of appearance over
the whole batch (row 0 first).  Inputs that transformers would mis-handle silently or crash on
(missing bos, counts or lengths that do not match the grids, an interleave that does not
match the chunking, ...) raise ``ValueError`` naming the offending argument.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["rope_index"]

_IMG, _VID, _AUD, _AIV = "image", "video", "audio", "audio-in-video"


def _audio_tokens(mel_len: int) -> int:
    # Output length of the audio tower: conv stride 2, then the stride-2 average pool.
    return ((mel_len - 1) // 2 + 1 - 2) // 2 + 1


def _as_tensor(x, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be a tensor or a (nested) sequence of numbers: {e}") from None


def _is_int_dtype(t: Tensor) -> bool:
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


def _check_grid(grid, name: str, merge: int) -> list[tuple[int, int, int]] | None:
    if grid is None:
        return None
    g = _as_tensor(grid, name)
    if g.numel() == 0:
        return []
    if g.ndim != 2 or g.shape[1] != 3:
        raise ValueError(f"{name} must have shape (num_items, 3) as (t, h, w); got {tuple(g.shape)}")
    if not _is_int_dtype(g):
        raise ValueError(f"{name} must hold integers; got dtype {g.dtype}")
    rows = [tuple(int(v) for v in r) for r in g.tolist()]
    for k, (t, h, w) in enumerate(rows):
        if t < 1 or h < 1 or w < 1:
            raise ValueError(f"{name}[{k}] = {(t, h, w)}: t, h and w must be positive")
        if h % merge or w % merge:
            # transformers would floor-divide and produce fewer positions than tokens.
            raise ValueError(
                f"{name}[{k}] = {(t, h, w)}: h and w must be multiples of spatial_merge_size={merge}"
            )
    return rows


def _check_1d(x, name: str) -> Tensor | None:
    if x is None:
        return None
    t = _as_tensor(x, name)
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per item); got shape {tuple(t.shape)}")
    return t


def _fill_grid(dst: Tensor, t_frames: Tensor, gh: int, gw: int, base: int) -> None:
    """Write the positions of a merged T x gh x gw grid into dst (3, T*gh*gw), frame-major.

    Broadcast writes into a (3, T, gh, gw) view: one pass over the output, no temporaries.
    """
    nt = t_frames.numel()
    grid = dst.view(3, nt, gh, gw)
    grid[0] = (t_frames.to(dst.device) + base).view(nt, 1, 1)
    grid[1] = torch.arange(base, base + gh, device=dst.device).view(1, gh, 1)
    grid[2] = torch.arange(base, base + gw, device=dst.device).view(1, 1, gw)


def _chunk_ids(t: Tensor, tpc: int) -> Tensor:
    """0-based chunk of each token, as transformers' `get_chunked_index` assigns them.

    Its loop keeps a counter c (from 1) and, per token, does ``c += 1`` when ``t >= c * tpc``:
    c chases k = t // tpc + 1 one step per token.  The lag d = k - c obeys the Lindley
    recursion d_i = max(d_{i-1} + (k_i - k_{i-1}) - 1, 0), whose closed form is
    S_i - min(0, min_{j<=i} S_j) with S_i = k_i - i - 2; hence a cummin instead of a loop.
    """
    k = t // tpc + 1
    s = k - torch.arange(t.numel(), device=t.device) - 2
    lag = s - s.cummin(0).values.clamp(max=0)
    return k - lag - 1


def _num_chunks(t_frames: Tensor, per_frame: int, tpc: int) -> int:
    """Number of chunks `_chunk_ids` yields for a video, from per-frame values (no device sync).

    Inside a frame k is constant and S decreases, so min S is reached at frames' last tokens.
    """
    k = t_frames // tpc + 1
    last = (torch.arange(1, t_frames.numel() + 1) * per_frame) - 1
    s = k - last - 2
    lag = int(s[-1]) - min(0, int(s.min()))
    return int(k[-1]) - lag


def _row_segments(row: Tensor, b: int, ids: dict, aiv: bool, masked: bool) -> tuple[list[tuple], int, int]:
    """Split one row into multimodal segments (kind, first placeholder index, length).

    Also returns the number of <audio_bos> tokens and of <vision_bos><audio_bos> pairs in the row.

    Only runs of placeholder tokens are inspected (one device->host copy per row), so text of
    any length costs nothing here.  Checks the bos / eos slots transformers silently assumes.
    """
    n = row.numel()
    img, vid, aud, vs, as_ = ids["image"], ids["video"], ids["audio"], ids["vstart"], ids["astart"]
    ph = (row == img) | (row == vid) | (row == aud)
    new = torch.ones(n, dtype=torch.bool, device=row.device)
    new[1:] = row[1:] != row[:-1]
    last = torch.ones(n, dtype=torch.bool, device=row.device)
    last[:-1] = row[:-1] != row[1:]
    starts = torch.nonzero(ph & new).flatten()
    ends = torch.nonzero(ph & last).flatten() + 1
    # <audio_bos> tokens, and <vision_bos><audio_bos> pairs: transformers counts these as segments.
    counts = torch.stack([(row == as_).sum(), ((row[:-1] == vs) & (row[1:] == as_)).sum()])
    if starts.numel() == 0:
        return [], *counts.tolist()
    prev1 = row[(starts - 1).clamp(min=0)]
    prev2 = row[(starts - 2).clamp(min=0)]
    runs = torch.stack([starts, ends, row[starts], prev1, prev2]).T
    # One host copy for the run table and the counts.
    flat = torch.cat([counts, runs.reshape(-1)]).tolist()
    counts, runs = flat[:2], [flat[2 + 5 * r : 7 + 5 * r] for r in range(runs.shape[0])]

    where = f"input_ids row {b}" + (" (after dropping attention_mask == 0 tokens)" if masked else "")
    segs: list[tuple] = []
    cursor = 0  # first slot not yet consumed (transformers' `st`)
    j = 0
    while j < len(runs):
        s, e, tok, p1, p2 = runs[j]
        if tok == vid and aiv:
            # <vision_bos> <audio_bos> then a maximal stretch of adjacent video/audio runs.
            if s < 2 or p2 != vs or p1 != as_:
                raise ValueError(
                    f"{where}: video placeholder at index {s} is not preceded by <vision_bos><audio_bos>, "
                    "which use_audio_in_video=True requires (plain videos are not supported in that mode)"
                )
            if s - 2 < cursor:
                raise ValueError(f"{where}: video segment at index {s} overlaps the previous segment")
            end = e
            j += 1
            while j < len(runs) and runs[j][0] == end and runs[j][2] in (vid, aud):
                end = runs[j][1]
                j += 1
            if end + 2 > n:
                raise ValueError(f"{where}: audio-in-video segment at index {s} lacks its two eos tokens")
            segs.append((_AIV, s, end - s))
            cursor = end + 2
            continue
        kind, bos, bos_name = {
            img: (_IMG, vs, "<vision_bos>"),
            vid: (_VID, vs, "<vision_bos>"),
            aud: (_AUD, as_, "<audio_bos>"),
        }[tok]
        if s < 1 or p1 != bos:
            hint = " (use_audio_in_video=True?)" if kind == _VID and p1 == as_ else ""
            raise ValueError(f"{where}: {kind} placeholder at index {s} is not preceded by {bos_name}{hint}")
        if s - 1 < cursor:
            raise ValueError(f"{where}: {kind} segment at index {s} overlaps the previous segment")
        if e >= n:
            raise ValueError(f"{where}: {kind} segment at index {s} lacks its eos token")
        segs.append((kind, s, e - s))
        cursor = e + 1
        j += 1
    return segs, *counts


def rope_index(
    input_ids: Tensor,
    *,
    image_grid_thw: Tensor | None = None,
    video_grid_thw: Tensor | None = None,
    attention_mask: Tensor | None = None,
    use_audio_in_video: bool = False,
    audio_seqlens: Tensor | None = None,
    second_per_grids: Tensor | Sequence[float] | None = None,
    spatial_merge_size: int = 2,
    image_token_id: int = 151655,
    video_token_id: int = 151656,
    audio_token_id: int = 151646,
    vision_start_token_id: int = 151652,
    audio_start_token_id: int = 151647,
    position_id_per_seconds: int | float = 25,
    seconds_per_chunk: int | float = 2,
) -> tuple[Tensor, Tensor]:
    """TMRoPE position ids of a batch, identical to transformers' Qwen2.5-Omni `get_rope_index`.

    Args:
        input_ids: (B, L) token ids.
        image_grid_thw: (num_images, 3) patch grids (t, h, w) of all images, in batch order.
        video_grid_thw: (num_videos, 3) patch grids of all videos, in batch order.
        attention_mask: (B, L) of 0/1; 0 marks padding (left or right, or anywhere).
        use_audio_in_video: videos carry their audio interleaved (see the module docstring).
        audio_seqlens: (num_audios,) mel-frame lengths of all audios (standalone and in-video),
            in order of appearance.
        second_per_grids: (num_videos,) seconds per temporal grid step of each video.
        spatial_merge_size .. seconds_per_chunk: the thinker config values.

    Returns:
        position_ids: (3, B, L) int64, on input_ids' device; padded slots hold 1.
        mrope_position_deltas: (B, 1) int64.
    """
    # ---- argument checks -------------------------------------------------------------------
    if not isinstance(input_ids, Tensor):
        raise ValueError(f"input_ids must be a torch.Tensor; got {type(input_ids).__name__}")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be 2-D (batch, seq_len); got shape {tuple(input_ids.shape)}")
    if not _is_int_dtype(input_ids):
        raise ValueError(f"input_ids must hold integer token ids; got dtype {input_ids.dtype}")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be non-empty; got shape {tuple(input_ids.shape)}")
    batch, seqlen = input_ids.shape
    device = input_ids.device

    mask = None
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor):
            raise ValueError("attention_mask must be a torch.Tensor")
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                f"{tuple(input_ids.shape)}"
            )
        am = attention_mask.to(device)
        mask = am == 1
        if not bool((mask | (am == 0)).all()):
            raise ValueError("attention_mask must contain only 0 and 1")

    def as_int(name, v):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{name} must be an int; got {v!r}")
        return int(v)

    def as_positive(name, v):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive number; got {v!r}")
        return int(v) if isinstance(v, numbers.Integral) else float(v)

    spatial_merge_size = as_int("spatial_merge_size", spatial_merge_size)
    if spatial_merge_size < 1:
        raise ValueError(f"spatial_merge_size must be >= 1; got {spatial_merge_size}")
    position_id_per_seconds = as_positive("position_id_per_seconds", position_id_per_seconds)
    seconds_per_chunk = as_positive("seconds_per_chunk", seconds_per_chunk)
    special = {
        "image_token_id": as_int("image_token_id", image_token_id),
        "video_token_id": as_int("video_token_id", video_token_id),
        "audio_token_id": as_int("audio_token_id", audio_token_id),
        "vision_start_token_id": as_int("vision_start_token_id", vision_start_token_id),
        "audio_start_token_id": as_int("audio_start_token_id", audio_start_token_id),
    }
    video_token_id, audio_token_id = special["video_token_id"], special["audio_token_id"]
    if len(set(special.values())) != len(special):
        raise ValueError(f"special token ids must be distinct; got {special}")
    aiv = bool(use_audio_in_video)
    tpc = int(position_id_per_seconds * seconds_per_chunk)  # same rounding as transformers
    if aiv and tpc < 1:
        raise ValueError(
            "int(position_id_per_seconds * seconds_per_chunk) must be >= 1 with use_audio_in_video=True"
        )

    images = _check_grid(image_grid_thw, "image_grid_thw", spatial_merge_size)
    videos = _check_grid(video_grid_thw, "video_grid_thw", spatial_merge_size)
    n_videos = len(videos) if videos is not None else 0

    spg = _check_1d(second_per_grids, "second_per_grids")
    if spg is not None:
        if spg.dtype == torch.bool or spg.dtype.is_complex:
            raise ValueError(f"second_per_grids must be real numbers; got dtype {spg.dtype}")
        if spg.numel() != n_videos:
            raise ValueError(
                f"second_per_grids has {spg.numel()} entries but video_grid_thw has {n_videos} videos"
            )
        spg = spg.cpu()
        if not bool(torch.isfinite(spg.double()).all()) or bool((spg < 0).any()):
            raise ValueError("second_per_grids must be finite and non-negative")
        # transformers does `second_per_grids[v].cpu().float()`: the float32 value is what counts.
        spg = spg.float()
    elif n_videos:
        raise ValueError("second_per_grids is required when video_grid_thw has videos")

    seql = _check_1d(audio_seqlens, "audio_seqlens")
    audio_lens = None
    if seql is not None:
        if not _is_int_dtype(seql):
            raise ValueError(f"audio_seqlens must hold integers; got dtype {seql.dtype}")
        audio_lens = []
        for k, v in enumerate(seql.tolist()):
            if v < 0:
                raise ValueError(f"audio_seqlens[{k}] = {v} is negative")
            if _audio_tokens(v) < 1:
                raise ValueError(f"audio_seqlens[{k}] = {v} yields no audio token (need >= 3 mel frames)")
            audio_lens.append(_audio_tokens(v))

    # ---- parse every row into segments; grids are consumed in batch order ------------------
    tok = {
        "image": special["image_token_id"],
        "video": video_token_id,
        "audio": audio_token_id,
        "vstart": special["vision_start_token_id"],
        "astart": special["audio_start_token_id"],
    }
    if mask is None:
        spans = [0] * batch
        rows = list(input_ids)
    else:
        # Left / right padding leaves one contiguous span of real tokens: slice it (no copy).
        mk = mask.long()
        n_spans = mk[:, 0] + (mk[:, 1:] > mk[:, :-1]).sum(1)
        n_spans, first, count = torch.stack([n_spans, mk.argmax(1), mk.sum(1)]).tolist()
        spans = [lo if k == 1 else None for k, lo in zip(n_spans, first)]
        rows = [
            input_ids[b, spans[b] : spans[b] + count[b]] if spans[b] is not None else input_ids[b][mask[b]]
            for b in range(batch)
        ]
    parsed = [_row_segments(rows[b], b, tok, aiv, mask is not None) for b in range(batch)]
    row_segs = [p[0] for p in parsed]

    multimodal = images is not None or videos is not None  # transformers' branch condition
    if multimodal:
        for b in range(batch):
            if rows[b].numel() == 0:
                raise ValueError(f"attention_mask row {b} has no tokens (transformers cannot handle it)")
        # transformers counts every <audio_bos> as one audio segment, and with use_audio_in_video
        # every <vision_bos><audio_bos> pair as one video: a stray one derails (or crashes) it.
        for b, (segs, n_astart, n_pairs) in enumerate(parsed):
            n_audio = sum(seg[0] in (_AUD, _AIV) for seg in segs)
            if n_astart != n_audio:
                raise ValueError(
                    f"input_ids row {b} has {n_astart} <audio_bos> tokens but {n_audio} audio segments "
                    "(every <audio_bos> must open an audio segment)"
                )
            n_aiv = sum(seg[0] == _AIV for seg in segs)
            if aiv and n_pairs != n_aiv:
                raise ValueError(
                    f"input_ids row {b} has {n_pairs} <vision_bos><audio_bos> pairs but {n_aiv} audio-in-video "
                    "segments (with use_audio_in_video=True such a pair must open a video)"
                )
    counts = {_IMG: 0, _VID: 0, _AUD: 0}
    for segs in row_segs:
        for seg in segs:
            if seg[0] == _AIV:
                counts[_VID] += 1
                counts[_AUD] += 1
            else:
                counts[seg[0]] += 1
    for kind, given, name in ((_IMG, images, "image_grid_thw"), (_VID, videos, "video_grid_thw")):
        have = f"has {len(given)} entries" if given is not None else "is None"
        if counts[kind] != (len(given) if given is not None else 0):
            raise ValueError(f"input_ids contain {counts[kind]} {kind} segments but {name} {have}")
    if audio_lens is not None and counts[_AUD] != len(audio_lens):
        raise ValueError(
            f"input_ids contain {counts[_AUD]} audio segments (standalone + in video) but audio_seqlens "
            f"has {len(audio_lens)} entries"
        )
    if audio_lens is None and counts[_AUD] and multimodal:
        raise ValueError("audio_seqlens is required when input_ids contain audio segments")

    def vision_frames(kind: str, k: int) -> Tensor:
        # Temporal ids of each grid step, with the exact expression (and dtypes) transformers uses.
        nt = (images if kind == _IMG else videos)[k][0]
        if kind == _IMG:
            return (torch.arange(nt) * 1 * position_id_per_seconds).long()
        return (torch.arange(nt) * spg[k] * position_id_per_seconds).long()

    # Lengths check (also on the text-only branch, where positions don't depend on them).
    idx = {_IMG: 0, _VID: 0, _AUD: 0}
    plan = []  # per row: list of (kind, start, length, grid index, audio index)
    merge2 = spatial_merge_size**2
    for b, segs in enumerate(row_segs):
        where = f"input_ids row {b}"
        row_plan = []
        for kind, s, m in segs:
            if kind in (_IMG, _VID):
                k = idx[kind]
                idx[kind] += 1
                grid = (images if kind == _IMG else videos)[k]
                want = grid[0] * grid[1] * grid[2] // merge2
                name = "image_grid_thw" if kind == _IMG else "video_grid_thw"
                if m != want:
                    raise ValueError(
                        f"{name}[{k}] = {grid} needs {want} {kind} tokens but {where} has {m} at index {s}"
                    )
                row_plan.append((kind, s, m, k, -1))
            elif kind == _AUD:
                a = idx[_AUD]
                idx[_AUD] += 1
                if audio_lens is not None and m != audio_lens[a]:
                    raise ValueError(
                        f"audio_seqlens[{a}] = {int(seql[a])} gives {audio_lens[a]} audio tokens but {where} "
                        f"has {m} at index {s}"
                    )
                row_plan.append((kind, s, m, -1, a))
            else:
                k, a = idx[_VID], idx[_AUD]
                idx[_VID] += 1
                idx[_AUD] += 1
                t, h, w = videos[k]
                want = t * h * w // merge2 + audio_lens[a]
                if m != want:
                    raise ValueError(
                        f"video_grid_thw[{k}] = {videos[k]} and audio_seqlens[{a}] = {int(seql[a])} need "
                        f"{want} interleaved tokens but {where} has {m} at index {s}"
                    )
                row_plan.append((kind, s, m, k, a))
        plan.append(row_plan)

    # ---- text-only branch: transformers' cumsum formula, padding quirks included -----------
    if not multimodal:
        if mask is None:  # transformers requires a mask here; None means "no padding"
            pos = torch.arange(seqlen, device=device).view(1, 1, -1).expand(3, batch, -1).contiguous()
            return pos, torch.zeros(batch, 1, dtype=torch.long, device=device)
        m = mask.long()
        pos = m.cumsum(-1) - 1
        pos.masked_fill_(m == 0, 1)
        deltas = pos.max(-1, keepdim=True).values + 1 - m.sum(-1, keepdim=True)
        return pos.unsqueeze(0).repeat(3, 1, 1), deltas

    # ---- multimodal branch --------------------------------------------------------------
    position_ids = torch.ones(3, batch, seqlen, dtype=torch.long, device=device)
    deltas = []
    checks = []  # (row, start, bool tensor): interleave checks, synced once at the end
    for b in range(batch):
        row = rows[b]
        n = row.numel()
        # Write straight into the output when the row's tokens are one contiguous span.
        lo = spans[b]
        if lo is not None:
            out = position_ids[:, b, lo : lo + n]
        else:
            out = torch.empty(3, n, dtype=torch.long, device=device)
        nxt, top, cursor = 0, -1, 0  # next text position, max position so far, next slot
        for kind, s, m, k, a in plan[b]:
            if kind != _AIV:
                # Text (incl. the previous eos) and this segment's bos: consecutive positions.
                out[:, cursor:s] = torch.arange(nxt, nxt + s - cursor, device=device)
                nxt += s - cursor
                if kind == _AUD:
                    out[:, s : s + m] = torch.arange(nxt, nxt + m, device=device)
                    nxt += m
                else:
                    grid = images[k] if kind == _IMG else videos[k]
                    gh, gw = grid[1] // spatial_merge_size, grid[2] // spatial_merge_size
                    frames = vision_frames(kind, k)
                    _fill_grid(out[:, s : s + m], frames, gh, gw, nxt)
                    nxt += max(int(frames[-1]), gh - 1, gw - 1) + 1
                top = max(top, nxt - 1)  # max(), as an earlier audio-in-video eos may sit lower
                cursor = s + m  # the eos slot starts the next consecutive run
                continue

            # Audio in video: text + <vision_bos>, then <audio_bos> on the same position.
            n_text = s - 1 - cursor
            out[:, cursor : s - 1] = torch.arange(nxt, nxt + n_text, device=device)
            bos = nxt + n_text - 1
            out[:, s - 1] = bos
            base = bos + 1
            t, h, w = videos[k]
            gh, gw = h // spatial_merge_size, w // spatial_merge_size
            frames = vision_frames(_VID, k)
            nv, na = t * gh * gw, audio_lens[a]
            vpos = torch.empty(3, nv, dtype=torch.long, device=device)
            _fill_grid(vpos, frames, gh, gw, 0)
            # Slot of every token in the interleave [V chunk 0][A chunk 0][V chunk 1]...: its rank in
            # its own stream plus the number of tokens of the other stream in earlier chunks (video
            # chunk c precedes audio chunk c).  Both streams are sorted, so no sort is needed.
            cv = _chunk_ids(vpos[0], tpc)
            ca = torch.arange(na, device=device) // tpc
            slot_v = torch.arange(nv, device=device) + (cv * tpc).clamp(max=na)
            slot_a = torch.arange(na, device=device) + torch.searchsorted(cv, ca, right=True)
            region = out[:, s : s + nv + na]
            region.index_copy_(1, slot_v, vpos.add_(base))
            region.index_copy_(1, slot_a, torch.arange(base, base + na, device=device).expand(3, na))
            tokens = row[s : s + nv + na]
            ok = (tokens[slot_v] == video_token_id).all() & (tokens[slot_a] == audio_token_id).all()
            checks.append((b, s, ok))
            vmax = max(int(frames[-1]), gh - 1, gw - 1)
            # transformers puts the eos at max(last emitted chunk) + 1; the last chunk is audio's
            # unless the video has more chunks (then it holds the video's last, largest token).
            last_local = na - 1 if (na - 1) // tpc + 1 >= _num_chunks(frames, gh * gw, tpc) else vmax
            eos = base + last_local + 1
            out[:, s + m : s + m + 2] = eos
            top = max(top, base + max(vmax, na - 1), eos)
            nxt = eos + 1
            cursor = s + m + 2
        if cursor < n:
            out[:, cursor:] = torch.arange(nxt, nxt + n - cursor, device=device)
            top = max(top, nxt + n - cursor - 1)
        if lo is None:
            position_ids[:, b, mask[b]] = out
        deltas.append(top + 1 - n)

    if checks:
        ok = torch.stack([c[2] for c in checks]).tolist()
        for (b, s, _), good in zip(checks, ok):
            if not good:
                raise ValueError(
                    f"input_ids row {b}: the video/audio interleave at index {s} does not match the "
                    "chunking implied by video_grid_thw, second_per_grids, audio_seqlens, "
                    "position_id_per_seconds and seconds_per_chunk"
                )
    return position_ids, torch.tensor(deltas, dtype=torch.long, device=device).view(batch, 1)
