"""Triton kernels. Each module has the kernel, its launcher and `AOT_CONFIGS` / `aot_spec`: the
model's real calls of that launcher, which the ahead-of-time compile gate (`omni_kernels.aot`)
replays on CPU tensors to compile exactly what the JIT would launch."""
