"""Spike and divergence detection (minigpt/run/monitor.py) on synthetic series, and the per-step
records of real (tiny) runs: divergence, gradient accumulation, skipping, the fp16 scaler and
the optional metrics."""

import copy
import io
import json
import math

import numpy as np
import pytest
import torch

from minigpt.config import MonitorConfig
from minigpt.run.metrics import read_metrics
from minigpt.run.monitor import Monitor, RollingZ
from minigpt.run.trainer import Trainer, train

from helpers import ROOT, hydra_args, run_train

# --- the rolling z-score ---------------------------------------------------------------------


def alternating(n, start=1.0):
    """+1, -1, +1, ...: any even-length window of it has mean 0 and standard deviation 1 exactly."""
    return [start if i % 2 == 0 else -start for i in range(n)]


def test_z_is_scored_against_the_previous_values_only():
    z = RollingZ(window=128, min_values=16)
    for x in alternating(128):
        z.push(x)
    # Against the previous 128 values (mean 0, std 1) a 7 is exactly 7 standard deviations out.
    # Counting the 7 in its own window would give (7 - 7/129) / 1.17 = 5.93, under k = 6.
    assert z.score(7.0) == pytest.approx(7.0, abs=1e-12)
    assert z.score(-3.0) == pytest.approx(-3.0, abs=1e-12)  # scoring does not change the window
    assert len(z.values) == 128


def test_window_holds_exactly_the_last_w_values():
    z = RollingZ(window=128, min_values=16)
    series = [1000.0] + alternating(128)  # the 1000 is 129 values back: it must be forgotten
    for x in series:
        z.push(x)
    assert z.score(7.0) == pytest.approx(7.0, abs=1e-12)
    z2 = RollingZ(window=128, min_values=16)
    for x in [1000.0] + alternating(127):  # now it is 128 back: still inside
        z2.push(x)
    prev = np.array([1000.0] + alternating(127))
    assert z2.score(7.0) == pytest.approx((7.0 - prev.mean()) / prev.std(), rel=1e-12)


def test_scoring_starts_once_the_window_holds_min_values():
    z = RollingZ(window=128, min_values=16)
    for i, x in enumerate(alternating(16)):
        assert z.score(100.0) is None, i  # too few values to judge
        z.push(x)
    assert z.score(100.0) == pytest.approx(100.0)
    assert z.score(math.nan) is None and z.score(math.inf) is None
    z.push(math.nan)  # non-finite values never enter the window
    assert len(z.values) == 16


