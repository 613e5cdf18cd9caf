"""Benchmarks for the omni_kernels attention family (one file per kernel, see README.md)."""
