"""minigpt/optim.py: the optimizers (optim=adamw | muon | schedule_free), GI-Adam (optim.adam_init=grad),
the weight average (optim.ema) and the two weight-decay modes: each trains, each keeps its
definition, each resumes exactly.

All in process on a 2-layer, 32-wide model; the trainer's schedule figure is not drawn here (it
is tested in test_plots.py and takes most of a tiny run's time).
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import nested, tiny_overrides
from minigpt.config import ModelConfig, OptimConfig, config_from_dict
from minigpt.errors import UserError
from minigpt.model import GPT, GPTConfig
from minigpt.optim import (MuonWithAdamW, WeightAverage, build_optimizer, check_precision, eval_point,
                           init_second_moment)
from minigpt.run import trainer as trainer_mod
from minigpt.run.checkpoint import checkpoint_path, load_checkpoint
from minigpt.run.metrics import read_metrics
from minigpt.run.stack import train_stacked
from minigpt.run.stepper import ModelStepper
from minigpt.run.trainer import Trainer, train

MUON = {"optim.name": "muon", "optim.lr": 0.02, "optim.lr_multipliers.embedding": 0.25,
        "optim.lr_multipliers.head": 0.25, "optim.lr_multipliers.norms_biases": 0.25, "optim.muon.momentum_warmup": 4}
SCHEDULE_FREE = {"optim.name": "schedule_free", "scheduler.name": "constant_warmup"}


@pytest.fixture(autouse=True)
def no_schedule_figure(monkeypatch):
    monkeypatch.setattr(trainer_mod, "plot_schedule_curve", lambda *a, **k: None)


@pytest.fixture
def config(cache_dir):
    def make(**overrides):
        merged = tiny_overrides(cache_dir)
        merged.update({"trainer.threads": 1})
        merged.update(overrides)
        return config_from_dict(nested(merged))

    return make


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.build(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16), 64))


def fixed_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 64, (4, 16), generator=g)
    return x, torch.roll(x, -1, dims=1)


def names_of(model, params) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


# --- each optimizer trains ------------------------------------------------------------------


@pytest.mark.parametrize("name, extra", [("adamw", {}), ("muon", {"lr": 0.02}), ("schedule_free", {}),
                                         ("adamw", {"adam_init": "grad"}), ("muon", {"adam_init": "grad"})])
def test_each_optimizer_lowers_the_loss_on_a_fixed_batch(name, extra):
    model, (x, y) = tiny_gpt(), fixed_batch()
    opt = build_optimizer(model, OptimConfig(name=name, lr=extra.get("lr", 5e-3), adam_init=extra.get("adam_init", "zero")),
                          torch.device("cpu"))
    with torch.no_grad():
        before = model(x, y)[1].item()
    for step in range(8):
        loss = model(x, y)[1]
        loss.backward()
        if step == 0 and extra.get("adam_init") == "grad":
            init_second_moment(opt)
        opt.step()
        opt.zero_grad(set_to_none=True)
    with eval_point(opt, list(model.parameters())), torch.no_grad():
        after = model(x, y)[1].item()
    assert after < before - 0.3, (name, extra, before, after)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = tiny_gpt()
    opt = build_optimizer(model, OptimConfig(name="muon"), torch.device("cpu"))
    assert isinstance(opt, MuonWithAdamW) and isinstance(opt.muon, torch.optim.Muon)
    muon = names_of(model, [p for g in opt.muon.param_groups for p in g["params"]])
    assert muon == {f"transformer.h.{i}.{m}.weight" for i in (0, 1)
                    for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    groups = {g["name"]: names_of(model, g["params"]) for g in opt.adamw.param_groups}
    assert groups["embedding"] == {"transformer.wte.weight", "transformer.wpe.weight"}  # the head is wte (tied)
    assert groups["norms_biases"] == {n for n, p in model.named_parameters() if p.dim() == 1}
    assert set(groups) == {"embedding", "norms_biases"}
    assert [g["name"] for g in opt.param_groups] == ["matrices", "embedding", "norms_biases"]


def test_muon_groups_follow_the_schedule_with_their_own_peaks_and_muon_momentum_warms_up(config, tmp_path):
    t = Trainer(config(**MUON), tmp_path, quiet=True)
    for step, momentum in ((0, 0.85), (2, 0.90), (4, 0.95), (9, 0.95)):
        lr, _ = t.plan.apply(t.optimizer, step)
        lrs = {g["name"]: g["lr"] for g in t.optimizer.param_groups}
        assert lrs == pytest.approx({"matrices": lr, "embedding": lr * 0.25, "norms_biases": lr * 0.25})
        assert t.optimizer.muon.param_groups[0]["momentum"] == pytest.approx(momentum)
    assert t.plan.describe()["muon_momentum"] == [0.85, 0.95, 4]


# --- GI-Adam --------------------------------------------------------------------------------


@pytest.mark.parametrize("adam_init, fused", [("grad", "off"), ("grad", "on"), ("zero", "off")])
def test_gi_adam_second_moment_after_the_first_step_is_the_first_gradient_squared(adam_init, fused):
    """v_0 = g_1^2, then Adam's v_1 = beta2 v_0 + (1 - beta2) g_1^2 = g_1^2 (plain Adam: (1 - beta2) g_1^2).
    The fused AdamW (CUDA's default, also on the CPU) keeps its step counter elsewhere: built by torch too."""
    model, (x, y) = tiny_gpt(), fixed_batch()
    cfg = OptimConfig(adam_init=adam_init, fused=fused)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    model(x, y)[1].backward()
    grads = {p: p.grad.clone() for p in model.parameters()}
    if adam_init == "grad":
        init_second_moment(opt)
    opt.step()
    scale = 1.0 if adam_init == "grad" else 1 - cfg.beta2
    for p, g in grads.items():
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], scale * g * g, rtol=1e-6, atol=0)
        assert float(opt.state[p]["step"]) == 1.0


