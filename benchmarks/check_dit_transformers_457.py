"""The Token2Wav DiT of transformers 4.57.3 (the code the published weights were released with)
against the installed transformers (5.x) and against ours, on the same tiny checkpoint.

transformers' v5 RoPE refactor once broke this DiT's rotary silently (issue 47328, fixed in PR 47403):
the checkpoint rotates head 0 in interleaved pairs (x0, x1), (x2, x3), ... (4.57's
`rotate_half_codec`); 5.x rotates halves (x_i, x_{i + D/2}) and so deinterleaves q / k of head 0
first (`deinterleave_head_dim`). This check shows the three agree, and that it would notice the
bug: "5.x broken" is 5.x with `deinterleave_head_dim` replaced by the identity (rotate-half RoPE
on the interleaved layout, the behaviour of the bug).

Per preset (`write_tiny_checkpoint`, "tiny" and "7b-ratios", with the DiT's attention made to
matter: to_q / to_k weights x SHARPEN and to_out x LOUDER -- with the random 0.02-std weights,
attention is near-uniform and its gated output small, and the broken rotary moves the DiT's output
by only ~1e-4), fixed random valid codes, speaker
"Chelsie" (its cond and reference mel from spk_dict.pt) and fixed tensors:
- forward: one raw DiT evaluation with CFG (batch 2) at time step 0.37 on a fixed state x;
- mel:     `code2wav_dit_model.sample(cond, ref_mel, codes)` (10 steps, guidance 0.5, sway -1),
           its initial noise taken from a file: the worker replaces `torch.randn` during the call
           (4.57 draws (1, 30000, mel_dim) and slices, 5.x draws (1, frames, mel_dim)).
Each transformers runs in its own interpreter (`--worker` mode of this file: torch and
transformers only); ours (`omni_runtime.models.dit.DiT`, `Token2Wav.mel(..., noise=)`) runs here
when it exists. Differences are max |a - b| / max |b|.

    python -m benchmarks.check_dit_transformers_457 [--python .venv457/bin/python] [--codes 50]

The 4.57.3 interpreter: `python3 -m venv .venv457 && .venv457/bin/pip install torch==2.13.0
transformers==4.57.3`. Prints a table and, last, one JSON line; exit status 1 when 5.x or ours
differs from 4.57.3 by more than TOL or the broken rotary is not told apart.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PYTHON = ROOT / ".venv457" / "bin" / "python"
PRESETS = ("tiny", "7b-ratios")
SPEAKER = "Chelsie"
TIME_STEP = 0.37
TOL = 1e-5  # agreement of two correct implementations (fp32; observed <= 4e-7)
# The broken rotary is told apart when it differs by more than BROKEN_MIN and by BROKEN_FACTOR x
# what separates the two correct transformers (observed: 1e-2 - 6e-2 against ~2e-7).
BROKEN_MIN, BROKEN_FACTOR = 1e-3, 1000
SHARPEN = 8.0  # to_q and to_k weights x 8: attention logits of std ~3 instead of ~0.05
LOUDER = 8.0  # to_out weights x 8: the attention branch as large as the residual stream


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# -- worker: runs inside a transformers interpreter (4.57.3 or 5.x), no omni_runtime ---------------

def worker(jobs_path: str, broken: bool) -> None:
    """jobs: a JSON list of {checkpoint, inputs, out}. With `broken`, each job's outputs are also
    computed with `deinterleave_head_dim` replaced by the identity (keys "forward_broken", "mel_broken")."""
    torch.set_num_threads(1)
    import transformers
    from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni as modeling

    transformers.logging.set_verbosity_error()
    if broken and not hasattr(modeling, "deinterleave_head_dim"):
        raise SystemExit(f"transformers {transformers.__version__} has no deinterleave_head_dim to disable")
    for job in json.loads(Path(jobs_path).read_text()):
        cls = transformers.Qwen2_5OmniForConditionalGeneration
        try:
            model = cls.from_pretrained(job["checkpoint"], dtype=torch.float32)
        except TypeError:  # releases before the `dtype` keyword
            model = cls.from_pretrained(job["checkpoint"], torch_dtype=torch.float32)
        dit = model.token2wav.code2wav_dit_model.eval()
        inp = torch.load(job["inputs"], weights_only=True)
        out = {"transformers": transformers.__version__, "torch": str(torch.__version__)}
        out.update(evaluate(dit, inp))
        if broken:
            deinterleave = modeling.deinterleave_head_dim
            modeling.deinterleave_head_dim = lambda x: x
            try:
                out.update({f"{k}_broken": v for k, v in evaluate(dit, inp).items() if k != "noise_draw"})
            finally:
                modeling.deinterleave_head_dim = deinterleave
        torch.save(out, job["out"])


@contextlib.contextmanager
def randn_returns(noise: torch.Tensor):
    """While active, `torch.randn` of a (B, >= frames, mel_dim) shape -- the initial state that
    transformers' DiT `sample` draws (4.57: (1, 30000, mel_dim), then sliced; 5.x: (B, frames,
    mel_dim)) -- returns `noise` (1, frames, mel_dim) in its first frames (zeros after). Yields the
    list of the shapes so drawn."""
    frames, mel_dim = noise.shape[1], noise.shape[2]
    real_randn, drawn = torch.randn, []

    def randn(*size, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (list, tuple)) else tuple(size)
        if len(shape) != 3 or shape[2] != mel_dim or shape[1] < frames:
            return real_randn(*size, **kwargs)
        drawn.append(shape)
        out = torch.zeros(shape, dtype=kwargs.get("dtype") or torch.float32)
        out[:, :frames] = noise
        return out.to(kwargs.get("device") or "cpu")

    torch.randn = randn
    try:
        yield drawn
    finally:
        torch.randn = real_randn


def evaluate(dit, inp: dict) -> dict:
    """{"forward", "mel", "noise_draw"} of one transformers DiT on the check's inputs."""
    codes, cond, ref_mel, noise = inp["codes"], inp["cond"], inp["ref_mel"], inp["noise"]
    frames = noise.shape[1]
    with torch.no_grad():
        forward = dit(hidden_states=inp["x"], condition_vector=ref_mel,
                      speaker_embedding=cond.unsqueeze(1).repeat(1, frames, 1), quantized_code=codes,
                      time_step=torch.tensor(TIME_STEP), apply_cfg=True)
        with randn_returns(noise) as drawn:
            mel = dit.sample(cond, ref_mel, codes, num_steps=10, guidance_scale=0.5, sway_coefficient=-1.0)
    if len(drawn) != 1:
        raise SystemExit(f"expected sample() to draw its noise once, saw {drawn}")
    return {"forward": forward, "mel": mel, "noise_draw": list(drawn[0])}


