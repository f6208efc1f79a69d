"""WSD cooldown branches: one stable run, several cooldowns started from its checkpoints."""

import pytest

from minigpt.run.checkpoint import checkpoint_path
from minigpt.run.metrics import read_metrics
from minigpt.run.trainer import Trainer


def wsd(**params):
    return {"name": "wsd", "warmup": 2, "decay_shape": "linear", "min_lr_ratio": 0.0, **params}


def steps(run_dir):
    return {r["step"]: r for r in read_metrics(run_dir) if "train/loss" in r}


@pytest.mark.slow
def test_cooldown_branch_equals_a_run_that_decayed_there_from_the_start(make_config, tmp_path):
    # The long stable run: no decay at all, a checkpoint every 4 steps.
    stable = make_config(trainer__max_steps=16, trainer__ckpt_interval=4, trainer__keep_checkpoints=10,
                         trainer__eval_interval=4, scheduler=wsd(decay=0))
    Trainer(stable, tmp_path / "stable", quiet=True).run()

    # Branch at step 8 with a 6-step cooldown, in its own run directory.
    ckpt = checkpoint_path(tmp_path / "stable", 8)
    branch_cfg = make_config(trainer__max_steps=14, trainer__eval_interval=4, trainer__resume=str(ckpt),
                             scheduler=wsd(decay_start=8))
    branch = Trainer(branch_cfg, tmp_path / "branch", quiet=True)
    result = branch.run()
    assert result.summary["branched_from"] == str(ckpt) and result.status == "completed"

    # The same cooldown trained in one go from step 0.
    direct_cfg = make_config(trainer__max_steps=14, trainer__eval_interval=4, scheduler=wsd(decay_start=8))
    Trainer(direct_cfg, tmp_path / "direct", quiet=True).run()

    branched, direct, parent = steps(tmp_path / "branch"), steps(tmp_path / "direct"), steps(tmp_path / "stable")
    assert sorted(branched) == list(range(14))  # the parent's first 8 records, then the branch's own
    for s in range(14):
        assert branched[s]["train/lr"] == direct[s]["train/lr"]
        assert branched[s]["train/loss"] == direct[s]["train/loss"], s  # exact resume: bit for bit on CPU
    peak = make_config().optim.lr
    assert [branched[s]["train/lr"] for s in range(8)] == [parent[s]["train/lr"] for s in range(8)]
    assert branched[7]["train/lr"] == pytest.approx(peak)
    lrs = [branched[s]["train/lr"] for s in range(8, 14)]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < peak and lrs[-1] < 0.2 * peak  # the cooldown
    assert parent[13]["train/lr"] == pytest.approx(peak)  # and the parent run kept its stable phase
    # The parent's directory is untouched by the branch: its records still end at its own last step.
    assert max(parent) == 15 and len(read_metrics(tmp_path / "stable")) == len(steps(tmp_path / "stable")) + 1
