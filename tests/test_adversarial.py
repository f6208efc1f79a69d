"""The defects of issue 28 ("258 adversarial cases, 12 defects"), each with its reproduction.

Numbered as in the issue: 1 unbounded memory from a valid integer, 2 symlinks in run and cache
folders, 3 an overwrite that moved everything, 4 the claim before Hydra writes, 5 token caches
checked by content, 6 a deleted checksum, 7 corpus files that change during preparation, 8 a
healthy cache called damaged, 9 tracebacks for bad input, 10 meaningless values, 11 duplicated
records, 12 code named by a fit file, and the two "also seen". In process on tiny runs; a
subprocess only where the exit status, a memory limit or a second process is the point.
docs/reliability.md's fault table names the test of each row.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, nested, tiny_overrides
from minigpt import schedules
from minigpt.config import MAX_STEPS, config_from_dict
from minigpt.errors import UserError
from minigpt.launch import cli
from minigpt.plan import BatchPlan


def peak_bytes(fn):
    """(result, the peak of Python's allocations while fn ran)."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- 1. bounded memory and time for any value the config accepts -----------------------------


@pytest.mark.parametrize("override", ["trainer.max_steps=1e30", "trainer.max_steps=1000000000001",
                                      "trainer.max_steps=null trainer.max_tokens=1e30",
                                      "trainer.max_steps=null trainer.max_tokens=1e400",
                                      "trainer.max_steps=null trainer.epochs=inf",
                                      "trainer.batch_ramp_start=4 trainer.batch_ramp_tokens=1e30"])
def test_a_run_length_that_cannot_be_meant_is_refused_in_one_line(override, tmp_path):
    with pytest.raises(UserError, match=r"trainer\.(max_steps|max_tokens|epochs|batch_ramp_tokens)") as e:
        cli.precheck([*override.split(), f"hydra.run.dir={tmp_path / 'r'}"])
    assert "\n" not in str(e.value)


@dataclass(frozen=True)
class TipParams:
    def validate(self, total_steps):
        pass


def test_the_curve_check_finds_a_tip_between_samples_in_bounded_memory(schedule_registry_kept, monkeypatch):
    # A triangle whose tip lies between two samples and on no phase boundary: the old check held
    # every step of the gap around the highest sample in a set (total / EXACT_STEPS steps: 5 x
    # 10^24 at 10^30); the zoom finds the tip in O(log n) rounds. Scaled down to 2,000 samples
    # so that it takes a tenth of a second (the real 200,000: the slow test of a 10^9-step run).
    monkeypatch.setattr(schedules, "EXACT_STEPS", 2000)

    @schedules.register_schedule("tip_between_samples", TipParams)
    def tip(step, total_steps, p):
        return 1.0 - abs(step - (total_steps // 3 + 12345)) / total_steps

    schedule = schedules.build_schedule("tip_between_samples", MAX_STEPS)
    assert schedule.describe()["peak_step"] == MAX_STEPS // 3 + 12345
    huge = schedules.build_schedule("tip_between_samples", 10**30)  # the check alone, without the config's cap
    steps, peak = peak_bytes(lambda: schedules.curve_steps(huge))
    assert peak < 20e6 and len(steps) < 20_000
    assert huge(max(steps, key=huge)) == 1.0


def test_the_ramp_arithmetic_is_per_batch_level_and_exact():
    import random

    def updates_walked(b, tokens):  # the definition: one update at a time
        seen, n = 0, 0
        while seen < min(tokens, b.ramp_tokens):
            seen, n = seen + b.batch_at(seen) * b.block_size, n + 1
        return max(1, n + max(0, math.ceil((tokens - seen) / b.final_tokens)))

    rng = random.Random(0)
    for _ in range(300):
        q = rng.choice([1, 2, 8])
        final = q * rng.randint(1, 30)
        b = BatchPlan(final, max(q, rng.randint(1, final) // q * q), rng.randint(1, 5000), q, rng.choice([1, 16]))
        for tokens in (1, b.ramp_tokens, rng.randint(1, 20000)):
            assert b.updates_for(tokens) == updates_walked(b, tokens)
    # a ramp of 10^15 tokens in updates of 64 tokens: 1.5 x 10^13 turns of the old loop
    long = BatchPlan(1024, 4, 10**15, 4, 16)
    assert long.tokens_after(long.updates_for(10**15)) >= 10**15


def test_predict_loss_reads_a_run_claiming_step_10_to_the_12_in_bounded_memory(tmp_path):
    from minigpt.studies import loss_prediction as lp

    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "train/lr": 0.001}\n{"step": 1000000000000, "train/lr": 0.001}\n')
    with pytest.raises(UserError, match="reach step 999,999,999,999|past the"):
        peak_bytes(lambda: lp.read_run(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "train/lr": 0.001}\n{"step": 900000, "train/lr": 0.001}\n')
    with pytest.raises(UserError, match=r"missing for 899,?999 of steps 0..900000 \(first: 1\)"):
        lp.read_run(tmp_path)


LIMITED = textwrap.dedent("""
    import resource, runpy, sys
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GB of address space
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


@pytest.mark.slow
def test_train_py_with_max_steps_1e30_under_1_gb_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-c", LIMITED, str(ROOT / "train.py"), "trainer.max_steps=1e30",
                           f"hydra.run.dir={tmp_path / 'r'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "trainer.max_steps" in proc.stderr
    assert not (tmp_path / "r").exists()