def gaussian_loss_curve(n, seed):
    """A loss-like series: exponential decay with Gaussian noise (sigma 0.05)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 2.0 + 4.0 * np.exp(-t / 3000) + 0.05 * rng.standard_normal(n)


def observe_series(monitor, losses, grad_norms=None):
    records = []
    for step, loss in enumerate(losses):
        record = {"step": step, "train/loss": float(loss)}
        if grad_norms is not None:
            record["train/grad_norm"] = float(grad_norms[step])
        records.append({**record, **monitor.observe(record)})  # observe returns its fields
    return records


def test_defaults_are_the_documented_ones():
    cfg = MonitorConfig()
    assert (cfg.spike_k, cfg.spike_window) == (6.0, 128)
    assert (cfg.spike_score_k, cfg.spike_score_window) == (7.0, 1000)  # OLMo 2's spike score


@pytest.mark.slow
def test_injected_loss_spikes_are_flagged_and_noise_is_not():
    losses = gaussian_loss_curve(10_000, seed=0)
    injected = [1000, 2500, 4000, 7777, 9999]
    for s in injected:
        losses[s] += 1.0  # about 20 sigma of the noise
    dips = [3000, 6000]
    for s in dips:
        losses[s] -= 1.0  # a sudden drop is not a spike: the detector is one-sided
    monitor = Monitor(MonitorConfig(), total_steps=10_000)
    records = observe_series(monitor, losses)
    flagged = [r["step"] for r in records if r["spike/loss"]]
    assert flagged == injected  # every injected spike, and not one of the 10k noisy steps
    assert all(records[s]["spike/loss_z"] > 10 for s in injected)
    assert all(records[s]["spike/loss_z"] < -10 for s in dips)
    assert [r["step"] for r in records if r["train/spike"]] == injected
    assert monitor.summary()["spikes/loss"] == len(injected)
    # the first spike_min_values steps have no z-score yet
    assert records[15]["spike/loss_z"] is None and records[16]["spike/loss_z"] is not None


def test_gradient_norm_spikes_are_flagged_separately():
    rng = np.random.default_rng(1)
    losses = gaussian_loss_curve(3000, seed=2)
    norms = np.abs(0.5 + 0.02 * rng.standard_normal(3000))
    for s in (500, 1800):
        norms[s] = 5.0
    monitor = Monitor(MonitorConfig(), total_steps=3000)
    records = observe_series(monitor, losses, norms)
    assert [r["step"] for r in records if r["spike/grad_norm"]] == [500, 1800]
    assert not any(r["spike/loss"] for r in records)
    assert [r["step"] for r in records if r["train/spike"]] == [500, 1800]  # any series' spike
    summary = monitor.summary()
    assert summary["spikes/grad_norm"] == 2 and summary["spikes/loss"] == 0


def test_olmo2_spike_score_is_two_sided_at_its_own_threshold():
    """Alternating +-1 keeps every clean window at mean 0, std 1, so z-scores are exact."""
    cfg = MonitorConfig(spike_k=6.0, spike_window=32, spike_min_values=32, spike_score_window=32,
                        spike_score_k=7.0)
    losses = alternating(2000)
    injected = {100: 6.5, 200: -6.5, 300: 8.0, 400: -8.0, 500: 8.0, 600: 6.5}  # spaced > window
    for s, v in injected.items():
        losses[s] = v
    monitor = Monitor(cfg, total_steps=2000)
    records = observe_series(monitor, losses)
    # k = 6, one-sided: +6.5 and +8 are spikes.
    assert [r["step"] for r in records if r["spike/loss"]] == [100, 300, 500, 600]
    # Spike score: |z| >= 7, both signs: +8 and -8 count, +-6.5 do not.
    hits, scored = 3, 2000 - 32
    assert monitor.summary()["spike_score/loss"] == pytest.approx(round(100 * hits / scored, 4))


def test_monitor_state_round_trip_flags_what_an_uninterrupted_run_flags():
    losses = gaussian_loss_curve(1200, seed=3)
    norms = np.abs(1.0 + 0.05 * np.random.default_rng(4).standard_normal(1200))
    for s in (300, 605, 611, 1100):  # 605 and 611: right after the restore point
        losses[s] += 1.0
    norms[607] = 10.0
    cfg = MonitorConfig(spike_score_window=200, patience=3000)
    whole = Monitor(cfg, total_steps=1200, unigram_entropy=1.0)
    expected = observe_series(whole, losses, norms)

    first = Monitor(cfg, total_steps=1200, unigram_entropy=1.0)
    observe_series(first, losses[:600], norms[:600])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # as the checkpoint stores it
    buffer.seek(0)
    resumed = Monitor(cfg, total_steps=1200, unigram_entropy=1.0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    rest = [{**r, **resumed.observe(r)} for r in ({"step": s, "train/loss": float(losses[s]),
                                                   "train/grad_norm": float(norms[s])} for s in range(600, 1200))]
    assert rest == expected[600:]  # same flags and z-scores, step by step
    assert [r["step"] for r in rest if r["train/spike"]] == [605, 607, 611, 1100]
    assert resumed.summary() == whole.summary()


# --- divergence --------------------------------------------------------------------------------


def test_non_finite_loss_diverges_at_its_step():
    monitor = Monitor(MonitorConfig(), total_steps=100)
    observe_series(monitor, [5.0, 4.9, 4.8])
    assert not monitor.verdict.diverged
    monitor.observe({"step": 3, "train/loss": math.nan, "train/grad_norm": 1.0})
    assert monitor.verdict.diverged and monitor.verdict.step == 3 and "non-finite" in monitor.verdict.reason
    monitor.observe({"step": 4, "train/loss": 4.0})
    assert monitor.verdict.step == 3  # the first divergence is the one reported


def test_loss_above_the_initial_loss_for_patience_steps():
    cfg = MonitorConfig(patience=5, stuck_after=0.0)
    monitor = Monitor(cfg, total_steps=100)
    # initial 5.0; four steps above it, one below (the count restarts), then five above
    observe_series(monitor, [5.0, 6, 7, 8, 9, 4.0, 6, 7, 8, 9])
    assert not monitor.verdict.diverged
    monitor.observe({"step": 10, "train/loss": 9.5})
    assert monitor.verdict.diverged and monitor.verdict.step == 10
    assert "above 5 for 5 consecutive steps" in monitor.verdict.reason
    explicit = Monitor(MonitorConfig(patience=2, loss_limit=3.0, stuck_after=0.0), total_steps=100)
    observe_series(explicit, [2.0, 2.5, 3.5, 2.0, 3.5, 3.5])  # limit 3.0, not the initial 2.0
    assert explicit.verdict.step == 5


def stuck_step(losses, cfg, entropy, total_steps):
    """Where the stuck rule fires, worked out directly: the 20-step mean at or above the unigram
    level minus the margin, fallen less than stuck_min_drop since stuck_window steps earlier."""
    mean = {s: float(np.mean(losses[s - 19:s + 1])) for s in range(19, len(losses))}
    for s in range(19 + cfg.stuck_window, len(losses)):
        if (s >= cfg.stuck_after * total_steps and mean[s] >= entropy - cfg.stuck_margin
                and mean[s - cfg.stuck_window] - mean[s] < cfg.stuck_min_drop):
            return s
    return None


def test_stuck_means_no_progress_at_the_unigram_level_not_an_early_high_loss():
    cfg = MonitorConfig(stuck_after=0.1, stuck_margin=0.1, stuck_window=50, stuck_min_drop=0.05, patience=1000)
    entropy = 4.0
    # A healthy run, early: far above the unigram level at half of its 60 steps but falling
    # (the rule of "still above the unigram level at half the run" called it stuck).
    healthy = Monitor(cfg, total_steps=60, unigram_entropy=entropy)
    observe_series(healthy, [6.0 - 0.03 * t for t in range(60)])
    assert not healthy.verdict.diverged
    # Slow but steady progress above the unigram level over a long run: not stuck either.
    slow = Monitor(cfg, total_steps=400, unigram_entropy=entropy)
    observe_series(slow, [6.0 - 0.0015 * t for t in range(400)])  # 0.075 nats per 50 steps
    assert not slow.verdict.diverged
    # Stuck: down to 4.5 by step 20, then on a noisy plateau.
    rng = np.random.default_rng(0)
    losses = [6.0 - 0.075 * t for t in range(20)] + list(4.5 + 0.05 * rng.standard_normal(200))
    stuck = Monitor(cfg, total_steps=220, unigram_entropy=entropy)
    observe_series(stuck, losses)
    expected = stuck_step(losses, cfg, entropy, 220)
    assert expected is not None and 69 <= expected < 120
    assert stuck.verdict.diverged and stuck.verdict.step == expected and "stuck" in stuck.verdict.reason
    # Off: stuck_after=0 or stuck_window=0.
    for off_cfg in (MonitorConfig(stuck_after=0.0, patience=1000), MonitorConfig(stuck_window=0, patience=1000)):
        off = Monitor(off_cfg, total_steps=220, unigram_entropy=entropy)
        observe_series(off, losses)
        assert not off.verdict.diverged


def test_stuck_rule_state_survives_a_checkpoint():
    cfg = MonitorConfig(stuck_after=0.1, stuck_window=30, patience=1000)
    losses = [5.0 - 0.05 * t for t in range(20)] + [4.05] * 80
    whole = Monitor(cfg, total_steps=100, unigram_entropy=4.0)
    observe_series(whole, losses)
    first = Monitor(cfg, total_steps=100, unigram_entropy=4.0)
    observe_series(first, losses[:40])
    second = Monitor(cfg, total_steps=100, unigram_entropy=4.0)
    second.load_state_dict(first.state_dict())
    for step, loss in enumerate(losses[40:], start=40):
        second.observe({"step": step, "train/loss": loss})
    assert whole.verdict.diverged and second.verdict == whole.verdict


# --- real runs ---------------------------------------------------------------------------------


def train_records(run_dir):
    return [r for r in read_metrics(run_dir) if "train/loss" in r]


DIVERGING = {
    # An absurd LR: one update makes the weights ~1e30 and the next forward pass overflows.
    "nan": dict(optim__lr=1e30, optim__grad_clip=0.0, scheduler={"name": "constant"}, trainer__max_steps=20),
    # Adam at LR 1: the loss jumps far above its initial value and stays there.
    "above_limit": dict(optim__lr=1.0, optim__grad_clip=0.0, scheduler={"name": "constant"}, trainer__max_steps=20,
                        monitor__patience=5),
    # Adam at LR 1 settles around the unigram level instead of learning.
    # the loss-limit rule out of the way: its patience is a tenth of this 80-step run (8 steps)
    "stuck": dict(optim__lr=1.0, scheduler={"name": "constant"}, trainer__max_steps=80, monitor__stuck_after=0.1,
                  monitor__stuck_window=20, monitor__loss_limit=1e6),
}


def expected_divergence(kind, losses, cfg, entropy):
    """Where the rule says the run diverges, worked out from the recorded losses."""
    m = cfg.monitor
    for s, loss in enumerate(losses):
        if kind == "nan" and not math.isfinite(loss):
            return s
        if kind == "above_limit" and s + 1 >= m.patience and all(x > losses[0] for x in losses[s + 1 - m.patience:s + 1]):
            return s
    if kind == "stuck":
        return stuck_step(losses, m, entropy, cfg.trainer.max_steps)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(DIVERGING))
def test_a_diverging_run_stops_cleanly_with_the_step_and_reason(kind, make_config, tmp_path):
    cfg = make_config(trainer__eval_interval=1000, **DIVERGING[kind])
    result = train(cfg, tmp_path, quiet=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    losses = [r["train/loss"] for r in train_records(tmp_path)]
    step = expected_divergence(kind, losses, cfg, summary["unigram_entropy_val"])
    assert step is not None and step < cfg.trainer.max_steps - 1, losses  # it did diverge, before the end
    assert result.status == summary["status"] == "diverged"
    assert result.final_val_loss == math.inf and summary["final_val_loss"] is None
    assert summary["diverged_step"] == step
    assert len(losses) == step + 1 and summary["step"] == step + 1  # stopped right there (CPU: no lag)
    assert {"nan": "non-finite loss", "above_limit": "consecutive steps", "stuck": "stuck at the unigram level"}[kind] \
        in summary["reason"]
    assert f"step {step}" in summary["reason"]
    assert result.checkpoint is None  # a diverged run's weights are not worth resuming


@pytest.mark.slow
def test_a_short_healthy_run_of_the_default_model_is_not_declared_stuck(make_config, tmp_path):
    """`python train.py trainer.max_steps=60` was stopped at step 30 as stuck at the unigram level
    although its loss was falling: the default model, the default stuck settings."""
    cfg = make_config(model__n_layer=4, model__n_head=4, model__n_embd=128, model__block_size=128,
                      trainer__micro_batch_size=8, trainer__max_steps=60, trainer__eval_interval=1000,
                      monitor__stuck_after=MonitorConfig().stuck_after)
    result = train(cfg, tmp_path, quiet=True)
    losses = [r["train/loss"] for r in train_records(tmp_path)]
    entropy = result.summary["unigram_entropy_val"]
    # Half way, it is still above the unigram level (what the old rule called stuck) ...
    assert np.mean(losses[11:31]) >= entropy - cfg.monitor.stuck_margin
    # ... but falling, and it runs to the end.
    assert np.mean(losses[40:60]) < np.mean(losses[0:20]) - 0.3
    assert result.status == "completed" and len(losses) == 60 and result.summary["final_val_loss"] is not None


@pytest.mark.slow
def test_a_diverged_run_exits_3_alone_and_returns_inf_in_a_sweep(cache_dir, tmp_path):
    """Alone, a diverged run exits with status 3 (shell scripts, CI and Slurm see a failure); in
    a sweep it is recorded, the sweeper gets inf (caught by a Hydra callback) and the sweep goes on."""
    run_dir, probe = tmp_path / "run", tmp_path / "return_value.json"
    args = hydra_args(cache_dir, run_dir, **{"optim.lr": 1e30, "optim.grad_clip": 0, "scheduler": "constant"})
    proc = run_train(args)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "diverged at step 1: non-finite loss" in proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] == 1  # the status is unchanged

    sweep_args = [a for a in args if not a.startswith("hydra.run.dir=")] + [
        "-m", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "+hydra.callbacks.probe._target_=hydra_return_probe.ReturnProbe", f"+hydra.callbacks.probe.path={probe}"]
    proc = run_train(sweep_args, env={"PYTHONPATH": str(ROOT / "tests")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(probe.read_text()) == {"return_value": "inf"}  # the second job ran too, and returned inf
    jobs = sorted((tmp_path / "sweep").glob("*_seed=*"))
    assert [json.loads((j / "summary.json").read_text())["status"] for j in jobs] == ["diverged", "diverged"]


# --- per-step records of real runs ---------------------------------------------------------------


class LossSpy:
    """Stands in for the trainer's step model and keeps every micro-batch loss."""

    def __init__(self, model):
        self.model, self.losses = model, []

    def __call__(self, x, y):
        logits, loss = self.model(x, y)
        self.losses.append(loss.item())
        return logits, loss


