"""Shared test helpers (imported as `from helpers import ...`: pytest puts tests/ on sys.path)."""
import torch


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||a - e|| / ||e|| in fp64: the one error measure every kernel test states its bounds in."""
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()
