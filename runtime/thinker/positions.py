"""TMRoPE positions of a prompt: `omni_kernels.rope_index` with the media's grids and lengths, for
the Thinker's prompt ids and for the Talker's text track (the Thinker's prompt + speaker bos +
first reply token), each with its own config's token ids."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from omni_kernels import rope_index

__all__ = ["rope_positions"]


def rope_positions(ids: list[int], config, *, spatial_merge_size: int, image_grids: Sequence = (),
                   video_grids: Sequence = (), second_per_grids: Sequence = (), audio_lengths: Sequence = (),
                   use_audio_in_video: bool = False) -> tuple[torch.Tensor, int]:
    """-> ((3, L) int64 CPU positions, rope delta). config: a Thinker or Talker config (both carry
    the placeholder ids, position_id_per_seconds and seconds_per_chunk)."""
    def tensor(rows, dtype=torch.long) -> Optional[torch.Tensor]:
        rows = [list(r) if isinstance(r, (list, tuple)) else r for r in rows]
        return torch.tensor(rows, dtype=dtype) if len(rows) else None

    pos, delta = rope_index(
        torch.tensor([ids], dtype=torch.long),
        image_grid_thw=tensor(image_grids), video_grid_thw=tensor(video_grids),
        use_audio_in_video=use_audio_in_video, audio_seqlens=tensor(audio_lengths),
        second_per_grids=tensor(second_per_grids, torch.float32) if len(second_per_grids) else None,
        spatial_merge_size=spatial_merge_size,
        image_token_id=config.image_token_index, video_token_id=config.video_token_index,
        audio_token_id=config.audio_token_index, vision_start_token_id=config.vision_start_token_id,
        audio_start_token_id=config.audio_start_token_id, position_id_per_seconds=config.position_id_per_seconds,
        seconds_per_chunk=config.seconds_per_chunk)
    return pos[:, 0], int(delta.reshape(-1)[0])