def test_every_step_has_a_record_with_gradient_accumulation(make_config, tmp_path):
    cfg = make_config(trainer__grad_accum=3, trainer__max_steps=7, trainer__eval_interval=3)
    trainer = Trainer(cfg, tmp_path, quiet=True)
    spy = trainer.step_model = LossSpy(trainer.step_model)
    trainer.run()
    records = train_records(tmp_path)
    assert [r["step"] for r in records] == list(range(7))
    micro = np.array(spy.losses).reshape(7, 3)  # 3 forward passes per optimizer step
    assert [r["train/loss"] for r in records] == pytest.approx(micro.mean(axis=1).tolist(), rel=1e-6)
    assert [r["train/loss_max"] for r in records] == pytest.approx(micro.max(axis=1).tolist(), rel=1e-6)
    assert len(set(micro[0])) == 3  # the micro-batches differ, so mean and max are not the same thing
    assert [r["train/tokens"] for r in records] == [(s + 1) * 3 * 4 * 32 for s in range(7)]
    assert [r["step"] for r in records if "val/loss" in r] == [0, 3, 6]
    for r in records:
        assert r["train/grad_norm"] > 0 and r["perf/tok_per_s"] > 0 and r["perf/step_ms"] > 0
        assert r["train/clipped"] == (r["train/grad_norm"] > cfg.optim.grad_clip)
        assert "perf/mfu" not in r  # no known peak on a CPU: no made-up MFU
        for key in ("train/update_ratio", "train/max_attn_logit", "train/logz", "train/skipped",
                    "train/scaler_skipped"):
            assert key not in r  # off by default


