"""omni_runtime: loads Qwen2.5-Omni checkpoints and runs Thinker, Talker and the codec as a
streaming pipeline on top of `omni_kernels` (issue #4 onwards).

The source folder is `runtime/`; it installs as `omni_runtime` so it cannot shadow other
packages called `runtime`.
"""
