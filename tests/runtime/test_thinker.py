"""The Thinker LLM and its engine against transformers' Qwen2_5OmniThinkerForConditionalGeneration.

Tiny random thinkers (fp32, sdpa) are built in transformers, saved with `save_pretrained` (the
official key layout) and loaded into `omni_runtime.models.thinker_lm.ThinkerLM`. The proof: logits at every
prefill position within 1e-4 relative error, greedy ids identical for 32 new tokens, the same
through chunked / streamed prefill, multimodal positions (rope delta), custom embeddings, seeded
sampling, and once through the Triton kernels under the interpreter.
"""
import importlib
import logging

import pytest
import torch

import omni_kernels
from omni_kernels import rope_index
from omni_kernels.paged_kv_cache import PagedKVCache
from omni_runtime.io import layout
from omni_runtime.config import TextConfig
from omni_runtime.engine import KVCacheFullError, StepState, ThinkerEngine
from omni_runtime.engine.sampling import SamplingParams
from omni_runtime.models.thinker_lm import ThinkerLM

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)
transformers.logging.set_verbosity_error()

VOCAB = 256
STOP = VOCAB - 1  # made unreachable (see _sharpen), so 32 tokens are always generated
IDS = dict(vision_start_token_id=249, vision_end_token_id=248, image_token_index=250, audio_token_index=251,
           video_token_index=252, audio_start_token_id=253, audio_end_token_id=254)
RTOL = 1e-4

CONFIGS = {
    # GQA 2:1 with 2 KV heads (a wrong q-head -> kv-head mapping shows), head_dim 16.
    "tiny": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, mrope=[2, 3, 3]),
    # The 7B's ratios at small width: GQA 7:1, head_dim 128, mrope [16, 24, 24], hidden = heads * head_dim.
    "7b-ratios": dict(hidden_size=1792, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=14,
                      num_key_value_heads=2, mrope=[16, 24, 24]),
}


def _hf_config(name):
    c = dict(CONFIGS[name])
    mrope = c.pop("mrope")
    text = dict(vocab_size=VOCAB, max_position_embeddings=256, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope}, **c)
    audio = dict(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                 output_dim=c["hidden_size"])
    vision = dict(depth=1, hidden_size=16, intermediate_size=24, num_heads=2, out_hidden_size=c["hidden_size"],
                  fullatt_block_indexes=[0])
    cfg = transformers.Qwen2_5OmniThinkerConfig(text_config=text, audio_config=audio, vision_config=vision, **IDS)
    cfg._attn_implementation = "sdpa"
    return cfg


def _sharpen(hf):
    """Re-draw the LLM weights with unit-scale logits (the default init gives nearly uniform
    logits, where greedy ties would make id comparisons meaningless); STOP is never the argmax."""
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if not n.startswith(("model.language_model.", "lm_head.")):
                continue
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.dim() == 2:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5 * (2.0 if n.startswith("lm_head") else 1.0))
            else:
                p.copy_(0.1 * torch.randn_like(p))
        hf.lm_head.weight[STOP] = 0
        hf.lm_head.weight[STOP, 0] = -1e-3


class Pair:
    """A transformers thinker and our ThinkerLM with the same weights, plus memoized references."""

    def __init__(self, name, tmp_path):
        torch.manual_seed(1234)
        self.hf_config = _hf_config(name)
        self.hf = transformers.Qwen2_5OmniThinkerForConditionalGeneration(self.hf_config).eval()
        _sharpen(self.hf)
        self.hf.save_pretrained(tmp_path)
        from safetensors.torch import load_file

        # A thinker saved alone has no "thinker." prefix; the official checkpoint has it.
        tensors = {f"thinker.{k}": v for k, v in load_file(str(tmp_path / "model.safetensors")).items()}
        self.saved_keys = sorted(k for k in tensors if k.startswith(("thinker.model.", "thinker.lm_head.")))
        self.config = TextConfig.from_dict(self.hf_config.text_config.to_dict())
        self.model = ThinkerLM.from_state_dict(self.config, tensors)
        self._refs = {}

    def engine(self, **kw):
        kw.setdefault("num_blocks", 48)
        kw.setdefault("block_size", 8)
        return ThinkerEngine(self.model, **kw)

    @torch.no_grad()
    def reference(self, prompt, max_new_tokens=32, image_grid_thw=None):
        """transformers at batch 1: logits at every prompt position, greedy ids, decode logits,
        hidden states / embeddings of every cached position."""
        grid_key = None if image_grid_thw is None else tuple(image_grid_thw.flatten().tolist())
        key = (tuple(prompt), max_new_tokens, grid_key)
        if key not in self._refs:
            ids = torch.tensor([prompt])
            extra = {} if image_grid_thw is None else {"image_grid_thw": image_grid_thw}
            mask = torch.ones_like(ids)
            logits = self.hf(input_ids=ids, attention_mask=mask, **extra).logits[0]
            out = self.hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                   eos_token_id=STOP, pad_token_id=STOP, output_logits=True, output_hidden_states=True,
                                   return_dict_in_generate=True, **extra)
            hidden = torch.cat([h[-1][0] for h in out.hidden_states])
            embeds = torch.cat([h[0][0] for h in out.hidden_states])
            self._refs[key] = dict(logits=logits, ids=out.sequences[0, len(prompt):].tolist(),
                                   step_logits=torch.cat(out.logits), hidden=hidden, embeds=embeds)
        return self._refs[key]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Pair("tiny", tmp_path_factory.mktemp("thinker_tiny"))


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    return Pair("7b-ratios", tmp_path_factory.mktemp("thinker_7b"))