def spy_optimizer_steps(trainer):
    stepped = []
    original = trainer.optimizer.step

    def step(*args, **kwargs):
        stepped.append(trainer.step)
        return original(*args, **kwargs)

    trainer.optimizer.step = step
    return stepped


def test_spike_skipping_skips_the_update_and_counts_it(make_config, tmp_path):
    # A threshold of 0.5 standard deviations makes the mitigation fire on ordinary bumps of a
    # bumpy (constant, high LR) run.
    cfg = make_config(trainer__max_steps=14, trainer__eval_interval=1000, monitor__skip_spikes=True,
                      monitor__skip_k=0.5, monitor__spike_min_values=4, optim__lr=3e-2, scheduler={"name": "constant"})
    trainer = Trainer(cfg, tmp_path, quiet=True)
    stepped = spy_optimizer_steps(trainer)
    result = trainer.run()
    records = train_records(tmp_path)
    skipped = [r["step"] for r in records if r["train/skipped"]]
    assert 0 < len(skipped) < 10
    assert sorted(stepped + skipped) == list(range(14))  # a skipped step made no update
    for r in records:  # the decision is the spike rule at skip_k, on the same window as the record's z
        over = [z is not None and z > 0.5 for z in (r["spike/loss_z"], r["spike/grad_norm_z"])]
        assert r["train/skipped"] == any(over), r
    assert result.summary["skipped_steps"] == len(skipped)
    assert json.loads((tmp_path / "summary.json").read_text())["skipped_steps"] == len(skipped)


