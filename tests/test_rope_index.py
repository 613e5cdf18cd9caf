"""rope_index against transformers' Qwen2.5-Omni thinker `get_rope_index` (bit-exact), plus its errors."""
import functools
import types

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_kernels.rope_index import rope_index

# Token ids of the released Qwen2.5-Omni config.
IMG, VID, AUD = 151655, 151656, 151646
VS, VE, AS, AE = 151652, 151653, 151647, 151648
PAD = 151643

REAL = (2, 25, 2)  # spatial_merge_size, position_id_per_seconds, seconds_per_chunk
SMALL_CHUNK = (2, 5, 1)  # 5 t-ids per chunk: many chunks from tiny videos
NO_MERGE = (1, 25, 2)


@functools.lru_cache(maxsize=None)
def thinker(cfg=REAL):
    """A tiny thinker: get_rope_index reads only the merge size, token ids and the two time knobs."""
    transformers = pytest.importorskip("transformers")
    merge, pps, spc = cfg
    config = transformers.Qwen2_5OmniThinkerConfig(
        audio_config=dict(
            num_mel_bins=8, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=8,
            d_model=8, output_dim=8, max_source_positions=16, n_window=4,
        ),
        vision_config=dict(
            depth=1, hidden_size=8, intermediate_size=8, num_heads=2, out_hidden_size=8,
            fullatt_block_indexes=[0], spatial_merge_size=merge, patch_size=2, window_size=8,
        ),
        text_config=dict(
            vocab_size=32, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1,
        ),
        vision_start_token_id=VS,
        position_id_per_seconds=pps,
        seconds_per_chunk=spc,
    )
    return transformers.Qwen2_5OmniThinkerForConditionalGeneration(config).eval()