def _prompts(seed=0, lengths=(37, 11)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 240, (n,), generator=g).tolist() for n in lengths]


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def _run(engine, prompts, params=None, **kw):
    params = params or SamplingParams(max_new_tokens=32, stop_token_ids=(STOP,))
    done = {}
    with torch.no_grad():
        for ev in engine.generate(prompts, params, **kw):
            if ev.finished:
                done[ev.seq.seq_id] = ev.seq
    return [done[k] for k in sorted(done)]


def _check_against_reference(pair, seqs, prompts, check_decode_logits=True):
    for seq, prompt in zip(seqs, prompts):
        ref = pair.reference(prompt)
        assert len(ref["ids"]) == 32
        assert seq.output_ids == ref["ids"]
        assert seq.prompt_logits.shape == ref["logits"].shape
        assert rel_err(seq.prompt_logits, ref["logits"]) < RTOL
        # every position, not just the largest entry: each row's error against that row's scale
        row_err = (seq.prompt_logits - ref["logits"]).abs().amax(1) / ref["logits"].abs().amax(1)
        assert row_err.max().item() < RTOL
        if check_decode_logits:
            assert rel_err(seq.output_logits, ref["step_logits"]) < RTOL


# ------------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny", "big"])
def test_parameter_names_are_the_official_layout(which, request):
    pair = request.getfixturevalue(which)
    ours = {f"thinker.{k}": tuple(v.shape) for k, v in pair.model.state_dict().items()}
    assert sorted(ours) == pair.saved_keys
    assert ours == layout.thinker_text_tensors(pair.config)


def test_from_state_dict_lists_bad_tensors(tiny):
    sd = {f"thinker.{k}": v for k, v in tiny.model.state_dict().items()}
    sd.pop("thinker.model.layers.1.mlp.up_proj.weight")
    sd["thinker.model.layers.0.self_attn.o_proj.bias"] = torch.zeros(64)
    sd["thinker.model.norm.weight"] = torch.ones(63)
    with pytest.raises(ValueError) as e:
        ThinkerLM.from_state_dict(tiny.config, sd)
    msg = str(e.value)
    assert "layers.1.mlp.up_proj.weight" in msg and "o_proj.bias" in msg and "model.norm.weight" in msg


# ------------------------------------------------------------------------------------------------
# parity with transformers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny", "big"])
def test_batch_prefill_logits_and_greedy_ids_match_transformers(which, request):
    pair = request.getfixturevalue(which)
    prompts = _prompts()
    seqs = _run(pair.engine(), prompts, return_logits=True)
    _check_against_reference(pair, seqs, prompts)
    assert all(s.finish_reason == "length" for s in seqs)


@pytest.mark.parametrize("chunk", [1, 7, 13])
def test_chunked_prefill_matches_one_shot(tiny, chunk):
    prompts = _prompts()
    seqs = _run(tiny.engine(prefill_chunk_size=chunk), prompts, return_logits=True)
    _check_against_reference(tiny, seqs, prompts)


def test_chunked_prefill_7b_ratios(big):
    prompts = _prompts()
    seqs = _run(big.engine(max_num_batched_tokens=13), prompts, return_logits=True)
    _check_against_reference(big, seqs, prompts)


