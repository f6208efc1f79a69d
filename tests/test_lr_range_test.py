"""The LR range test: smoothing, suggestions, and `python train.py experiment=lr_range_test`."""

import hashlib
import json
import math

import numpy as np
import pytest

from helpers import hydra_args, run_train
from minigpt.studies.lr_range_test import smooth, suggest


def test_smoothing_is_a_bias_corrected_ema():
    assert smooth([3.0] * 5, 0.9) == pytest.approx([3.0] * 5)  # no pull towards 0 at the start
    # By hand: ema1 = 0.1*2 = 0.2 -> 0.2/0.1 = 2; ema2 = 0.9*0.2 + 0.1*4 = 0.58 -> 0.58/0.19
    assert smooth([2.0, 4.0], 0.9) == pytest.approx([2.0, 0.58 / 0.19])
    assert smooth([2.0, 4.0], 0.0) == [2.0, 4.0]


def test_suggestions_find_the_steepest_descent_and_the_minimum():
    lrs = list(np.geomspace(1e-5, 1.0, 301))
    # Falls fastest at 1e-3 (the centre of the tanh), bottoms out near 0.013, then blows up.
    loss = [5 - math.tanh(1.5 * math.log(lr / 1e-3)) + 8 * lr ** 2 for lr in lrs]
    steepest, at_min = suggest(lrs, loss, skip_start=5)
    assert steepest == pytest.approx(1e-3, rel=0.05)
    assert at_min == lrs[int(np.argmin(loss))] and 0.01 < at_min < 0.02
    # The first skip_start points are ignored even when they hold the lowest value.
    assert suggest(lrs, [0.0] * 3 + loss[3:], skip_start=5)[1] == at_min
    assert suggest(lrs[:6], loss[:6], skip_start=5) == (None, None)  # too short to say anything


@pytest.mark.slow
def test_range_test_stops_at_the_blow_up_and_leaves_the_model_untouched(cache_dir, make_config, tmp_path):
    # A checkpoint to start from (trained in process: the config hydra_args gives train.py), then
    # the range test from it through train.py.
    from minigpt.run.trainer import train

    parent = tmp_path / "parent"
    assert train(make_config(trainer__max_steps=4), parent, quiet=True).status == "completed"
    ckpt = next((parent / "checkpoints").glob("*.pt"))
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()

    run_dir = tmp_path / "lrrt"
    args = hydra_args(cache_dir, run_dir, **{"trainer.max_steps": 80, "trainer.eval_interval": 1000,
                                             "optim.lr": 100.0, "trainer.resume": str(ckpt)})
    proc = run_train(["experiment=lr_range_test", *args])
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((run_dir / "lr_range_test.json").read_text())
    n = len(result["losses"])
    assert 5 < n < 80 - 4  # stopped before the end of the ramp (the run resumed at step 4)
    assert "x its minimum" in result["stop_reason"] or "loss is" in result["stop_reason"]
    finite = [v for v in result["smoothed"] if math.isfinite(v)]
    assert not math.isfinite(result["losses"][-1]) or finite[-1] > 4 * min(finite)
    assert all(b > a for a, b in zip(result["lrs"], result["lrs"][1:]))  # the LR ramps up
    assert result["min_lr"] / 10 == pytest.approx(result["suggested_lr"])
    assert "suggested peak LR" in proc.stdout and (run_dir / "lr_range_test.png").stat().st_size > 10_000
    # No checkpoint anywhere: the starting weights stay as they were.
    assert not (run_dir / "checkpoints").exists()
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == digest
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "stopped"