def test_steps_skipped_by_the_fp16_gradient_scaler_are_logged(make_config, tmp_path):
    """fp16 needs CUDA; the scaler's bookkeeping is the same on the CPU, so a CPU GradScaler
    stands in, and an infinite gradient at step 5 makes it skip that update."""
    trainer = Trainer(make_config(trainer__max_steps=8, trainer__eval_interval=1000), tmp_path, quiet=True)
    trainer.scaler = torch.amp.GradScaler("cpu")
    trainer.records.fields.append("scaler_skipped")  # what __init__ does when it builds a scaler
    weight = trainer.model.transformer.wte.weight
    weight.register_hook(lambda g: g * math.inf if trainer.step == 5 else g)
    stepped = spy_optimizer_steps(trainer)
    result = trainer.run()
    records = train_records(tmp_path)
    assert [r["train/scaler_skipped"] for r in records] == [s == 5 for s in range(8)]
    assert stepped == [0, 1, 2, 3, 4, 6, 7]
    assert not math.isfinite(records[5]["train/grad_norm"]) and records[5]["spike/grad_norm"] is False
    assert result.status == "completed" and result.summary["scaler_skipped_steps"] == 1


def direct_attention_and_logz(model, x):
    """The largest causal attention logit and the mean log Z, worked out step by step."""
    T = x.size(1)
    with torch.no_grad():
        h = model.transformer.wte(x) + model.transformer.wpe(torch.arange(T))
        largest = -math.inf
        for block in model.transformer.h:
            attn = block.attn
            q, k, _ = attn.c_attn(block.ln_1(h)).split(h.size(-1), dim=2)
            q = q.view(*x.shape, attn.n_head, attn.head_size)
            k = k.view(*x.shape, attn.n_head, attn.head_size)
            logits = torch.einsum("bthd,bshd->bhts", q, k) / attn.head_size**0.5
            allowed = torch.ones(T, T).tril().bool()  # query t sees keys s <= t
            largest = max(largest, logits[..., allowed].max().item())
            h = block(h)
        out = model.lm_head(model.transformer.ln_f(h)).float()
        return largest, torch.logsumexp(out, dim=-1).mean().item()


