"""Optimizer rules in a run: Malladi et al.'s square-root rule (LR, betas, eps) applied and recorded,
the z-loss kept out of val/loss, and per-group LR multipliers on top of the schedule. The rule's
plan (minigpt/plan.py) is tested in test_plan.py."""

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt.errors import UserError
from minigpt.run.metrics import read_metrics
from minigpt.plan import RunPlan
from minigpt.run.stack import check_stackable
from minigpt.run.trainer import Trainer


# --- the square-root rule ----------------------------------------------------------------------


def test_a_run_with_sqrt_adam_uses_and_records_the_scaled_betas_and_eps(make_config, tmp_path):
    cfg = make_config(trainer__max_steps=2, optim__lr_scaling="sqrt_adam", optim__reference_batch_tokens=32)
    trainer = Trainer(cfg, tmp_path, quiet=True)
    result = trainer.run()
    for group in trainer.optimizer.param_groups:
        assert group["betas"] == pytest.approx((0.6, 0.8)) and group["eps"] == pytest.approx(5e-9)
    records = [r for r in read_metrics(tmp_path) if "train/loss" in r]
    assert all(r["train/beta1"] == pytest.approx(0.6) and r["train/beta2"] == pytest.approx(0.8)
               and r["train/eps"] == pytest.approx(5e-9) for r in records) and len(records) == 2
    assert result.summary["plan"]["beta2"] == pytest.approx(0.8) and result.summary["plan"]["lr_scaling"] == "sqrt_adam"


# --- z-loss --------------------------------------------------------------------------------------


def test_val_loss_is_cross_entropy_and_the_z_loss_term_is_reported_apart(make_config, tmp_path):
    cfg = make_config(trainer__max_steps=3, trainer__eval_interval=1, model__z_loss=0.01)
    trainer = Trainer(cfg, tmp_path, quiet=True)
    result = trainer.run()
    # the same evaluation windows, scored by hand with the final weights
    ce, z = [], []
    with torch.no_grad():
        for i in range(cfg.trainer.eval_iters):
            x, y = trainer.val_batches.eval_batch(i)
            logits, _ = trainer.model(x)
            flat = logits.view(-1, logits.size(-1)).float()
            ce.append(F.cross_entropy(flat, y.reshape(-1)).item())
            z.append(0.01 * (torch.logsumexp(flat, -1) ** 2).mean().item())
    final = [r for r in read_metrics(tmp_path) if "val/loss" in r][-1]
    assert final["val/loss"] == pytest.approx(sum(ce) / len(ce), rel=1e-5)
    assert final["val/z_loss"] == pytest.approx(sum(z) / len(z), rel=1e-5) and final["val/z_loss"] > 1e-3
    assert result.summary["final_val_loss"] == final["val/loss"] and result.summary["final_val_z_loss"] == final["val/z_loss"]
    train = [r for r in read_metrics(tmp_path) if "train/loss" in r]
    assert all(r["train/z_loss"] > 0 for r in train)
    # the step's objective is cross-entropy + z term: the first step's cross-entropy is near log(V)
    assert abs(train[0]["train/loss"] - math.log(trainer.model_config.vocab_size)) < 0.5


# --- per-group LR multipliers -------------------------------------------------------------------


def test_lr_multipliers_apply_on_top_of_the_schedule(make_config, tmp_path):
    mult = {"embedding": 2.0, "head": 2.0, "matrices": 0.5, "norms_biases": 0.0}
    cfg = make_config(trainer__max_steps=3, **{f"optim__lr_multipliers__{k}": v for k, v in mult.items()})
    trainer = Trainer(cfg, tmp_path, quiet=True)
    norms_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.dim() < 2}
    result = trainer.run()
    lr_last = trainer.plan.lr_at(2)[0]  # the schedule's LR of the last update (cosine with warmup)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {"embedding", "matrices", "norms_biases"}  # the head is the token embedding
    for name, group in groups.items():
        assert group["lr"] == pytest.approx(lr_last * mult[name], rel=1e-12)
    assert all(p is not trainer.model.lm_head.weight for p in groups["matrices"]["params"])
    for n, p in trainer.model.named_parameters():  # multiplier 0: the norms and biases never moved
        if p.dim() < 2:
            assert torch.equal(p.detach(), norms_before[n]), n
    records = [r for r in read_metrics(tmp_path) if "train/lr" in r]
    assert records[-1]["train/lr"] == pytest.approx(lr_last)  # the record keeps the schedule's LR
    assert result.summary["plan"]["lr_multipliers"] == mult


def test_lr_multipliers_refusals_are_one_line(make_config):
    with pytest.raises(UserError, match="lr_multipliers.head .* differs from optim.lr_multipliers.embedding"):
        RunPlan.build(make_config(optim__lr_multipliers__head=3.0))
    with pytest.raises(UserError, match="optim.lr_multipliers.matrices must be a number >= 0"):
        make_config(optim__lr_multipliers__matrices=-1.0)
    with pytest.raises(UserError, match="optim.lr_multipliers is not supported for stacked runs"):
        check_stackable([make_config(optim__lr_multipliers__matrices=0.5)])
    with pytest.raises(UserError, match="model.z_loss is not supported for stacked runs"):
        check_stackable([make_config(model__z_loss=1e-4)])
