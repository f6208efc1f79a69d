"""The batch-size LR scaling rule and the GPT-3 batch-size ramp, with their token accounting."""

import math

import pytest

from minigpt.plan import BatchPlan
from minigpt.config import OptimConfig, TrainerConfig
from minigpt.errors import UserError
from minigpt.run.metrics import read_metrics
from minigpt.plan import scaled_peak_lr
from minigpt.run.trainer import Trainer


def plan(micro=2, accum=4, world=1, start=None, ramp=None, block=10):
    tc = TrainerConfig(micro_batch_size=micro, grad_accum=accum, batch_ramp_start=start, batch_ramp_tokens=ramp)
    tc.validate()
    return BatchPlan.from_config(tc, world, block)


# --- the scaling rule ------------------------------------------------------------------------


@pytest.mark.parametrize("rule, factor", [("none", 1.0), ("linear", 4.0), ("sqrt_lr", 2.0), ("sqrt_adam", 2.0)])
def test_scaling_rules(rule, factor):
    cfg = OptimConfig(lr=1e-3, lr_scaling=rule, reference_batch_tokens=None if rule == "none" else 1024)
    assert scaled_peak_lr(cfg, 4096) == pytest.approx(1e-3 * factor, rel=1e-12)
    if rule != "none":
        assert scaled_peak_lr(cfg, 256) == pytest.approx(1e-3 / factor, rel=1e-12)


def test_scaling_rule_needs_a_reference_batch():
    with pytest.raises(UserError, match="reference_batch_tokens"):
        OptimConfig(lr_scaling="linear").validate()


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


def test_trainer_uses_records_and_reports_the_effective_lr(make_config, tmp_path):
    # tiny run: micro-batch 4, context 32 -> 128 tokens per update; reference 512 -> linear x 1/4
    cfg = make_config(trainer__max_steps=3, optim__lr=4e-3, optim__lr_scaling="linear",
                      optim__reference_batch_tokens=512, scheduler={"name": "constant"})
    result = Trainer(cfg, tmp_path, quiet=True).run()
    lrs = [r["train/lr"] for r in read_metrics(tmp_path) if "train/lr" in r]
    assert lrs == [pytest.approx(1e-3, rel=1e-12)] * 3
    assert result.summary["peak_lr"] == pytest.approx(1e-3) and result.summary["configured_lr"] == 4e-3


# --- the ramp ----------------------------------------------------------------------------------


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


@pytest.mark.slow
def test_trainer_ramps_the_batch_and_counts_the_schedule_in_tokens(make_config, tmp_path):
    # micro-batch 2, full batch 8 (accum 4), context 32: 256 tokens per full update.
    common = dict(trainer__micro_batch_size=2, trainer__grad_accum=4, trainer__max_steps=None,
                  trainer__max_tokens="2560", trainer__eval_interval=100, trainer__schedule_unit="tokens",
                  scheduler={"name": "cosine_warmup", "warmup": 2, "min_lr_ratio": 0.1})
    ramped = Trainer(make_config(**common, trainer__batch_ramp_start=2, trainer__batch_ramp_tokens="1024"),
                     tmp_path / "ramp", quiet=True)
    flat = Trainer(make_config(**common), tmp_path / "flat", quiet=True)
    assert flat.total_steps == 10 and flat.plan.schedule_steps == 10
    assert ramped.total_steps > 10 and ramped.plan.schedule_steps == 10  # more, smaller updates; same plan
    ramped.run()
    flat.run()
    r = [x for x in read_metrics(tmp_path / "ramp") if "train/loss" in x]
    f = [x for x in read_metrics(tmp_path / "flat") if "train/loss" in x]
    assert [x["step"] for x in r] == list(range(ramped.total_steps))  # a record for every update
    # token accounting: each record's batch is the plan's, and tokens add up batch x context
    seen = 0
    for x in r:
        assert x["train/batch_size"] == ramped.plan.batches.batch_at(seen)
        seen += x["train/batch_size"] * 32
        assert x["train/tokens"] == seen
    assert r[0]["train/batch_size"] == 2 and r[-1]["train/batch_size"] == 8
    assert seen >= 2560 and seen - r[-1]["train/batch_size"] * 32 < 2560
    # The LR at a given token count is the planned one, ramp or not.
    flat_lr = {x["train/tokens"] - 256: x["train/lr"] for x in f}
    before = [0] + [x["train/tokens"] for x in r[:-1]]
    matched = [(t, x["train/lr"]) for t, x in zip(before, r) if t in flat_lr]
    assert len(matched) >= 4  # the token counts both runs pass through (the ramp's are off the grid later)
    for t, lr in matched:
        assert lr == pytest.approx(flat_lr[t], rel=1e-12), t
    for t, x in zip(before, r):  # in between, the schedule is read at tokens / full-batch tokens
        assert x["train/lr"] == pytest.approx(ramped.plan.peak_lr * ramped.plan.schedule(t / 256), rel=1e-12)
    assert r[-1]["train/lr"] == pytest.approx(f[-1]["train/lr"], rel=0.02)  # both end at the floor
    peak = make_config().optim.lr
    assert r[0]["train/lr"] == pytest.approx(peak * 0.5)  # warmup of 2 full-batch steps: 1/2 at token 0
    assert not math.isclose(r[1]["train/lr"], r[0]["train/lr"])
