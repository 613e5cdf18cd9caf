"""The SiLU-gated MLP (SwiGLU) of the Qwen2 decoders."""
from torch import nn
from torch.nn import functional as F


def linear(x, layer: nn.Linear):
    """layer(x) without nn.Module's call machinery (~5 us a call on the CPU decode path, where a
    step is dozens of small matmuls)."""
    return F.linear(x, layer.weight, layer.bias)


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.up_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)

    def forward(self, x):
        return linear(F.silu(linear(x, self.gate_proj)) * linear(x, self.up_proj), self.down_proj)
