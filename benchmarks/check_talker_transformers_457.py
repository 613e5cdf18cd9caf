"""The Talker of transformers 4.57.3 (the code the published weights were released with) against
ours: the whole `generate` of a text turn -- greedy Thinker, greedy Talker -- on the same tiny
checkpoint gives the same text ids and the same codec codes.

Why: transformers 5.x's `generate` drops an all-ones attention mask, and its Talker forward builds
TMRoPE positions and adds the codec pad / bos rows only when it receives a mask, so batch-1 5.x
runs the Talker differently from the release; 4.57.3 passes the mask. We follow the release; this
check runs 4.57.3 itself, unpatched, in its own interpreter (`--worker` mode: torch and
transformers only). 4.57.3 always drops the Talker's last code (it assumes it is eos; 5.x cuts at
the first eos instead): with a length-capped Talker its codes are ours minus the last one.

    python -m benchmarks.check_talker_transformers_457 [--python .venv457/bin/python]

The 4.57.3 interpreter: `python3 -m venv .venv457 && .venv457/bin/pip install torch==2.13.0
transformers==4.57.3`. Prints one JSON line per preset; exit status 1 when anything differs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PYTHON = ROOT / ".venv457" / "bin" / "python"
PROMPT = "Hello world, are you a helpful assistant?"
TEXT_TOKENS, CODES = 10, 48


def worker(job_path: str) -> None:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    job = json.loads(Path(job_path).read_text())
    model = transformers.Qwen2_5OmniForConditionalGeneration.from_pretrained(
        job["path"], torch_dtype=torch.float32, attn_implementation="sdpa").eval()
    got = {}

    def capture(code, conditioning, reference_mel, **kwargs):
        got["codes"] = code[0].tolist()
        return torch.zeros(1)

    model.token2wav.forward = capture  # the codes only: the DiT is checked elsewhere
    ids = torch.tensor([job["ids"]])
    with torch.no_grad():
        seqs, _ = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), speaker=job["speaker"],
                                 thinker_max_new_tokens=TEXT_TOKENS, thinker_do_sample=False,
                                 thinker_eos_token_id=job["stops"], talker_do_sample=False,
                                 talker_max_new_tokens=CODES, talker_eos_token_id=job["codec_stops"])
    print(json.dumps({"version": transformers.__version__, "tokens": seqs[0, len(job["ids"]):].tolist(),
                      "codes": got["codes"]}))


def check(python: str, preset: str, work: Path) -> dict:
    from omni_runtime.engine.sampling import SamplingParams
    from omni_runtime.io.tiny_checkpoint import write_tiny_checkpoint
    from omni_runtime.omni import Omni

    path = write_tiny_checkpoint(work / preset, seed=0, preset=preset)
    engine = dict(max_model_len=512, num_blocks=96, block_size=16)
    omni = Omni.from_checkpoint(path, engine_kwargs=engine, talker_engine_kwargs=engine)
    stops, codec_stops = list(omni.thinker.stop_token_ids), list(omni.talker.stop_codes)
    speaker = omni.speakers[0]
    ours = omni.generate(PROMPT, speaker=speaker, params=SamplingParams(max_new_tokens=TEXT_TOKENS,
                                                                        stop_token_ids=tuple(stops)),
                         talker_params=omni.talker.sampling_params(greedy=True, max_new_tokens=CODES), stream=False)
    # every code the Talker emitted, as 4.57 sees them (ours drops the ones the DiT cannot take)
    job = {"path": str(path), "ids": omni.thinker.prepare(PROMPT).ids, "speaker": speaker, "stops": stops,
           "codec_stops": codec_stops}
    (work / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([python, str(Path(__file__).resolve()), "--worker", str(work / "job.json")],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise SystemExit(f"the 4.57.3 worker failed:\n{proc.stderr[-3000:]}")
    ref = json.loads(proc.stdout.strip().splitlines()[-1])
    seq_codes = ours.codes if not ours.dropped_codes else None
    full = len(ours.codes) + ours.dropped_codes == CODES  # length-capped: 4.57 dropped a real code
    expected = (seq_codes[:-1] if full else seq_codes) if seq_codes is not None else None
    return {"preset": preset, "transformers": ref["version"], "tokens_equal": ref["tokens"] == ours.token_ids,
            "codes_equal": None if expected is None else ref["codes"] == expected,
            "codes": len(ref["codes"]), "dropped_by_us": ours.dropped_codes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=str(DEFAULT_PYTHON), help="a python with transformers 4.57.3")
    p.add_argument("--worker", metavar="JOB_JSON", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if not Path(args.python).exists():
        print(f"no 4.57.3 interpreter at {args.python} (see the module docstring)", file=sys.stderr)
        return 2
    bad = False
    with tempfile.TemporaryDirectory(prefix="talker457_") as tmp:
        for preset in ("tiny",):
            work = Path(tmp) / preset
            work.mkdir()
            record = check(args.python, preset, work)
            print(json.dumps(record))
            bad |= not record["tokens_equal"] or record["codes_equal"] is False
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