def run_worker(python: str, jobs: list[dict], work: Path, broken: bool = False) -> list[dict]:
    """Run the jobs in `python` (one process: transformers is imported once); their outputs."""
    jobs_path = work / f"jobs-{len(list(work.glob('jobs-*')))}.json"
    jobs_path.write_text(json.dumps(jobs))
    cmd = [python, str(Path(__file__).resolve()), "--worker", str(jobs_path)] + (["--broken"] if broken else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{python} worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return [torch.load(job["out"], weights_only=True) for job in jobs]


# -- ours ----------------------------------------------------------------------------------------

def ours(checkpoint: Path, inp: dict) -> dict:
    """{"forward", "mel"} from omni_runtime, or {"error": why} per output."""
    out: dict = {}
    try:
        try:
            from omni_runtime.token2wav import Token2Wav
        except ImportError:
            from omni_runtime.token2wav.token2wav import Token2Wav
        t2w = Token2Wav.from_checkpoint(checkpoint)
    except Exception as exc:  # noqa: BLE001 -- another helper is writing it: report, don't fail
        return {"error": f"{type(exc).__name__}: {exc}"}
    codes, cond = inp["codes"][0], inp["cond"]
    with torch.inference_mode():
        try:  # one raw evaluation through the DiT's own steps (see omni_runtime/models/dit.py)
            dit = t2w.dit
            speaker_vec = dit.speaker_vectors(inp["ref_mel"])
            condition = dit.condition(codes, speaker_vec, torch.cat([cond, torch.zeros_like(cond)]))
            out["forward"] = dit(inp["x"], condition, dit.modulation(torch.tensor([TIME_STEP])), 0)
        except Exception as exc:  # noqa: BLE001
            out["forward_error"] = f"{type(exc).__name__}: {exc}"
        try:
            out["mel"] = t2w.mel(codes.tolist(), SPEAKER, noise=inp["noise"])
        except Exception as exc:  # noqa: BLE001
            out["mel_error"] = f"{type(exc).__name__}: {exc}"
    return out


# -- the check -----------------------------------------------------------------------------------

def make_inputs(checkpoint: Path, n_codes: int, seed: int) -> dict:
    from omni_runtime.io.checkpoint import open_checkpoint

    ckpt = open_checkpoint(checkpoint)
    dit = ckpt.config.token2wav_config.dit_config
    speaker = ckpt.speaker(SPEAKER)
    g = torch.Generator().manual_seed(seed)
    frames = n_codes * dit.repeats
    return {"codes": torch.randint(0, dit.num_embeds + 1, (1, n_codes), generator=g),
            "cond": speaker.cond.float(), "ref_mel": speaker.ref_mel.float(),
            "noise": torch.randn(1, frames, dit.mel_dim, generator=g),
            "x": torch.randn(1, frames, dit.mel_dim, generator=g)}


def amplify_attention(checkpoint: Path) -> None:
    """Scale the DiT's to_q / to_k (SHARPEN) and to_out (LOUDER) weights in the shards, in place."""
    from safetensors.torch import load_file, save_file

    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())["weight_map"]
    factors = {".attn.to_q.weight": SHARPEN, ".attn.to_k.weight": SHARPEN, ".attn.to_out.0.weight": LOUDER}
    targets = {n: f for n in index if n.startswith("token2wav.code2wav_dit_model.")
               for end, f in factors.items() if n.endswith(end)}
    for shard in sorted({index[n] for n in targets}):
        tensors = load_file(checkpoint / shard)
        for name, factor in targets.items():
            if name in tensors:
                tensors[name] = tensors[name] * factor
        save_file(tensors, checkpoint / shard, metadata={"format": "pt"})


