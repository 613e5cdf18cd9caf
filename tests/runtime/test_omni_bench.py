"""`omni-bench` (omni_runtime.bench): a --quick smoke run on the embedded tiny checkpoint at
concurrency 1 and 2 with the transformers peer, its report, JSON and PNG; a random checkpoint
written by `bench.shapes` (the 7B's codec vocabulary over its smaller DiT table) run with
--checkpoint and Poisson arrivals; the real 7B / 3B dimensions; bad arguments exiting 2 with
`omni-bench: error:`; --help without torch. No speed is asserted: the figures are checked for
presence and consistency only."""
import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from omni_runtime import bench
from omni_runtime.bench import load, metrics, parser, shapes
from omni_runtime.io.tiny_checkpoint import tiny_config

SCENARIOS = ("text", "audio", "video")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("omni_bench_cache")


def _main(args, cache):
    """(exit status, stdout, stderr) of bench.main(args) with the cache at `cache`, one torch thread."""
    out, err = io.StringIO(), io.StringIO()
    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv("OMNI_RUNTIME_CACHE", str(cache))
        try:
            rc = bench.main([str(a) for a in args])
        except SystemExit as e:  # argparse's own usage errors
            rc = e.code
        finally:
            torch.set_num_threads(before)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def quick(cache, tmp_path_factory):
    pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("omni_bench_out")
    rc, out, err = _main(["--quick", "--concurrency", "1,2", "--threads", "1", "--json", d / "b.json",
                          "--png", d / "b.png"], cache)
    assert rc == 0, err
    return out, json.loads((d / "b.json").read_text()), d / "b.png"


def test_quick_report_has_every_level_the_peer_and_the_targets(quick):
    out, _, _ = quick
    assert "first audio ms p50/p90/p99" in out and "packet gap ms max/p90" in out and "peak MiB" in out
    for s in SCENARIOS:
        assert f"| {s.ljust(8)} | 1 " in out and f"| {s.ljust(8)} | 2 " in out
        assert f"| {s.ljust(8)} | ratio" in out and f"| {s.ljust(8)} | transformers" in out
    assert "x faster" in out and "x sooner" in out
    lines = [ln for ln in out.splitlines() if ln.strip().startswith(("MET", "NOT MET", "not measured"))]
    assert len(lines) == 4 * len(SCENARIOS)  # CPU: end to end, first audio, Thinker and Talker decode
    assert not any(ln.strip().startswith("not measured") for ln in lines)  # the peer ran: every ratio exists


def test_quick_json_has_every_figure_and_timeline(quick):
    _, r, _ = quick
    assert r["tool"] == "omni-bench" and r["device"]["type"] in ("cpu", "cuda")
    assert r["versions"]["torch"] == torch.__version__ and r["versions"]["transformers"]
    cfg = r["config"]
    assert (cfg["text_tokens"], cfg["codes"], cfg["concurrency"], cfg["arrival"]) == (6, 36, [1, 2], "burst")
    assert [s["name"] for s in cfg["scenarios"]] == list(SCENARIOS)
    assert [(lv["scenario"], lv["concurrency"]) for lv in r["levels"]] == [(s, c) for s in SCENARIOS for c in (1, 2)]
    for lv in r["levels"]:
        f = lv["figures"]
        assert tuple(f) == metrics.FIGURES
        assert f["requests"] == len(lv["timelines"]) == lv["concurrency"]
        for key in ("first_text_ms", "first_audio_ms"):
            assert set(f[key]) == {"p50", "p90", "p99"}
            assert 0 < f[key]["p50"] <= f[key]["p90"] <= f[key]["p99"]
        assert f["first_text_ms"]["p50"] < f["first_audio_ms"]["p50"] < f["end_ms"]["p50"]
        assert f["gap_ms"]["max"] > 0 and f["gap_vs_audio_max"] > 0 and f["rtf"]["p50"] > 0
        assert 0 <= f["realtime_streams"] <= f["requests"]
        for key in ("thinker_tokens_per_s", "talker_codes_per_s"):
            assert f[key]["per_stream_p50"] > 0 and f[key]["total"] > 0
        assert f["dit_ms_per_chunk"]["mean"] > 0 and f["vocoder_ms_per_chunk"]["first"] > 0
        assert 1 <= f["codec_batch"]["mean"] <= lv["concurrency"]
        assert f["peak_memory_mib"] > 0 and f["audio_seconds"] == pytest.approx(lv["concurrency"] * 36 * 0.02)
        for tl in lv["timelines"]:
            # fixed lengths: every turn writes 6 tokens and speaks 36 codes, packets tile its audio
            assert len(tl["text_t"]) == tl["text_tokens"] == 6 and len(tl["code_t"]) == tl["codes"] == 36
            assert tl["arrival_s"] == 0 and 0 <= tl["start_s"] <= tl["prepared_s"] < tl["text_t"][0] < tl["end_s"]
            assert tl["text_t"] == sorted(tl["text_t"]) and tl["code_t"] == sorted(tl["code_t"])
            starts = [p["start_sample"] for p in tl["packets"]]
            assert starts == [sum(p["samples"] for p in tl["packets"][:i]) for i in range(len(starts))]
            assert sum(p["samples"] for p in tl["packets"]) == 36 * 480 and len(tl["packets"]) >= 2
    peer = r["peer"]
    assert peer["name"] == "transformers" and [x["scenario"] for x in peer["results"]] == list(SCENARIOS)
    for x in peer["results"]:
        assert tuple(x["figures"]) == metrics.FIGURES
        (tl,) = x["timelines"]
        assert len(tl["text_t"]) == 6 and len(tl["code_t"]) == 36 and tl["audio_seconds"] == pytest.approx(0.72)
        assert tl["packets"][0]["t"] == tl["end_s"]  # its first audio is when generate returns
    assert [c["scenario"] for c in r["comparison"]] == list(SCENARIOS)
    for c in r["comparison"]:
        assert set(c["ratios"]) == {"end_to_end", "first_audio", "first_text", "thinker_decode", "talker_decode"}
        assert all(v is not None and v > 0 for v in c["ratios"].values())
    assert len(r["targets"]) == 12 and all(t["met"] in (True, False) for t in r["targets"])