def test_gi_adam_in_a_run_starts_from_the_clipped_first_gradient_and_only_once(config, tmp_path):
    t = Trainer(config(**{"optim.adam_init": "grad", "optim.grad_clip": 1e-3}), tmp_path, quiet=True)
    seen = {}
    original = t.optimizer.step

    def step_spy(*args, **kwargs):  # the gradient the optimizer steps with: clipped to norm 1e-3
        if not seen:
            seen.update({p: p.grad.clone() for p in t.params})
        return original(*args, **kwargs)

    t.optimizer.step = step_spy
    stepper = ModelStepper(t)
    stepper.train_step()
    assert not t.adam_init_pending
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in seen.values()]))
    assert float(norm) == pytest.approx(1e-3, rel=1e-3)
    for p, g in seen.items():
        torch.testing.assert_close(t.optimizer.state[p]["exp_avg_sq"], g * g, rtol=1e-5, atol=1e-30)


def test_stacked_gi_adam_runs_end_where_they_end_alone(config, tmp_path):
    common = {"trainer.max_steps": 4, "trainer.eval_interval": 4, "optim.adam_init": "grad"}
    variants = [{"seed": 1}, {"seed": 2, "optim.adam_init": "zero"}]
    stacked = train_stacked([config(**{**common, **v}) for v in variants], [tmp_path / "s0", tmp_path / "s1"],
                            quiet=True)
    for i, v in enumerate(variants):
        alone = train(config(**{**common, **v}), tmp_path / f"a{i}", quiet=True)
        assert stacked[i].summary["final_val_loss"] == pytest.approx(alone.summary["final_val_loss"], abs=2e-5)
    assert stacked[0].summary["final_val_loss"] != pytest.approx(stacked[1].summary["final_val_loss"], abs=1e-3)


# --- schedule-free --------------------------------------------------------------------------


def mean_val_loss(t: Trainer) -> float:
    """The validation loss of the model's current weights, computed here without the trainer."""
    t.model.eval()
    with torch.no_grad():
        losses = [t.model(*t.val_batches.eval_batch(i), with_z_loss=False)[1].double()
                  for i in range(t.cfg.trainer.eval_iters)]
    t.model.train()
    return float(sum(losses) / len(losses))


