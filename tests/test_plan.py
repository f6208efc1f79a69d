"""The run plan (minigpt/plan.py): one derivation of batch, length, schedule and peak LR, read by
the trainer and by the sweep report; the batch-size LR scaling rules (Malladi et al.'s square-root
rule beside the LR-only one) and the GPT-3 batch-size ramp with its token accounting."""

import json
import math

import pytest
import yaml

from minigpt.config import OptimConfig, TrainerConfig, config_from_dict
from minigpt.errors import UserError
from minigpt.plan import BatchPlan, RunPlan, scaled_peak_lr
from minigpt.studies.sweep.jobs import find_jobs
from minigpt.studies.sweep.statistics import warmup_steps
from minigpt.run.trainer import Trainer

# 64 sequences of 128 tokens per update = 8192 tokens; the micro-batch is 16, so 4 accumulation steps.
TOKEN_WARMUP = {"trainer": {"batch_size": 64, "micro_batch_size": 16, "max_steps": 100},
                "model": {"block_size": 128}, "scheduler": {"name": "cosine_warmup", "warmup": "64k tokens"}}


def test_token_warmup_counts_the_global_batch_not_one_micro_batch():
    plan = RunPlan.build(config_from_dict(TOKEN_WARMUP))
    assert (plan.global_batch, plan.grad_accum, plan.tokens_per_step) == (64, 4, 8192)
    assert plan.warmup_steps == 8  # round(64000 / 8192); a micro-batch guess would say 31
    assert plan.describe()["warmup_steps"] == 8 and plan.describe()["total_tokens"] == 100 * 8192


def test_lr_at_is_the_scaled_peak_times_the_schedule():
    cfg = config_from_dict({**TOKEN_WARMUP, "optim": {"lr": 1e-3, "lr_scaling": "sqrt_lr", "reference_batch_tokens": 2048}})
    plan = RunPlan.build(cfg, world_size=2)
    assert plan.peak_lr == pytest.approx(2e-3)  # sqrt(8192 / 2048) = 2; the global batch does not depend on ranks
    assert plan.grad_accum == 2  # 64 sequences = 16 x 2 ranks x 2
    lr, beta1 = plan.lr_at(3)
    assert lr == pytest.approx(2e-3 * 4 / 8) and beta1 is None  # linear warmup, step 3 of 8, peak reached at 7


def test_report_reads_the_warmup_the_trainer_built(tmp_path):
    """Regression: the report used to guess tokens per step from micro-batch x accumulation x context
    (31 steps here) while the trainer builds 8; it now reads summary.json's plan, or rebuilds it."""
    for name, summary in (("with_plan", {"status": "completed", "plan": {"warmup_steps": 8}}), ("crashed", None)):
        d = tmp_path / "sweep" / name
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(TOKEN_WARMUP))
        if summary:
            (d / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "sweep" / "crashed" / "error.txt").write_text("RuntimeError: boom\n")
    assert [warmup_steps(j) for j in find_jobs(tmp_path / "sweep")] == [8, 8]


def test_trainer_runs_the_plan_and_writes_it_into_the_summary(make_config, tmp_path):
    cfg = make_config(trainer__max_steps=4, trainer__grad_accum=2, trainer__eval_interval=100,
                      scheduler={"name": "cosine_warmup", "warmup": "256 tokens"})
    trainer = Trainer(cfg, tmp_path, quiet=True)
    assert trainer.plan == RunPlan.build(cfg, 1, trainer.data.meta["train_tokens"])
    result = trainer.run()
    plan = json.loads((tmp_path / "summary.json").read_text())["plan"]
    assert plan == json.loads(json.dumps(trainer.plan.describe()))
    assert plan["tokens_per_step"] == 4 * 2 * 32 and plan["warmup_steps"] == 1  # 256 tokens / 256 per step
    assert result.summary["plan"]["total_steps"] == 4


# --- the batch-size scaling rule and the ramp (BatchPlan) ---------------------------------------


def plan(micro=2, accum=4, world=1, start=None, ramp=None, block=10):
    tc = TrainerConfig(micro_batch_size=micro, grad_accum=accum, batch_ramp_start=start, batch_ramp_tokens=ramp)
    tc.validate()
    return BatchPlan.from_config(tc, world, block)


@pytest.mark.parametrize("rule, factor", [("none", 1.0), ("linear", 4.0), ("sqrt_lr", 2.0), ("sqrt_adam", 2.0)])
def test_scaling_rules(rule, factor):
    cfg = OptimConfig(lr=1e-3, lr_scaling=rule, reference_batch_tokens=None if rule == "none" else 1024)
    assert scaled_peak_lr(cfg, 4096) == pytest.approx(1e-3 * factor, rel=1e-12)
    if rule != "none":
        assert scaled_peak_lr(cfg, 256) == pytest.approx(1e-3 / factor, rel=1e-12)


@pytest.mark.parametrize("micro, accum, world", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 1, 8), (4, 1, 2)])
def test_same_global_batch_same_lr_whatever_the_ranks_and_accumulation(micro, accum, world):
    tc = TrainerConfig(micro_batch_size=micro, grad_accum=accum)
    tokens = BatchPlan.from_config(tc, world, block_size=64).final_tokens
    assert tokens == 8 * 64
    cfg = OptimConfig(lr=1e-3, lr_scaling="sqrt_lr", reference_batch_tokens=2 * 64)
    assert scaled_peak_lr(cfg, tokens) == pytest.approx(2e-3, rel=1e-12)
    # and trainer.batch_size=8 derives the accumulation that gives the same batch
    derived = BatchPlan.from_config(TrainerConfig(micro_batch_size=micro, batch_size=8), world, block_size=64)
    assert derived.final // derived.quantum * micro * world == 8


