"""AdamW with weight decay on matrices only (the global-batch LR scaling rule is in minigpt/plan.py)."""

from __future__ import annotations

import torch

from minigpt.config import OptimConfig
from minigpt.errors import UserError


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device,
                    peak_lr: float | None = None, adam: tuple[float, float, float] | None = None) -> torch.optim.AdamW:
    """AdamW over two groups: matrices and embeddings decay, biases and norm gains do not.

    Decaying a LayerNorm gain pulls it towards 0 rather than towards its neutral value 1, and
    a bias has no scale to regularise, hence the split (as in GPT-2 and nanoGPT).
    With optim.lr_multipliers set, the decaying group is split into "embedding" (wte, wpe, and
    lm_head when it is not tied) and "matrices", and the other is "norms_biases"; each group
    carries its "lr_mult", which the trainer applies on top of the schedule's LR.
    peak_lr: the LR the schedule multiplies (default optim.lr); the independent weight decay
    is expressed against it (decay_coefficient). adam: (beta1, beta2, eps), default the config's
    (the run plan passes them after the batch-size scaling rule).
    """
    peak = peak_lr if peak_lr is not None else cfg.lr
    beta1, beta2, eps = adam if adam is not None else (cfg.beta1, cfg.beta2, cfg.eps)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # tied weights appear once
    m = cfg.lr_multipliers
    if not m.non_default():
        groups = [
            {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": decay_coefficient(cfg, peak),
             "name": "decay", "lr_mult": 1.0},
            {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0, "name": "no_decay", "lr_mult": 1.0},
        ]
    else:
        def kind(name: str, p) -> str:
            if p.dim() < 2:
                return "norms_biases"
            if name.startswith(("transformer.wte.", "transformer.wpe.")):
                return "embedding"
            return "head" if name.startswith("lm_head.") else "matrices"

        groups = []
        for name in ("embedding", "head", "matrices", "norms_biases"):
            params = [p for n, p in named if kind(n, p) == name]
            if not params:
                continue  # the head, when it is the token embedding
            mult = getattr(m, name)
            decays = name != "norms_biases" and mult > 0
            groups.append({"params": params, "name": name, "lr_mult": mult,
                           "weight_decay": decay_coefficient(cfg, peak * mult) if decays else 0.0})
    fused = cfg.fused == "on" or (cfg.fused == "auto" and device.type == "cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(beta1, beta2), eps=eps, fused=fused)


def decay_coefficient(cfg: OptimConfig, peak_lr: float) -> float:
    """The weight_decay to give torch's AdamW, which multiplies the weights by 1 - lr_t * wd each step.

    coupled: wd = optim.weight_decay, so the decay per step scales with the LR.
    independent: wd = optim.weight_decay / peak_lr, so lr_t * wd = s_t * optim.weight_decay with
    s_t = lr_t / peak_lr the schedule's multiplier: the decay follows the schedule's shape but
    not the peak LR (Loshchilov & Hutter 2019, as Wortsman et al. 2023 use it). For a group with an
    LR multiplier, peak_lr is the group's own peak (the run's peak x the multiplier).
    """
    if cfg.weight_decay_mode == "independent":
        return cfg.weight_decay / peak_lr
    return cfg.weight_decay


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict, path) -> None:
    """A checkpoint's optimizer state, into an optimizer of the same groups; each group keeps this
    run's LR multiplier (optim.lr_multipliers may change on a resume, the groups may not)."""
    saved_groups = [g.get("name") for g in saved["param_groups"]]
    groups = [g["name"] for g in optimizer.param_groups]
    if saved_groups != groups:
        raise UserError(f"trainer.resume: {path} has optimizer groups {saved_groups}, this run {groups} "
                        "(optim.lr_multipliers set or unset since); resume with the multipliers it was trained with")
    multipliers = [g["lr_mult"] for g in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, mult in zip(optimizer.param_groups, multipliers):  # this run's, not the checkpoint's
        group["lr_mult"] = mult
