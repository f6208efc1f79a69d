"""optim.weight_decay_mode in a run: coupled (torch AdamW: decay lr_t x wd per step) or independent
(decay s_t x wd per step, s_t the schedule's multiplier: not scaled by the peak LR), alone and
stacked. The optimizer's step is tested in test_optim.py, the refused settings in test_config.py."""

import pytest

from minigpt.run.stack import train_stacked
from minigpt.run.trainer import Trainer, train


def test_independent_decay_follows_the_scaled_peak_lr_in_a_run(make_config, tmp_path):
    """Under the batch-size LR rule the peak the schedule multiplies is the scaled one."""
    cfg = make_config(optim__weight_decay=1e-3, optim__weight_decay_mode="independent", optim__lr=1e-3,
                      optim__lr_scaling="linear", optim__reference_batch_tokens=64)
    t = Trainer(cfg, tmp_path, quiet=True)
    assert t.plan.peak_lr == pytest.approx(2e-3)  # 4 x 32 tokens against 64
    decay, no_decay = t.optimizer.param_groups
    assert decay["weight_decay"] * t.plan.peak_lr == pytest.approx(1e-3) and no_decay["weight_decay"] == 0.0


@pytest.mark.slow
def test_stacked_runs_apply_each_runs_decay_mode(make_config, tmp_path):
    """A stack mixing both modes ends where each run ends alone."""
    variants = [{"optim__weight_decay": 0.5}, {"optim__weight_decay": 0.05, "optim__weight_decay_mode": "independent"}]
    common = {"trainer__max_steps": 4, "trainer__threads": 1, "trainer__eval_interval": 4}
    stacked = train_stacked([make_config(**common, **v) for v in variants], [tmp_path / "s0", tmp_path / "s1"],
                            quiet=True)
    for i, v in enumerate(variants):
        alone = train(make_config(**common, **v), tmp_path / f"a{i}", quiet=True)
        assert stacked[i].final_val_loss == pytest.approx(alone.final_val_loss, abs=1e-5)
    assert stacked[0].final_val_loss != pytest.approx(stacked[1].final_val_loss, abs=1e-4)


