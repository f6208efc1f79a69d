"""AdamW with weight decay on matrices only (the global-batch LR scaling rule is in minigpt/plan.py)."""

from __future__ import annotations

import torch

from minigpt.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device,
                    peak_lr: float | None = None) -> torch.optim.AdamW:
    """AdamW over two groups: matrices and embeddings decay, biases and norm gains do not.

    Decaying a LayerNorm gain pulls it towards 0 rather than towards its neutral value 1, and
    a bias has no scale to regularise, hence the split (as in GPT-2 and nanoGPT).
    peak_lr: the LR the schedule multiplies (default optim.lr); the independent weight decay
    is expressed against it (decay_coefficient).
    """
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": decay_coefficient(cfg, peak_lr if peak_lr is not None else cfg.lr),
         "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    fused = cfg.fused == "on" or (cfg.fused == "auto" and device.type == "cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)


def decay_coefficient(cfg: OptimConfig, peak_lr: float) -> float:
    """The weight_decay to give torch's AdamW, which multiplies the weights by 1 - lr_t * wd each step.

    coupled: wd = optim.weight_decay, so the decay per step scales with the LR.
    independent: wd = optim.weight_decay / peak_lr, so lr_t * wd = s_t * optim.weight_decay with
    s_t = lr_t / peak_lr the schedule's multiplier: the decay follows the schedule's shape but
    not the peak LR (Loshchilov & Hutter 2019, as Wortsman et al. 2023 use it).
    """
    if cfg.weight_decay_mode == "independent":
        return cfg.weight_decay / peak_lr
    return cfg.weight_decay

