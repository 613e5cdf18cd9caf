"""Triton kernels. Each module has the kernel, its launcher and `AOT_CONFIGS`: every
configuration the launcher can pick, for the ahead-of-time compile gate."""