def test_streamed_prompt_with_embeddings_matches_one_shot(tiny):
    """Streaming input: the prompt arrives in pieces (embeddings, as audio chunks would), each
    prefilled onto the cached prefix; positions continue from the cache by themselves."""
    prompt = _prompts(lengths=(30,))[0]
    embeds = tiny.model.embed(torch.tensor(prompt)).detach()
    engine = tiny.engine()
    params = SamplingParams(max_new_tokens=32, stop_token_ids=(STOP,))
    with torch.no_grad():
        seq = engine.add_request(prompt[:4], params, prompt_complete=False, return_logits=True)
        (r,) = engine.step()
        assert (r.seq, r.num_tokens, r.mode, r.event) == (seq, 4, "prefill", None)
        assert engine.step() == []  # waiting for input
        engine.extend_prompt(seq, prompt[4:17], inputs_embeds=embeds[4:17])
        (r,) = engine.step()
        assert (r.num_tokens, r.mode, r.event) == (13, "chunked_prefill", None)
        engine.extend_prompt(seq, prompt[17:], inputs_embeds=embeds[17:], prompt_complete=True)
        while not seq.finished:
            engine.step()
    ref = tiny.reference(prompt)
    assert seq.output_ids == ref["ids"]
    assert rel_err(seq.prompt_logits, ref["logits"]) < RTOL
    assert seq.rope_delta == 0


def test_custom_embeddings_match_transformers(tiny):
    """The multimodal merge hands the engine inputs_embeds with feature rows at placeholder ids."""
    prompt = _prompts(lengths=(20,))[0]
    prompt[5:9] = [IDS["audio_token_index"]] * 4
    embeds = tiny.model.embed(torch.tensor(prompt)).detach().clone()
    embeds[5:9] = torch.randn(4, embeds.shape[1])
    with torch.no_grad():
        ref = tiny.hf(input_ids=torch.tensor([prompt]), inputs_embeds=embeds[None],
                      attention_mask=torch.ones(1, len(prompt), dtype=torch.long)).logits[0]
        engine = tiny.engine()
        seq = engine.add_request(prompt, SamplingParams(max_new_tokens=1), inputs_embeds=embeds, return_logits=True,
                                 keep_hidden_states=True)
        engine.step()
    assert rel_err(seq.prompt_logits, ref) < RTOL
    assert torch.equal(seq.input_embeds, embeds)


def test_multimodal_positions_and_rope_delta_match_transformers(tiny):
    """An image layout (grid 1x4x8 -> 8 tokens) gives TMRoPE positions with delta -4: prefill and
    the decode positions (cache_len + delta) must follow transformers."""
    prompt = [5, 6, 7, IDS["vision_start_token_id"]] + [IDS["image_token_index"]] * 8 + \
             [IDS["vision_end_token_id"], 9, 10]
    grid = torch.tensor([[1, 4, 8]])
    ids = torch.tensor([prompt])
    positions, delta = rope_index(ids, image_grid_thw=grid, image_token_id=IDS["image_token_index"],
                                  video_token_id=IDS["video_token_index"], audio_token_id=IDS["audio_token_index"],
                                  vision_start_token_id=IDS["vision_start_token_id"],
                                  audio_start_token_id=IDS["audio_start_token_id"])
    assert int(delta) == -4
    ref = tiny.reference(prompt, image_grid_thw=grid)
    for explicit_delta in (True, False):  # the engine derives the delta from the positions itself
        engine = tiny.engine()
        with torch.no_grad():
            seq = engine.add_request(prompt, SamplingParams(max_new_tokens=32, stop_token_ids=(STOP,)),
                                     positions=positions[:, 0], rope_delta=delta if explicit_delta else None,
                                     return_logits=True)
            while not seq.finished:
                engine.step()
        assert seq.rope_delta == -4
        assert seq.output_ids == ref["ids"]
        assert rel_err(seq.prompt_logits, ref["logits"]) < RTOL
        assert rel_err(seq.output_logits, ref["step_logits"]) < RTOL


def test_hidden_states_and_embeddings_for_the_talker(tiny):
    prompt = _prompts(lengths=(19,))[0]
    ref = tiny.reference(prompt)
    (seq,) = _run(tiny.engine(), [prompt], keep_hidden_states=True)
    # one row per cached position: the prompt, then the 31 generated tokens that were fed back
    assert seq.hidden_states.shape == (19 + 31, tiny.config.hidden_size)
    assert rel_err(seq.hidden_states, ref["hidden"]) < RTOL
    assert torch.equal(seq.input_embeds, ref["embeds"])