def prepare(preset: str, work: Path, n_codes: int, seed: int) -> tuple[Path, dict, Path]:
    from omni_runtime.io.tiny_checkpoint import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(work / preset, seed=seed, preset=preset)
    amplify_attention(checkpoint)
    inp = make_inputs(checkpoint, n_codes, seed)
    torch.save(inp, work / f"{preset}-inputs.pt")
    return checkpoint, inp, work / f"{preset}-inputs.pt"


def run_check(old_python: str, presets=PRESETS, n_codes: int = 50, seed: int = 0) -> list[dict]:
    """One record per preset: versions and the differences (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="check_dit_457_") as tmp:
        work = Path(tmp)
        prepared = {p: prepare(p, work, n_codes, seed) for p in presets}
        jobs = lambda side: [{"checkpoint": str(c), "inputs": str(i), "out": str(work / f"{p}-{side}.pt")}  # noqa: E731
                             for p, (c, _, i) in prepared.items()]
        olds = run_worker(old_python, jobs("old"), work)
        news = run_worker(sys.executable, jobs("new"), work, broken=True)
        records = []
        for (preset, (checkpoint, inp, _)), old, new in zip(prepared.items(), olds, news):
            if not old["transformers"].startswith("4."):
                raise RuntimeError(f"{old_python} has transformers {old['transformers']}, not a 4.x release")
            mine = ours(checkpoint, inp)
            rec = {"preset": preset, "codes": n_codes, "frames": inp["noise"].shape[1],
                   "attention_scales": {"q_k": SHARPEN, "out": LOUDER}, "old": old["transformers"],
                   "new": new["transformers"], "noise_draw_old": old["noise_draw"],
                   "noise_draw_new": new["noise_draw"], "diff": {}}
            for what in ("forward", "mel"):
                d = {"new_vs_old": rel(new[what], old[what]), "broken_vs_old": rel(new[f"{what}_broken"], old[what])}
                if what in mine:
                    d["ours_vs_old"] = rel(mine[what].reshape(old[what].shape), old[what])
                    d["ours_vs_new"] = rel(mine[what].reshape(new[what].shape), new[what])
                else:
                    d["ours_error"] = mine.get(f"{what}_error") or mine.get("error")
                rec["diff"][what] = d
            records.append(rec)
    return records


def verdict(records: list[dict]) -> list[str]:
    """What is wrong, if anything."""
    problems = []
    for rec in records:
        for what, d in rec["diff"].items():
            where = f"{rec['preset']} {what}"
            if not d["new_vs_old"] < TOL:
                problems.append(f"{where}: transformers {rec['new']} differs from {rec['old']} by {d['new_vs_old']:.2e}")
            if not d["broken_vs_old"] > max(BROKEN_MIN, BROKEN_FACTOR * d["new_vs_old"]):
                problems.append(f"{where}: the broken rotary differs by only {d['broken_vs_old']:.2e}")
            if "ours_vs_old" in d and not d["ours_vs_old"] < TOL:
                problems.append(f"{where}: ours differs from {rec['old']} by {d['ours_vs_old']:.2e}")
    return problems


def fmt(x) -> str:
    return "-" if x is None else f"{x:.2e}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=None,
                   help=f"a transformers 4.57.3 interpreter (default {DEFAULT_PYTHON.relative_to(ROOT)} if it exists)")
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated tiny checkpoint presets")
    p.add_argument("--codes", type=int, default=50, help="codec codes (2 mel frames each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", metavar="JOBS_JSON", help=argparse.SUPPRESS)
    p.add_argument("--broken", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, broken=args.broken)
        return 0
    python = args.python or (str(DEFAULT_PYTHON) if DEFAULT_PYTHON.exists() else None)
    if python is None or not Path(python).exists():
        p.error(f"no transformers 4.57.3 interpreter (--python, default {DEFAULT_PYTHON}): create it with "
                f"`python3 -m venv .venv457 && .venv457/bin/pip install torch==2.13.0 transformers==4.57.3`")
    presets = [s for s in args.presets.split(",") if s]
    torch.set_num_threads(1)
    records = run_check(python, presets, args.codes, args.seed)
    print(f"DiT: transformers {records[0]['old']} (old) vs {records[0]['new']} (new) vs ours; "
          f"max |a - b| / max |b|, {args.codes} codes, speaker {SPEAKER}")
    print("preset    | output  | new vs old | ours vs old | ours vs new | new broken vs old")
    print("----------+---------+------------+-------------+-------------+------------------")
    for rec in records:
        for what, d in rec["diff"].items():
            print(f"{rec['preset']:<9} | {what:<7} | {fmt(d['new_vs_old']):>10} | {fmt(d.get('ours_vs_old')):>11} | "
                  f"{fmt(d.get('ours_vs_new')):>11} | {fmt(d['broken_vs_old']):>17}"
                  + (f"   (ours: {d['ours_error']})" if d.get("ours_error") else ""))
    problems = verdict(records)
    for line in problems:
        print("PROBLEM:", line)
    print(json.dumps({"check": "dit_transformers_457", "ok": not problems, "tol": TOL, "broken_min": BROKEN_MIN,
                      "broken_factor": BROKEN_FACTOR,
                      "records": records, "problems": problems}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