def hand_eval_point(t: Trainer, weights) -> list[torch.Tensor]:
    """Schedule-free's x from its training point y and its z: x = y + (1 - 1/beta1) (z - y)."""
    beta1 = t.optimizer.param_groups[0]["betas"][0]
    return [w.lerp(t.optimizer.state[p]["z"], 1 - 1 / beta1) for p, w in zip(t.params, weights)]


def test_schedule_free_evaluates_and_saves_its_average_and_trains_on_from_the_exact_train_point(config, tmp_path):
    t = Trainer(config(**SCHEDULE_FREE, **{"trainer.max_steps": 6}), tmp_path, quiet=True)
    stepper = ModelStepper(t)
    for _ in range(3):
        stepper.train_step()
    y = [p.detach().clone() for p in t.params]
    x = hand_eval_point(t, y)
    assert max(float((a - b).abs().max()) for a, b in zip(x, y)) > 1e-4  # the two points differ

    val = t.evaluate()
    assert all(torch.equal(p, w) for p, w in zip(t.params, y))  # back at the training point, bit for bit
    with torch.no_grad():
        torch._foreach_copy_(t.params, x)
        at_x = mean_val_loss(t)
        torch._foreach_copy_(t.params, y)
    assert val == pytest.approx(at_x, abs=1e-6) and abs(val - mean_val_loss(t)) > 1e-5

    t.t0 = 0.0
    saved = load_checkpoint(t.save())
    assert all(torch.equal(p, w) for p, w in zip(t.params, y))
    model = saved["model"]
    for (name, _), xi, yi, ti in zip(t.model.named_parameters(), x, y, saved["train_point"]):
        torch.testing.assert_close(model[name], xi, rtol=1e-6, atol=1e-7)  # the checkpoint holds x
        assert torch.equal(ti, yi)  # and the exact training point
    assert all(g["train_mode"] for g in t.optimizer.param_groups)  # the optimizer trains on
    t.close()


# --- the weight average ---------------------------------------------------------------------


def test_weight_average_after_k_steps_is_the_hand_computed_ema(config, tmp_path):
    t = Trainer(config(**{"optim.ema": 3, "trainer.max_steps": 12}), tmp_path, quiet=True)
    assert t.plan.ema_half_life == 3 and t.plan.ema_decay == pytest.approx(0.5 ** (1 / 3))
    d = 0.5 ** (1 / 3)
    expected = [p.detach().clone().double() for p in t.params]
    stepper = ModelStepper(t)
    for _ in range(5):
        stepper.train_step()
        expected = [d * e + (1 - d) * p.detach().double() for e, p in zip(expected, t.params)]
    for e, a in zip(expected, t.ema.average):
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-6)
    assert max(float((a - p.detach()).abs().max()) for a, p in zip(t.ema.average, t.params)) > 1e-4  # an average, not the weights
    t.close()


def test_weight_average_lerp_matches_its_definition():
    w = [torch.tensor([1.0, 2.0]), torch.tensor([[4.0]])]
    ema = WeightAverage(w, decay=0.75)
    for value in (3.0, 5.0):
        for p in w:
            p.fill_(value)
        ema.update()
    # e1 = 0.75 e0 + 0.25 * 3, e2 = 0.75 e1 + 0.25 * 5
    e0 = torch.tensor([1.0, 2.0])
    assert torch.allclose(ema.average[0], 0.75 * (0.75 * e0 + 0.75) + 1.25)
    assert torch.allclose(ema.average[1], torch.tensor([[0.75 * (0.75 * 4.0 + 0.75) + 1.25]]))


@pytest.mark.parametrize("value, steps", [(3, 3), ("25%", 3), (0.5, 6), ("3 steps", 3), ("1k tokens", 8)])
def test_ema_half_life_is_read_like_a_schedule_length(config, value, steps):
    from minigpt.plan import RunPlan

    plan = RunPlan.build(config(**{"optim.ema": value}))  # 12 steps of 4 x 32 = 128 tokens
    assert plan.ema_half_life == steps and plan.describe()["ema_half_life_steps"] == steps


# --- resume is exact ------------------------------------------------------------------------


def deterministic(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("perf/")}