def test_quick_png_is_a_readable_timeline(quick):
    from PIL import Image

    _, r, png = quick
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= 800 and im.size[1] >= 300
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 10  # drawn, not blank
    assert r["png"] == {"path": str(png), "scenario": "text", "concurrency": 2, "request": 0}


def test_random_checkpoint_poisson_arrivals_banned_codes(cache, tmp_path):
    """shapes.write_random_checkpoint of the 7b-ratios config (a codec vocabulary of 8448 over a DiT
    table of 8193 rows, as the 7B) loads and runs through --checkpoint: three requests on two streams
    arriving as a seeded Poisson process, queueing for a free stream; every turn, ours and
    transformers', speaks all its codes (those beyond the table are never sampled)."""
    pytest.importorskip("transformers")
    ckpt = shapes.write_random_checkpoint(tmp_path / "ckpt", tiny_config("7b-ratios"), seed=1, dtype=torch.float32,
                                          shard_bytes=2 * 10**7)
    assert shapes.is_complete(ckpt) and len(list(ckpt.glob("model-*.safetensors"))) > 1
    out_json = tmp_path / "p.json"
    rc, out, err = _main(["--checkpoint", ckpt, "--scenarios", "text", "--concurrency", "2", "--requests", "3",
                          "--arrival", "poisson:20", "--quick", "--quiet", "--threads", "1", "--json", out_json], cache)
    assert rc == 0, err
    assert err == "" and "no ratios" in out and "not measured" in out  # ratios need concurrency 1
    r = json.loads(out_json.read_text())
    assert r["comparison"] == [] and r["config"]["arrival"] == "poisson:20"
    (lv,) = r["levels"]
    offsets = [tl["arrival_s"] for tl in lv["timelines"]]
    assert offsets == pytest.approx(load.arrival_offsets(3, parser.Arrival("poisson", 20.0), 0), abs=1e-6)
    assert offsets[0] == 0 < offsets[1] < offsets[2]
    assert [(tl["codes"], tl["dropped_codes"]) for tl in lv["timelines"]] == [(36, 0)] * 3
    (peer,) = r["peer"]["results"]
    assert peer["timelines"][0]["codes"] == 36 and peer["timelines"][0]["audio_seconds"] == pytest.approx(0.72)


def test_peer_default_and_no_peer():
    for argv, want in (([], "transformers" if parser.transformers_available() else None), (["--no-peer"], None)):
        args = parser.build_parser().parse_args(argv)
        parser.check_args(args)
        assert args.peer == want
        assert (args.text_tokens, args.codes, args.concurrency) == (32, 100, [1, 4, 8])


