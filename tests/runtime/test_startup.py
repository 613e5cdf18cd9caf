"""The CPU eager path never imports torch._dynamo (~1 s and ~140 MiB at start-up): building the
modules on the meta device and calling the ops must stay clear of it."""
import subprocess
import sys

CODE = """
import sys
from omni_runtime.thinker.thinker import Thinker
th = Thinker.from_checkpoint(sys.argv[1])
ids = [ev.token_id for ev in th.generate("hi", max_new_tokens=3)]
assert len(ids) >= 1
print("dynamo" if "torch._dynamo" in sys.modules else "clean")
"""


def test_load_and_generate_do_not_import_dynamo(tiny_ckpt):
    out = subprocess.run([sys.executable, "-c", CODE, str(tiny_ckpt)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"