def test_optional_metrics_appear_when_enabled_with_the_right_values(make_config, tmp_path):
    cfg = make_config(trainer__max_steps=3, trainer__grad_accum=2, trainer__eval_interval=1000,
                      monitor__update_ratio=True, monitor__max_attn_logit=True, monitor__logz=True)
    trainer = Trainer(cfg, tmp_path, quiet=True)
    seen = []  # per forward pass: a copy of the model as it was, and the inputs
    model = trainer.step_model

    def step_model(x, y):
        seen.append((copy.deepcopy(trainer.model), x))
        return model(x, y)

    trainer.step_model = step_model
    weights = []  # parameters around each optimizer step
    original = trainer.optimizer.step

    def optimizer_step(*args, **kwargs):
        before = [p.detach().clone() for p in trainer.model.parameters()]
        out = original(*args, **kwargs)
        weights.append((before, [p.detach().clone() for p in trainer.model.parameters()]))
        return out

    trainer.optimizer.step = optimizer_step
    trainer.run()
    records = train_records(tmp_path)
    assert len(records) == 3
    for r, (before, after) in zip(records, weights):
        delta = torch.cat([(a - b).flatten() for a, b in zip(after, before)]).norm()
        assert r["train/update_ratio"] == pytest.approx((delta / torch.cat([a.flatten() for a in after]).norm()).item(),
                                                        rel=1e-4)
        assert 0 < r["train/update_ratio"] < 0.1
    for step, r in enumerate(records):
        snapshot, x = seen[2 * step + 1]  # the step's last micro-batch
        largest, logz = direct_attention_and_logz(snapshot, x)
        assert r["train/max_attn_logit"] == pytest.approx(largest, rel=1e-5)
        assert r["train/logz"] == pytest.approx(logz, rel=1e-5)
    # log Z of an untrained model is close to log V (near-uniform softmax)
    assert records[0]["train/logz"] == pytest.approx(math.log(trainer.model_config.padded_vocab_size), abs=0.1)


def test_only_the_enabled_optional_metric_is_recorded(make_config, tmp_path):
    train(make_config(trainer__max_steps=2, trainer__eval_interval=1000, monitor__logz=True), tmp_path, quiet=True)
    keys = set().union(*train_records(tmp_path))
    assert "train/logz" in keys and not keys & {"train/update_ratio", "train/max_attn_logit"}
