"""AdamW with weight decay on matrices only (the global-batch LR scaling rule is in minigpt/plan.py)."""

from __future__ import annotations

import torch

from minigpt.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over two groups: matrices and embeddings decay, biases and norm gains do not.

    Decaying a LayerNorm gain pulls it towards 0 rather than towards its neutral value 1, and
    a bias has no scale to regularise, hence the split (as in GPT-2 and nanoGPT).
    """
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    fused = cfg.fused == "on" or (cfg.fused == "auto" and device.type == "cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)
