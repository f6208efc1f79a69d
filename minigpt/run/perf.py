"""Throughput accounting: model FLOPs per token and the device's dense peak, for MFU."""

from __future__ import annotations

import re

import torch

# Dense (no sparsity) bf16/fp16 tensor-core peaks in FLOP/s, from the vendors' datasheets.
# Matched against torch.cuda.get_device_name(), first match wins; a key must not be glued to
# more letters or digits on its left or digits on its right ("L4" is not "L40", "H200" is not
# "GH200"). An unknown device gets None, never a guess; None entries say "known, no figure".
PEAK_FLOPS = [
    ("H100 SXM", 989e12), ("H100 80GB HBM3", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12),
    ("H200 NVL", None), ("H200", 989e12), ("GH200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("RTX 4090", 165e12),
    ("V100", 125e12), ("T4", 65e12),
]


def flops_per_token(n_params: int, n_layer: int, n_embd: int, block_size: int) -> float:
    """Training FLOPs per token: 6N for the weights (forward 2N, backward 4N) plus the attention
    scores and their weighted sum, 12 * n_layer * n_embd * T (PaLM appendix B; nanoGPT).
    N excludes the position embedding."""
    return 6 * n_params + 12 * n_layer * n_embd * block_size


def peak_flops_for_name(name: str) -> float | None:
    for key, flops in PEAK_FLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![0-9])", name):
            return flops
    return None


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, or None (CPU, unknown GPU): MFU is then not reported."""
    if device.type != "cuda":
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))