def test_seeded_sampling_matches_transformers(tiny):
    """Same seed, same processors (repetition penalty, temperature, top-k, top-p) -> same tokens."""
    prompt = _prompts(lengths=(15,))[0]
    ids = torch.tensor([prompt])
    with torch.no_grad():
        torch.manual_seed(7)
        ref = tiny.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.8,
                               top_k=20, top_p=0.9, repetition_penalty=1.3, max_new_tokens=24, eos_token_id=STOP,
                               pad_token_id=STOP)[0, len(prompt):].tolist()
    params = SamplingParams(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.3, seed=7,
                            max_new_tokens=24, stop_token_ids=(STOP,))
    (alone,) = _run(tiny.engine(), [prompt], params)
    assert alone.output_ids == ref
    # a seeded request does not depend on its batch neighbours
    other = SamplingParams(do_sample=True, temperature=1.5, max_new_tokens=5)
    seqs = _run(tiny.engine(), [_prompts(3, (9,))[0], prompt], [other, params])
    assert seqs[1].output_ids == ref


def test_greedy_repetition_penalty_matches_transformers(tiny):
    prompt = _prompts(lengths=(15,))[0]
    ids = torch.tensor([prompt])
    with torch.no_grad():
        ref = tiny.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               repetition_penalty=1.5, max_new_tokens=20, eos_token_id=STOP,
                               pad_token_id=STOP)[0, len(prompt):].tolist()
    (seq,) = _run(tiny.engine(), [prompt], SamplingParams(repetition_penalty=1.5, max_new_tokens=20))
    assert seq.output_ids == ref


def test_stop_ids_end_generation_like_transformers(tiny):
    prompt = _prompts()[0]
    full = tiny.reference(prompt)["ids"]
    stop = full[9]
    first = full.index(stop)
    with torch.no_grad():
        ids = torch.tensor([prompt])
        ref = tiny.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=32, eos_token_id=stop, pad_token_id=stop)[0, len(prompt):].tolist()
    (seq,) = _run(tiny.engine(), [prompt], SamplingParams(max_new_tokens=32, stop_token_ids=(STOP, stop)))
    assert seq.output_ids == ref == full[:first + 1]
    assert seq.finish_reason == "stop"


# ------------------------------------------------------------------------------------------------
# the Triton kernels (interpreter) in the model
# ------------------------------------------------------------------------------------------------
def test_triton_path_matches_transformers(tiny, monkeypatch):
    def no_torch_path(*args, **kwargs):
        raise AssertionError("the torch path ran although the Triton backend was forced")

    for op in ("tmrope_attention", "paged_prefill_attention", "paged_decode_attention"):
        monkeypatch.setattr(importlib.import_module(f"omni_kernels.{op}"), "_torch_path", no_torch_path)
    prompts = _prompts(lengths=(13, 6))
    params = SamplingParams(max_new_tokens=4, stop_token_ids=(STOP,))
    with omni_kernels.use_backend("triton"):
        one_shot = _run(tiny.engine(), prompts, params, return_logits=True)
        chunked = _run(tiny.engine(prefill_chunk_size=5), prompts, params, return_logits=True)
    for seqs in (one_shot, chunked):
        for seq, prompt in zip(seqs, prompts):
            ref = tiny.reference(prompt)
            assert seq.output_ids == ref["ids"][:4]
            assert rel_err(seq.prompt_logits, ref["logits"]) < RTOL
            assert rel_err(seq.output_logits, ref["step_logits"][:4]) < RTOL


# ------------------------------------------------------------------------------------------------
# engine behaviour
# ------------------------------------------------------------------------------------------------
def test_streamed_events_and_detokenizer(tiny):
    class Decoder:
        def __init__(self):
            self.ids = []

        def push(self, ids):
            self.ids += list(ids)
            return f"<{ids[0]}>"

        def finish(self):
            return "|"

    prompts = _prompts()
    events = []
    with torch.no_grad():
        for ev in tiny.engine().generate(prompts, SamplingParams(max_new_tokens=5), detokenizer=Decoder):
            events.append(ev)
    seqs = {ev.seq.seq_id: ev.seq for ev in events}
    assert len(events) == 10 and sum(ev.finished for ev in events) == 2
    for seq in seqs.values():
        mine = [ev for ev in events if ev.seq is seq]
        assert [ev.token_id for ev in mine] == seq.output_ids
        assert seq.text == "".join(f"<{t}>" for t in seq.output_ids) + "|"
        assert mine[-1].finish_reason == "length" and seq.t_first_token <= seq.t_finished


def test_leaving_the_stream_early_aborts_and_frees(tiny):
    engine = tiny.engine()
    with torch.no_grad():
        for i, ev in enumerate(engine.generate(_prompts(), SamplingParams(max_new_tokens=20))):
            if i == 3:
                break
    assert ev.seq.finish_reason == "abort" and not engine.has_unfinished
    assert engine.block_manager.num_free_blocks == engine.kv_cache.num_blocks
    with pytest.raises(ValueError, match="complete prompts"):
        list(engine.generate({"prompt_ids": [1, 2, 3], "prompt_complete": False}))
    assert not engine.has_unfinished


