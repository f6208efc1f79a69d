"""optim.weight_decay_mode: coupled (torch AdamW: decay lr_t x wd per step) or independent
(decay s_t x wd per step, s_t the schedule's multiplier: not scaled by the peak LR)."""

import pytest
import torch

from minigpt.config import OptimConfig, config_from_dict
from minigpt.errors import UserError
from minigpt.optim import build_optimizer
from minigpt.run.stack import train_stacked
from minigpt.run.trainer import Trainer, train


class TwoParams(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.matrix = torch.nn.Parameter(torch.full((3, 2), 2.0))  # decays
        self.gain = torch.nn.Parameter(torch.full((2,), 2.0))  # never decays


def decayed_once(mode: str, weight_decay: float, peak_lr: float, multiplier: float) -> tuple[float, float]:
    """One AdamW step with zero gradients (so the Adam update is 0): only the decay moves the weights."""
    model = TwoParams()
    cfg = OptimConfig(lr=peak_lr, weight_decay=weight_decay, weight_decay_mode=mode)
    opt = build_optimizer(model, cfg, torch.device("cpu"), peak_lr)
    for group in opt.param_groups:
        group["lr"] = peak_lr * multiplier  # as the trainer sets it: peak x schedule(step)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return model.matrix[0, 0].item() / 2.0, model.gain[0].item() / 2.0


@pytest.mark.parametrize("peak_lr", [1e-3, 1e-2])
@pytest.mark.parametrize("multiplier", [1.0, 0.25])
def test_coupled_decay_scales_with_the_lr_and_independent_only_with_the_schedule(peak_lr, multiplier):
    kept, gain = decayed_once("coupled", 0.1, peak_lr, multiplier)
    assert kept == pytest.approx(1 - peak_lr * multiplier * 0.1, rel=1e-7) and gain == 1.0
    kept, gain = decayed_once("independent", 1e-3, peak_lr, multiplier)
    assert kept == pytest.approx(1 - multiplier * 1e-3, rel=1e-7) and gain == 1.0  # the same at both peak LRs


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


@pytest.mark.parametrize("overrides, text", [
    ({"weight_decay_mode": "decoupled"}, "optim.weight_decay_mode: must be one of coupled, independent"),
    ({"weight_decay_mode": "independent", "weight_decay": 1.0}, "optim.weight_decay must be < 1 with"),
])
def test_bad_decay_settings_are_one_line(overrides, text):
    with pytest.raises(UserError, match=text.replace(".", r"\.")):
        config_from_dict({"optim": overrides})
