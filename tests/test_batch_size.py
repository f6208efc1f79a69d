"""The trainer under the batch-size rules: the LR scaled by the global batch and the GPT-3 batch-size
ramp in a run, counted in tokens. The rules themselves (minigpt/plan.py) are tested in test_plan.py."""

import math

import pytest

from minigpt.run.metrics import read_metrics
from minigpt.run.trainer import Trainer


# --- the scaling rule ------------------------------------------------------------------------


def test_trainer_uses_records_and_reports_the_effective_lr(make_config, tmp_path):
    # tiny run: micro-batch 4, context 32 -> 128 tokens per update; reference 512 -> linear x 1/4
    cfg = make_config(trainer__max_steps=3, optim__lr=4e-3, optim__lr_scaling="linear",
                      optim__reference_batch_tokens=512, scheduler={"name": "constant"})
    result = Trainer(cfg, tmp_path, quiet=True).run()
    lrs = [r["train/lr"] for r in read_metrics(tmp_path) if "train/lr" in r]
    assert lrs == [pytest.approx(1e-3, rel=1e-12)] * 3
    assert result.summary["peak_lr"] == pytest.approx(1e-3) and result.summary["configured_lr"] == 4e-3


# --- the ramp ----------------------------------------------------------------------------------


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