def test_arrivals_and_stalls():
    a = load.arrival_offsets(5, parser.Arrival("poisson", 4.0), seed=3)
    assert a == load.arrival_offsets(5, parser.Arrival("poisson", 4.0), seed=3) and a == sorted(a) and a[0] == 0
    assert load.arrival_offsets(4, parser.Arrival("burst"), seed=3) == [0.0] * 4
    # packets of 0.5 s at 1.0, 1.4, 2.3 s: the third comes 0.3 s after the audio ran out
    pk = lambda t: {"t": t, "samples": 12000}  # noqa: E731
    tl = {"packets": [pk(1.0), pk(1.4), pk(2.3)], "audio_seconds": 1.5, "end_s": 2.3, "prepared_s": 0.0,
          "text_t": [0.1, 0.2, 0.3], "code_t": []}
    f = metrics.request_figures(tl)
    assert f["stall_s"] == pytest.approx(0.3) and f["gaps_s"] == pytest.approx([0.4, 0.9])
    assert f["gap_vs_audio"] == pytest.approx([0.8, 1.8]) and f["rtf"] == pytest.approx(2.3 / 1.5)
    assert f["thinker_tokens_per_s"] == pytest.approx(10.0) and f["talker_codes_per_s"] is None
    assert metrics.percentile([3, 1, 2], 50) == 2 and metrics.percentile([], 50) is None


def test_real_shapes_have_the_published_sizes():
    seven, three = shapes.real_config("7b"), shapes.real_config("3b")
    assert (seven.text.hidden_size, seven.text.num_hidden_layers, seven.text.vocab_size) == (3584, 28, 152064)
    assert (three.text.hidden_size, three.text.num_hidden_layers, three.text.vocab_size) == (2048, 36, 151936)
    assert seven.talker.embedding_size == 3584 and three.talker.embedding_size == 2048
    assert seven.thinker_config.audio_config.output_dim == 3584 and seven.dit.num_hidden_layers == 22
    assert shapes.num_parameters(seven) == pytest.approx(10.7e9, rel=0.01)
    assert shapes.num_parameters(three) == pytest.approx(5.5e9, rel=0.02)


@pytest.mark.parametrize("args, message", [
    (["--concurrency", "0"], "argument --concurrency"),
    (["--concurrency", "1,x"], "argument --concurrency"),
    (["--arrival", "poisson"], "argument --arrival"),
    (["--arrival", "poisson:-2"], "argument --arrival"),
    (["--scenarios", "image"], "argument --scenarios"),
    (["--shapes", "13b"], "argument --shapes"),
    (["--codes", "0"], "argument --codes"),
    (["--peer", "transformers", "--no-peer"], "not allowed with"),
    (["--shapes", "7b", "--checkpoint", "."], "not allowed with"),
    (["--media-seconds", "0.2"], "--media-seconds must be >= 0.5"),
    (["--json", "out.txt"], "must end in .json"),
    (["--png", "/no/such/dir/t.png"], "does not exist"),
    (["--checkpoint", "/no/such/ckpt"], "checkpoint directory not found"),
], ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_bad_arguments_exit_2(cache, args, message):
    rc, out, err = _main(args, cache)
    assert rc == 2 and "omni-bench: error:" in err and message in err and out == ""


def test_bad_input_found_after_loading_exits_2(cache, monkeypatch):
    rc, _, err = _main(["--quick", "--no-peer", "--speaker", "Nobody", "--quiet", "--threads", "1"], cache)
    assert rc == 2 and "omni-bench: error: unknown --speaker 'Nobody'" in err and "Chelsie" in err
    monkeypatch.setattr(parser, "transformers_available", lambda: False)
    rc, _, err = _main(["--peer", "transformers"], cache)
    assert rc == 2 and "omni-bench: error: --peer transformers: transformers is not installed" in err


_PROBE = """
import sys
from omni_runtime.bench import main
try:
    rc = main(sys.argv[2:])
except SystemExit as e:
    rc = e.code
import json
open(sys.argv[1], "w").write(json.dumps({"rc": rc, "torch": "torch" in sys.modules, "numpy": "numpy" in sys.modules}))
"""


@pytest.mark.parametrize("args", [["--help"], ["--concurrency", "0"], ["--json", "x.txt"]], ids=" ".join)
def test_help_and_argument_errors_do_not_import_torch(tmp_path, cache, args):
    out = tmp_path / "probe.json"
    p = subprocess.run([sys.executable, "-c", _PROBE, str(out), *args], capture_output=True, text=True,
                       env=dict(os.environ, OMNI_RUNTIME_CACHE=str(cache)), timeout=60)
    probe = json.loads(out.read_text())
    assert probe == {"rc": 0 if args == ["--help"] else 2, "torch": False, "numpy": False}, p.stderr
    if args == ["--help"]:
        assert "--concurrency" in p.stdout and "--peer" in p.stdout and "--shapes" in p.stdout