def test_without_a_ramp_every_update_has_the_full_batch():
    p = plan()
    assert (p.start, p.final, p.quantum, p.final_tokens) == (8, 8, 2, 80)
    assert all(p.batch_at(t) == 8 for t in (0, 1, 79, 10**9))
    assert p.updates_for(800) == 10 and p.updates_for(801) == 11 and p.updates_for(1) == 1
    assert p.tokens_after(10) == 800


def test_ramp_grows_linearly_in_whole_micro_batches():
    p = plan(micro=2, accum=8, start=4, ramp="1000", block=10)  # 4 -> 16 sequences over 1000 tokens
    assert (p.start, p.final, p.ramp_tokens) == (4, 16, 1000)
    # size at t tokens: 4 + 12 t / 1000, rounded down to a multiple of 2
    assert [p.batch_at(t) for t in (0, 100, 166, 167, 500, 999, 1000, 5000)] == [4, 4, 4, 6, 10, 14, 16, 16]
    assert [p.accum_at(t) for t in (0, 500, 1000)] == [2, 5, 8]
    # Walk the updates by hand: each adds batch_at(seen) x 10 tokens.
    seen, sizes = 0, []
    while seen < 1000:
        sizes.append(p.batch_at(seen))
        seen += sizes[-1] * 10
    assert sizes[:3] == [4, 4, 4] and sizes == sorted(sizes) and sizes[-1] <= 16
    assert p.tokens_after(len(sizes)) == seen
    assert p.tokens_after(len(sizes) + 3) == seen + 3 * 160
    assert p.updates_for(seen) == len(sizes) and p.updates_for(seen + 1) == len(sizes) + 1
    # start is rounded down to whole micro-batches per rank; a start of the full batch is no ramp
    assert plan(micro=2, accum=8, start=5, ramp="1k").start == 4 and plan(start=8, ramp="1k").start == 8
    assert plan(micro=2, accum=4, world=2, start=1, ramp="1k").start == 4  # quantum: 2 x 2 ranks


def test_ramp_config_errors():
    with pytest.raises(UserError, match="batch_ramp_tokens"):
        plan(start=4)
    with pytest.raises(UserError, match="batch_ramp_start"):
        plan(start=0, ramp="1k")
    # a start above the full batch was once clamped to it without a word
    with pytest.raises(UserError, match=r"batch_ramp_start \(100 sequences\) is larger than the global batch .*\(8 "):
        plan(start=100, ramp="1k")


# --- the square-root rule ----------------------------------------------------------------------

BASE = {"trainer": {"micro_batch_size": 4, "max_steps": 10}, "model": {"block_size": 32}}  # 128 tokens per update


def plan_of(optim, scheduler=None):
    return RunPlan.build(config_from_dict({**BASE, "optim": optim, "scheduler": scheduler or {"name": "constant"}}))


def test_sqrt_adam_scales_lr_betas_and_eps_and_sqrt_lr_only_the_lr():
    # k = 128 / 32 = 4: lr x 2, beta1 1 - 4 x 0.1 = 0.6, beta2 1 - 4 x 0.05 = 0.8, eps / 2
    full = plan_of({"lr": 1e-3, "lr_scaling": "sqrt_adam", "reference_batch_tokens": 32})
    assert full.peak_lr == pytest.approx(2e-3)
    assert (full.beta1, full.beta2, full.eps) == pytest.approx((0.6, 0.8, 5e-9))
    assert full.lr_at(3) == pytest.approx((2e-3, 0.6))
    assert {k: full.describe()[k] for k in ("beta1", "beta2", "eps")} == pytest.approx(
        {"beta1": 0.6, "beta2": 0.8, "eps": 5e-9})
    lr_only = plan_of({"lr": 1e-3, "lr_scaling": "sqrt_lr", "reference_batch_tokens": 32})
    assert lr_only.peak_lr == pytest.approx(2e-3) and (lr_only.beta1, lr_only.beta2, lr_only.eps) == (0.9, 0.95, 1e-8)
    assert lr_only.lr_at(3)[1] is None
    # a smaller batch than the reference moves the betas towards 1: k = 1/2
    small = plan_of({"lr": 1e-3, "lr_scaling": "sqrt_adam", "reference_batch_tokens": 256})
    assert (small.beta1, small.beta2, small.eps) == pytest.approx((0.95, 0.975, 1e-8 * math.sqrt(2)))


def test_sqrt_adam_bad_combinations_are_one_line():
    with pytest.raises(UserError, match=r"beta2 = 1 - 32 x \(1 - 0.95\) = -0.6, outside \[0, 1\)"):
        plan_of({"lr_scaling": "sqrt_adam", "reference_batch_tokens": 4, "beta1": 0.99})
    with pytest.raises(UserError, match="scheduler=one_cycle cycles it"):
        plan_of({"lr_scaling": "sqrt_adam", "reference_batch_tokens": 32}, {"name": "one_cycle"})
    with pytest.raises(UserError, match="did you mean 'sqrt_lr'"):
        plan_of({"lr_scaling": "sqrt", "reference_batch_tokens": 32})
