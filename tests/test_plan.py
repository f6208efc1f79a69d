"""The run plan (minigpt/plan.py): one derivation of batch, length, schedule and peak LR, read by
the trainer and by the sweep report."""

import json

import pytest
import yaml

from minigpt.config import config_from_dict
from minigpt.plan import RunPlan
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
