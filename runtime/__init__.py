"""omni_runtime: loads Qwen2.5-Omni checkpoints and runs Thinker, Talker and the codec as a
streaming pipeline on top of `omni_kernels` (issue #4 onwards).

Entry points: `omni_runtime.thinker.thinker.Thinker` (audio + vision encoders + the LLM of one
checkpoint: prepare / generate / stream_audio) and the `omni-run` command (`omni_runtime.cli`).

The source folder is `runtime/`; it installs as `omni_runtime` so it cannot shadow other
packages called `runtime`.
"""