def n_audio_tokens(mel):
    return ((mel - 1) // 2 + 1 - 2) // 2 + 1


def aiv_region(model, grid, spg, mel, cfg):
    """Interleaved video/audio tokens exactly as get_rope_index expects (its own chunker)."""
    merge, pps, spc = cfg
    t, h, w = grid
    tpc = int(pps * spc)
    t_ids = (torch.arange(t) * spg * pps).long().repeat_interleave((h // merge) * (w // merge))
    vc = model.get_chunked_index(t_ids, tpc, 0)
    ac = model.get_chunked_index(torch.arange(n_audio_tokens(mel)), tpc, 0)
    out = []
    for j in range(max(len(vc), len(ac))):
        if j < len(vc):
            out += [VID] * (vc[j][1] - vc[j][0])
        if j < len(ac):
            out += [AUD] * (ac[j][1] - ac[j][0])
    return out


def call_both(model, cfg, ids, mask, images, videos, spgs, mels, aiv, empty_grids=False):
    merge, pps, spc = cfg
    img = torch.tensor(images, dtype=torch.long).view(-1, 3) if images else None
    vid = torch.tensor(videos, dtype=torch.long).view(-1, 3) if videos else None
    if empty_grids and img is None:  # an empty grid still selects transformers' multimodal branch
        img = torch.zeros(0, 3, dtype=torch.long)
    spg = torch.tensor(spgs, dtype=torch.float32) if videos else None
    seql = torch.tensor(mels, dtype=torch.long) if mels else None
    tf_mask = mask
    if mask is None and img is None and vid is None:
        tf_mask = torch.ones_like(ids)  # transformers' text-only branch needs a mask
    want = model.get_rope_index(ids, img, vid, tf_mask, aiv, seql, spg)
    got = rope_index(
        ids, image_grid_thw=img, video_grid_thw=vid, attention_mask=mask, use_audio_in_video=aiv,
        audio_seqlens=seql, second_per_grids=spg, spatial_merge_size=merge,
        position_id_per_seconds=pps, seconds_per_chunk=spc,
    )
    return want, got


def assert_same(want, got):
    assert got[0].dtype == torch.long and got[1].dtype == torch.long
    assert got[0].shape == want[0].shape and got[1].shape == want[1].shape
    assert torch.equal(got[0], want[0].long()), (got[0], want[0])
    assert torch.equal(got[1], want[1].long()), (got[1], want[1])


SPG = st.one_of(st.sampled_from([0.5, 1.0, 2.0, 3.0, 4.0]), st.integers(1, 100).map(lambda k: 0.04 * k))
TEXT_TOKEN = st.one_of(st.integers(0, 151000), st.sampled_from([VE, AE, VS]))


@st.composite
def batches(draw, cfg, aiv, allow_vision=True):
    merge = cfg[0]
    model = thinker(cfg)
    images, videos, spgs, mels, rows = [], [], [], [], []
    kinds = ["text", "audio"] + (["image", "aiv" if aiv else "video"] if allow_vision else [])
    for _ in range(draw(st.integers(1, 3))):
        row = []
        for _ in range(draw(st.integers(0, 4))):
            row += draw(st.lists(TEXT_TOKEN, max_size=3))
            kind = draw(st.sampled_from(kinds))
            if kind == "image":
                g = (draw(st.integers(1, 2)), merge * draw(st.integers(1, 3)), merge * draw(st.integers(1, 3)))
                images.append(g)
                row += [VS] + [IMG] * (g[0] * g[1] * g[2] // merge**2) + [VE]
            elif kind in ("video", "aiv"):
                g = (draw(st.integers(1, 6)), merge * draw(st.integers(1, 3)), merge * draw(st.integers(1, 3)))
                videos.append(g)
                spgs.append(draw(SPG))
                if kind == "video":
                    row += [VS] + [VID] * (g[0] * g[1] * g[2] // merge**2) + [VE]
                else:
                    mels.append(draw(st.integers(3, 400)))
                    spg32 = torch.tensor(spgs[-1], dtype=torch.float32)
                    row += [VS, AS] + aiv_region(model, g, spg32, mels[-1], cfg) + [AE, VE]
            elif kind == "audio":
                if aiv and row and row[-1] == VS:  # <vision_bos><audio_bos> would announce a video
                    row.append(7)
                mels.append(draw(st.integers(3, 400)))
                row += [AS] + [AUD] * n_audio_tokens(mels[-1]) + [AE]
        row += draw(st.lists(TEXT_TOKEN, max_size=3))
        if not row or row[-1] == VS:  # transformers indexes past a trailing <vision_bos>
            row.append(7)
        rows.append(row)
    length = max(map(len, rows))
    length += draw(st.integers(0, 2))
    side = draw(st.sampled_from(["left", "right", "holes"]))
    junk = st.sampled_from([PAD, IMG, VID, AUD, VS, AS, 11])  # padded slots must be ignored
    ids = torch.empty(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, row in enumerate(rows):
        n_pad = length - len(row)
        if side == "holes":  # masked slots anywhere, even inside segments
            keep = draw(st.permutations([1] * len(row) + [0] * n_pad))
        else:
            keep = [0] * n_pad + [1] * len(row) if side == "left" else [1] * len(row) + [0] * n_pad
        mask[b] = torch.tensor(keep)
        ids[b, mask[b] == 0] = torch.tensor([draw(junk) for _ in range(n_pad)], dtype=torch.long)
        ids[b, mask[b] == 1] = torch.tensor(row)
    if bool(mask.all()) and draw(st.booleans()):
        mask = None
    return ids, mask, images, videos, spgs, mels, draw(st.booleans())


@pytest.mark.parametrize("cfg", [REAL, SMALL_CHUNK, NO_MERGE], ids=["real", "small_chunk", "no_merge"])
@pytest.mark.parametrize("aiv", [False, True], ids=["plain", "audio_in_video"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_matches_transformers(cfg, aiv, data):
    ids, mask, images, videos, spgs, mels, empty_grids = data.draw(batches(cfg, aiv))
    want, got = call_both(thinker(cfg), cfg, ids, mask, images, videos, spgs, mels, aiv, empty_grids)
    assert_same(want, got)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_text_and_audio_only_branch_matches_transformers(data):
    """No grids: transformers' cumsum branch, including its padding-delta quirk."""
    ids, mask, _, _, _, mels, drop_seqlens = data.draw(batches(REAL, False, allow_vision=False))
    want, got = call_both(thinker(), REAL, ids, mask, [], [], [], [] if drop_seqlens else mels, False)
    assert_same(want, got)


def test_docstring_example_and_device():
    # <vision_bos> video (T=3 with 2 s per grid, 2x2 merged) <vision_eos> then text.
    ids = torch.tensor([[VS] + [VID] * 12 + [VE, 1, 2]])
    pos, delta = rope_index(ids, **vid(grid=(3, 4, 4), spg=torch.tensor([2.0])))
    assert pos[0, 0].tolist() == [0] + [1] * 4 + [51] * 4 + [101] * 4 + [102, 103, 104]
    assert pos[1, 0].tolist() == [0] + [1, 1, 2, 2] * 3 + [102, 103, 104]
    assert pos[2, 0].tolist() == [0] + [1, 2, 1, 2] * 3 + [102, 103, 104]
    assert delta.tolist() == [[105 - 16]]
    assert pos.device == ids.device and delta.device == ids.device


def test_quirks_reproduced():
    model = thinker()
    # Text-only branch: padding holds 1 and counts in the max, so a 1-token row gets delta 1.
    ids = torch.tensor([[PAD, PAD, 5], [4, 5, 6]])
    mask = torch.tensor([[0, 0, 1], [1, 1, 1]])
    got = rope_index(ids, attention_mask=mask)
    assert got[1].tolist() == [[1], [0]]
    assert_same(model.get_rope_index(ids, None, None, mask), got)
    # ... and a fully padded row gets delta 2.
    ids, mask = torch.tensor([[PAD, PAD], [4, 5]]), torch.tensor([[0, 0], [1, 1]])
    got = rope_index(ids, attention_mask=mask)
    assert got[0][:, 0].tolist() == [[1, 1]] * 3 and got[1].tolist() == [[2], [0]]
    assert_same(model.get_rope_index(ids, None, None, mask), got)
    # Images with t > 1 step their temporal id by position_id_per_seconds (as if 1 s per patch).
    ids = torch.tensor([[VS] + [IMG] * 2 + [VE]])
    got = rope_index(ids, image_grid_thw=torch.tensor([[2, 2, 2]]))
    assert got[0][0, 0].tolist() == [0, 1, 26, 27]
    # Audio in video: both bos share a position, both eos too; the eos pair goes right after the
    # last chunk emitted (the audio one here), below the video's max h -- later text re-uses it.
    grid, mel = (1, 8, 8), 3  # one frame of 4x4 merged tokens; 1 audio token
    ids = torch.tensor([[VS, AS] + aiv_region(model, grid, torch.tensor(1.0), mel, REAL) + [AE, VE, 9]])
    assert ids[0].tolist() == [VS, AS] + [VID] * 16 + [AUD, AE, VE, 9]
    vg, spg, seql = torch.tensor([grid]), torch.tensor([1.0]), torch.tensor([mel])
    got = rope_index(ids, video_grid_thw=vg, second_per_grids=spg, audio_seqlens=seql, use_audio_in_video=True)
    assert got[0][1, 0].tolist() == [0, 0] + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [1, 2, 2, 3]
    assert got[1].tolist() == [[4 + 1 - 22]]
    assert_same(model.get_rope_index(ids, None, vg, None, True, seql, spg), got)


class _Proc:
    """Just enough of Qwen2_5OmniProcessor to run its replace_video_with_audio_token."""

    audio_bos_token, audio_eos_token, video_token, audio_token = "B", "E", "V", "A"
    video_processor = types.SimpleNamespace(merge_size=2)

    def get_chunked_index(self, token_indices, tokens_per_chunk):
        from transformers import Qwen2_5OmniProcessor

        return Qwen2_5OmniProcessor.get_chunked_index(self, token_indices, tokens_per_chunk)


def processor_aiv_ids(grid, spg, mel):
    from transformers import Qwen2_5OmniProcessor

    text = Qwen2_5OmniProcessor.replace_video_with_audio_token(
        _Proc(), {"video_grid_thw": np.array([grid]), "video_second_per_grid": [spg]}, 0,
        {"num_audio_tokens": [n_audio_tokens(mel)]}, 0, position_id_per_seconds=25, seconds_per_chunk=2.0,
    )
    return [VS] + [{"B": AS, "E": AE, "V": VID, "A": AUD}[c] for c in text] + [VE]


@pytest.mark.parametrize("spg", [1.0, 0.5, 2.0, 4.0])
def test_processor_audio_in_video_layout(spg):
    """The official processor's interleave is what get_rope_index (and rope_index) expect."""
    grid, mel = (6, 4, 4), 900
    ids = torch.tensor([[1, 2] + processor_aiv_ids(grid, spg, mel) + [3]])
    want, got = call_both(thinker(), REAL, ids, None, [], [grid], [spg], [mel], True)
    assert_same(want, got)


def test_processor_float64_chunking_mismatch_is_rejected():
    """The processor chunks float64 t-ids, get_rope_index truncated float32 ones; they can disagree.

    With 1.16 s per grid frame 50 is at 1449.999... (f64, chunk 28) but 1450 (f32, chunk 29), so
    transformers silently gives audio positions to video tokens; rope_index refuses.
    """
    grid, spg, mel = (51, 2, 2), 1.16, 6000
    ids = torch.tensor([processor_aiv_ids(grid, spg, mel)])
    vg, spg32, seql = torch.tensor([grid]), torch.tensor([spg]), torch.tensor([mel])
    thinker().get_rope_index(ids, None, vg, None, True, seql, spg32)  # no complaint
    with pytest.raises(ValueError, match="interleave"):
        rope_index(ids, video_grid_thw=vg, second_per_grids=spg32, audio_seqlens=seql, use_audio_in_video=True)


# ---- errors -----------------------------------------------------------------------------------

IMG_ROW = [1, VS] + [IMG] * 4 + [VE, 2]
AUD_ROW = [1, AS] + [AUD] * n_audio_tokens(40) + [AE, 2]
VID_ROW = [1, VS] + [VID] * 2 + [VE, 2]


def ids_of(*rows):
    return torch.tensor([list(r) for r in rows])


def img(*grids):
    return dict(image_grid_thw=torch.tensor(grids))


def vid(grid=(2, 2, 2), spg=(1.0,), **kw):
    return dict(video_grid_thw=torch.tensor([grid]), second_per_grids=spg, **kw)


def aud(*mels):
    return dict(audio_seqlens=torch.tensor(mels))


GOOD = img([1, 4, 4])
EMPTY_IMG = dict(image_grid_thw=torch.zeros(0, 3, dtype=torch.long))


@pytest.mark.parametrize(
    "ids, kw, match",
    [
        (torch.tensor(IMG_ROW), GOOD, "input_ids must be 2-D"),
        (ids_of(IMG_ROW).float(), GOOD, "input_ids must hold integer"),
        (torch.zeros(1, 0, dtype=torch.long), {}, "input_ids must be non-empty"),
        (ids_of(IMG_ROW), dict(GOOD, attention_mask=torch.ones(1, 3)), "attention_mask shape"),
        (ids_of(IMG_ROW), dict(GOOD, attention_mask=torch.full((1, 8), 2)), "attention_mask must contain only 0"),
        (ids_of(IMG_ROW), dict(GOOD, attention_mask=torch.zeros(1, 8)), "attention_mask row 0 has no tokens"),
        (ids_of(IMG_ROW), img([1, 4, 4], [1, 2, 2]), "image_grid_thw has 2 entries"),
        (ids_of(IMG_ROW, IMG_ROW), GOOD, "image_grid_thw has 1 entries"),
        (ids_of(IMG_ROW), {}, "image_grid_thw is None"),
        (ids_of(IMG_ROW), img([1, 4, 6]), r"image_grid_thw\[0\].*needs 6 image tokens"),
        (ids_of(IMG_ROW), img([1, 4, 3]), "multiples of spatial_merge_size"),
        (ids_of(IMG_ROW), img([1, -4, 4]), "must be positive"),
        (ids_of(IMG_ROW), img([0, 4, 4]), "must be positive"),
        (ids_of(IMG_ROW), img([4, 4]), "image_grid_thw must have shape"),
        (ids_of(IMG_ROW), img([1.0, 4, 4]), "image_grid_thw must hold integers"),
        (ids_of([1, 5] + IMG_ROW[2:]), GOOD, "not preceded by <vision_bos>"),
        (ids_of([1, VS] + [IMG] * 4), GOOD, "lacks its eos"),
        (ids_of([VS] + [IMG] * 4 + [VS] + [IMG] * 4 + [VE]), img([1, 4, 4], [1, 4, 4]), "overlaps"),
        (ids_of(VID_ROW), vid(spg=None), "second_per_grids is required"),
        (ids_of(VID_ROW), vid(spg=torch.tensor([1.0, 2.0])), "second_per_grids has 2 entries"),
        (ids_of(VID_ROW), vid(spg=torch.tensor([-1.0])), "second_per_grids must be finite and non-negative"),
        (ids_of(VID_ROW), vid(spg=[float("nan")]), "second_per_grids must be finite and non-negative"),
        (ids_of(VID_ROW), vid(spg=torch.tensor([[1.0]])), "second_per_grids must be 1-D"),
        (ids_of(VID_ROW), vid(grid=(3, 2, 2)), r"video_grid_thw\[0\].*needs 3 video tokens"),
        (ids_of(VID_ROW), vid(use_audio_in_video=True), "<vision_bos><audio_bos>"),
        (ids_of(AUD_ROW), EMPTY_IMG, "audio_seqlens is required"),
        (ids_of(AUD_ROW), aud(40, 40), "audio_seqlens has 2 entries"),
        (ids_of(AUD_ROW), aud(44), r"audio_seqlens\[0\] = 44 gives 11 audio tokens"),
        (ids_of(AUD_ROW), aud(-5), "is negative"),
        (ids_of(AUD_ROW), aud(2), "yields no audio token"),
        (ids_of(AUD_ROW), dict(audio_seqlens=torch.tensor([40.0])), "audio_seqlens must hold integers"),
        (ids_of(AUD_ROW), dict(audio_seqlens=torch.tensor([[40]])), "audio_seqlens must be 1-D"),
        (ids_of([1, AS, 3] + IMG_ROW), GOOD, "1 <audio_bos> tokens but 0 audio segments"),
        (ids_of(IMG_ROW), dict(GOOD, spatial_merge_size=0), "spatial_merge_size"),
        (ids_of(IMG_ROW), dict(GOOD, position_id_per_seconds=-25), "position_id_per_seconds"),
        (ids_of(IMG_ROW), dict(GOOD, seconds_per_chunk=0), "seconds_per_chunk"),
        (ids_of(IMG_ROW), dict(GOOD, audio_token_id=IMG), "distinct"),
    ],
)
def test_value_errors(ids, kw, match):
    with pytest.raises(ValueError, match=match):
        rope_index(ids, **kw)


def test_audio_in_video_errors():
    model = thinker()
    grid, mel = (3, 2, 2), 200  # t-ids 0, 50, 100; 50 audio tokens
    region = aiv_region(model, grid, torch.tensor(2.0), mel, REAL)
    kw = dict(video_grid_thw=torch.tensor([grid]), second_per_grids=torch.tensor([2.0]),
              audio_seqlens=torch.tensor([mel]), use_audio_in_video=True)
    rope_index(ids_of([1, VS, AS] + region + [AE, VE]), **kw)  # valid
    swapped = sorted(region, key=lambda t: t != VID)  # all video first: wrong interleave
    with pytest.raises(ValueError, match="interleave"):
        rope_index(ids_of([1, VS, AS] + swapped + [AE, VE]), **kw)
    with pytest.raises(ValueError, match="need 53 interleaved tokens"):
        rope_index(ids_of([1, VS, AS] + region + [AUD, AE, VE]), **kw)
    with pytest.raises(ValueError, match="lacks its two eos"):
        rope_index(ids_of([1, VS, AS] + region + [AE]), **kw)
    with pytest.raises(ValueError, match="use_audio_in_video=True"):
        rope_index(ids_of([1, VS, AS] + region + [AE, VE]), **dict(kw, use_audio_in_video=False))
    with pytest.raises(ValueError, match="pairs but 1 audio-in-video"):  # transformers crashes here
        rope_index(ids_of([1, VS, AS] + region + [AE, VE, VS, AS, AUD, AE]), **dict(kw, **aud(mel, 3)))
    with pytest.raises(ValueError, match="seconds_per_chunk"):
        rope_index(ids_of([1, VS, AS] + region + [AE, VE]), **dict(kw, seconds_per_chunk=0.01))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = thinker()
    grid, mel = (4, 4, 4), 400
    row = [1, VS, AS] + aiv_region(model, grid, torch.tensor(0.5), mel, REAL) + [AE, VE, 2] + IMG_ROW[1:]
    ids = torch.tensor([[PAD] * 3 + row, row + [PAD] * 3])
    mask = (torch.arange(ids.shape[1]) >= 3).long().view(1, -1).repeat(2, 1)
    mask[1] = mask[0].flip(0)
    kw = dict(img([1, 4, 4], [1, 4, 4]), video_grid_thw=torch.tensor([grid] * 2), **aud(mel, mel),
              second_per_grids=torch.tensor([0.5, 0.5]), use_audio_in_video=True)
    want = rope_index(ids, attention_mask=mask, **kw)
    got = rope_index(ids.cuda(), attention_mask=mask.cuda(), **kw)
    assert got[0].is_cuda and got[1].is_cuda
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