def test_admission_waits_for_cache_room(tiny):
    """Three requests, blocks for two: the third waits, then runs with the same results."""
    prompts = _prompts(5, (20, 12, 17))
    params = SamplingParams(max_new_tokens=32, stop_token_ids=(STOP,))
    engine = tiny.engine(num_blocks=14, block_size=8)  # each needs ceil((len + 32) / 8) <= 7 blocks
    seqs = _run(engine, prompts, params)
    for seq, prompt in zip(seqs, prompts):
        assert seq.output_ids == tiny.reference(prompt)["ids"]
    assert engine.block_manager.num_free_blocks == 14


def test_prefix_caching_hit_gives_same_results(tiny):
    prefix = _prompts(9, (24,))[0]
    prompts = [prefix + [3, 4, 5], prefix + [7, 8]]
    engine = tiny.engine(enable_prefix_caching=True)
    first = _run(engine, [prompts[0]])[0]
    with torch.no_grad():
        seq = engine.add_request(prompts[1], SamplingParams(max_new_tokens=32, stop_token_ids=(STOP,)))
        (r,) = engine.step()
        assert (r.mode, r.num_tokens) == ("chunked_prefill", 2)  # 24 cached tokens (3 blocks) were reused
        while not seq.finished:
            engine.step()
    assert first.output_ids == tiny.reference(prompts[0])["ids"]
    assert seq.output_ids == tiny.reference(prompts[1])["ids"]


def test_step_state_buffers_are_persistent(tiny):
    engine = tiny.engine()
    state = engine.state
    ptrs = {k: getattr(state, f"_{k}").data_ptr() for k in ("positions", "slot_mapping", "block_tables", "seq_lens")}
    seq = engine.add_request(_prompts()[0], SamplingParams(max_new_tokens=3))
    with torch.no_grad():
        engine.step()
        assert state.mode == "prefill" and state.positions.shape == (3, 37) and state.positions.is_contiguous()
        engine.step()
    assert state.mode == "decode" and state.positions.shape == (3, 1) and state.seq_lens.tolist() == [38]
    assert state.positions.tolist() == [[37]] * 3
    for k, p in ptrs.items():
        assert getattr(state, k).data_ptr() == p
    assert isinstance(state, StepState) and not seq.finished


def test_errors(tiny):
    engine = tiny.engine(max_model_len=64)
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request(list(range(65)))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        tiny.engine(max_model_len=257)
    with pytest.raises(ValueError, match="cache has only"):
        tiny.engine(num_blocks=4).add_request(list(range(20)), SamplingParams(max_new_tokens=20))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add_request([1, 2, 300])
    with pytest.raises(ValueError, match="positions must have shape"):
        engine.add_request([1, 2, 3], positions=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="inputs_embeds"):
        engine.add_request([1, 2, 3], inputs_embeds=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="empty"):
        engine.add_request([])
    bad_cache = PagedKVCache(1, 2, 16, 8, torch.float32, "cpu", num_blocks=4)
    with pytest.raises(ValueError, match="does not match"):
        ThinkerEngine(tiny.model, bad_cache)


def test_streamed_prompt_past_the_cache_is_a_clear_error(tiny):
    engine = tiny.engine(num_blocks=6, block_size=8)
    with torch.no_grad():
        seq = engine.add_request(list(range(10)), SamplingParams(max_new_tokens=4), prompt_complete=False)
        engine.step()
        engine.extend_prompt(seq, list(range(30)))
        # the reservation (40 + 4 tokens) exceeds the cache: caught when the tokens are added
        with pytest.raises(ValueError, match="cache has only"):
            engine.extend_prompt(seq, list(range(10)))
        # another user of the same cache takes the remaining blocks: the step fails clearly
        engine.block_manager.allocate(10_000, list(range(8 * engine.block_manager.num_free_blocks)))
        with pytest.raises(KVCacheFullError, match="KV cache full"):
            engine.step()


def test_from_checkpoint_loads_the_official_layout(tiny_ckpt):
    from omni_runtime.io.checkpoint import open_checkpoint

    ckpt = open_checkpoint(tiny_ckpt)
    model = ThinkerLM.from_checkpoint(ckpt, dtype=torch.float32)
    engine = ThinkerEngine(model, num_blocks=16, max_model_len=128)
    ids = engine.generate_ids([1, 2, 3, 4, 5], SamplingParams(max_new_tokens=6))
    assert len(ids) == 6 and all(0 <= t < model.config.vocab_size for t in ids)