# Each with gradient accumulation (2 micro-batches of 2), and Muon's under bf16 autocast too.
ACCUM = {"trainer.grad_accum": 2, "trainer.micro_batch_size": 2}
RESUMED = [("muon_gi_adam_ema_bf16", {**MUON, **ACCUM, "optim.adam_init": "grad", "optim.ema": 2,
                                      "trainer.precision": "bf16"}),
           ("schedule_free", {**SCHEDULE_FREE, **ACCUM}),
           ("adamw_gi_adam_ema", {**ACCUM, "optim.adam_init": "grad", "optim.ema": "25%"})]


@pytest.mark.slow  # two runs each, 2 to 4 s on 2 cores
@pytest.mark.parametrize("name, extra", RESUMED, ids=[r[0] for r in RESUMED])
def test_a_resumed_run_is_bitwise_the_uninterrupted_one(name, extra, config, tmp_path):
    """A run resumed from its step-3 checkpoint (a fresh Trainer, everything read from the file, as
    after a kill) writes the same records, to the bit, and ends with the same weights, optimizer
    state and average. The uninterrupted run trains (its loss falls)."""
    common = {"trainer.max_steps": 6, "trainer.ckpt_interval": 3, "trainer.eval_interval": 3,
              "trainer.keep_checkpoints": 10, **extra}
    reference = train(config(**common), tmp_path / "reference", quiet=True)
    assert reference.status == "completed"
    assert reference.summary["final_val_loss"] < reference.summary["initial_val_loss"] - 0.01
    assert reference.summary["precision"] == extra.get("trainer.precision", "fp32")
    resumed = train(config(**common, **{"trainer.resume": str(checkpoint_path(tmp_path / "reference", 3))}),
                    tmp_path / "resumed", quiet=True)
    assert resumed.status == "completed" and resumed.summary["resumed_from"].endswith("step_0000003.pt")
    ref_records, records = read_metrics(tmp_path / "reference"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in records] == list(range(7))
    assert [deterministic(r) for r in records] == [deterministic(r) for r in ref_records]
    a, b = load_checkpoint(checkpoint_path(tmp_path / "reference", 6)), load_checkpoint(checkpoint_path(tmp_path / "resumed", 6))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    flat_a, flat_b = _tensors(a["optimizer"]), _tensors(b["optimizer"])
    assert len(flat_a) == len(flat_b) > 0 and all(torch.equal(u, v) for u, v in zip(flat_a, flat_b))
    for part in ("train_point", "ema"):
        assert (a[part] is None) == (b[part] is None)
        if a[part] is not None:
            assert all(torch.equal(u, v) for u, v in zip(a[part], b[part]))
    if "optim.ema" in extra:
        vals = [r for r in ref_records if "val/loss" in r]
        assert all("val/loss_ema" in r for r in vals) and len(vals) == 3
        summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
        assert summary["final_val_loss_ema"] == vals[-1]["val/loss_ema"]
        assert summary["best_val_loss_ema"] == min(r["val/loss_ema"] for r in vals)
        assert summary["final_val_loss_ema"] != summary["final_val_loss"]


def _tensors(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for k in sorted(state, key=str) for t in _tensors(state[k])]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _tensors(v)]
    return []


# --- refusals -------------------------------------------------------------------------------


def test_fp16_is_refused_for_optimizers_torch_has_not_fused():
    for name in ("muon", "schedule_free"):
        with pytest.raises(UserError, match=f"trainer.precision=fp16 with optim={name}"):
            check_precision(OptimConfig(name=name), "fp16")
    check_precision(OptimConfig(name="adamw"), "fp16")  # the fused AdamW
    check_precision(OptimConfig(name="muon"), "bf16")


@pytest.mark.parametrize("extra, text", [
    (MUON, "optim=muon is not supported for stacked runs"),  # named before its LR multipliers
    ({"optim.ema": 2}, "optim.ema is not supported for stacked runs"),
])
def test_the_stacked_launcher_refuses_what_it_cannot_vectorise(config, tmp_path, extra, text):
    with pytest.raises(UserError, match=text):
        train_stacked([config(**extra)], [tmp_path / "s"], quiet=True)


# --- weight decay: coupled (torch AdamW: lr_t x wd per step) or independent (s_t x wd) ----------


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
