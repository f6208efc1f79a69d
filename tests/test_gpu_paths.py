"""The CUDA paths of the trainer, exercised on the CPU: what a first GPU would run.

bf16 autocast (stacked and not), torch.compile with aot_eager (the autograd tracing inductor
uses, without a C compiler) and one inductor compile, fused AdamW under a gradient scaler (CUDA's
fp16 path; the CPU scaler has the same bookkeeping), records that land a flush later (a
stand-in for CUDA events), the precision choice per compute capability, per-device RNG state,
the sync-debug refusals, TF32 off in the sharpness measurement and the logits' lifetime.
(The host-sync detector: tests/test_host_sync.py; DDP: tests/test_ddp.py.)
"""

from __future__ import annotations

import gc
import logging
import math
import weakref

import pytest
import torch

from minigpt.errors import UserError
from minigpt.run import runtime
from minigpt.run.metrics import read_metrics
from minigpt.run.records import PendingStep, RecordSchema, StepRecords
from minigpt.run.runtime import check_sync_debug, own_rng_state, resolve_precision, rng_state, set_rng_state
from minigpt.run.stack import StackedStepper, train_stacked
from minigpt.run.stepper import ModelStepper
from minigpt.run.trainer import Trainer, train


def train_records(run_dir):
    return [r for r in read_metrics(run_dir) if "train/loss" in r]


# --- bf16: stacked runs against the same runs alone ---------------------------------------------

ARCHS = {"pre_ln": {}, "post_ln": {"model__norm_position": "post"}, "pre_ln_qk": {"model__qk_layernorm": True}}
# bf16 keeps about 3 significant digits per operation; the stacked runs batch the same operations
# (vmap), so their sums run in another order. Measured on the CPU: at most 1.1e-4 nats apart over
# 8 steps; allowed: 2e-3 (a wrong LR, weight or dtype path moves the loss by 1e-2 and more).
BF16_TOL = 2e-3


@pytest.mark.slow  # three runs per architecture
@pytest.mark.parametrize("arch", list(ARCHS))
def test_stacked_runs_in_bf16_match_the_same_runs_alone(arch, make_config, tmp_path):
    configs = [make_config(trainer__precision="bf16", trainer__max_steps=5, trainer__eval_interval=5, model__n_layer=1,
                           seed=s, **ARCHS[arch]) for s in (1, 2)]
    stacked = train_stacked(configs, [tmp_path / f"stacked{c.seed}" for c in configs], quiet=True)
    for cfg, s in zip(configs, stacked):
        alone = train(cfg, tmp_path / f"alone{cfg.seed}", quiet=True)
        assert s.status == alone.status == "completed"
        a, b = train_records(alone.run_dir), train_records(s.run_dir)
        assert len(a) == len(b) == 5
        assert [r["train/loss"] for r in b] == pytest.approx([r["train/loss"] for r in a], abs=BF16_TOL)
        assert s.final_val_loss == pytest.approx(alone.final_val_loss, abs=BF16_TOL)


@pytest.mark.slow
def test_a_stacked_bf16_step_with_qk_layernorm_runs(make_config, tmp_path):
    """Bug 1: inside vmap autocast did not cast SDPA's inputs and the LayerNorm'd queries and
    keys stayed float32 next to bf16 values: RuntimeError at the first step."""
    configs = [make_config(trainer__precision="bf16", model__qk_layernorm=True, model__n_layer=1, seed=s) for s in (1, 2)]
    stepper = StackedStepper(configs, [tmp_path / "a", tmp_path / "b"], quiet=True)
    stepper.train_step()
    losses = [r.records.flush(wait=True)[0]["train/loss"] for r in stepper.runs]
    assert all(math.isfinite(v) and 5 < v < 8 for v in losses)  # about ln(512) = 6.2 at the start
    for r in stepper.all:
        r.close()


# --- torch.compile ----------------------------------------------------------------------------


def compile_and_run(trainer, steps: int):
    """Warm up (the training graph, the evaluation graph), then `steps` updates with any recompile an error."""
    trainer.evaluate()
    stepper = ModelStepper(trainer)
    stepper.train_step()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(steps):
            stepper.train_step()
        trainer.evaluate()
    return graphs, trainer.records.flush(wait=True)


@pytest.mark.slow  # aot_eager traces forward and backward: seconds
def test_aot_eager_in_bf16_with_every_model_option_compiles_once(make_config, tmp_path):
    torch._dynamo.reset()
    cfg = make_config(trainer__compile=True, trainer__compile_backend="aot_eager", trainer__precision="bf16",
                      model__z_loss=1e-4, model__qk_layernorm=True, monitor__logz=True, monitor__max_attn_logit=True,
                      model__n_layer=1, scheduler={"name": "cosine_warmup", "warmup": 2})
    trainer = Trainer(cfg, tmp_path, quiet=True)
    before, records = compile_and_run(trainer, steps=4)
    assert before >= 2 and torch._dynamo.utils.counters["stats"]["unique_graphs"] == before
    assert len(records) == 5 and len({r["train/lr"] for r in records}) == 5  # a new LR every step, no recompile
    for r in records:
        assert all(math.isfinite(r[k]) for k in ("train/loss", "train/z_loss", "train/logz", "train/max_attn_logit"))
    trainer.close()


@pytest.mark.slow  # inductor generates and builds C++: seconds warm, a minute cold
def test_inductor_compiles_the_model(make_config, tmp_path):
    """What the GPU suite's preflight asks first: inductor can build its kernels here. The
    evaluation forward (one graph, no backward) keeps it to one compile."""
    torch._dynamo.reset()
    cfg = make_config(trainer__compile=True, trainer__compile_backend="inductor", model__n_layer=1, model__n_embd=16,
                      trainer__eval_iters=1)
    trainer = Trainer(cfg, tmp_path, quiet=True)
    eager = trainer.model
    with torch.no_grad():
        x, y = trainer.val_batches.eval_batch(0)
        compiled_loss = trainer.eval_model(x, y)[1]
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
        assert compiled_loss.item() == pytest.approx(eager(x, y)[1].item(), abs=1e-4)
    trainer.close()


# --- fp16's path: fused AdamW under a gradient scaler --------------------------------------------


def test_fused_adamw_under_the_scaler_skips_an_inf_step_and_rolls_its_count_back(make_config, tmp_path):
    """CUDA fp16 = GradScaler + fused AdamW (optim.fused=auto): the optimizer gets the scaler's
    inf flag, skips the update on the device and takes its step count back."""
    trainer = Trainer(make_config(optim__fused="on", trainer__max_steps=6), tmp_path, quiet=True)
    assert trainer.optimizer.defaults["fused"]
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    trainer.records.fields.append("scaler_skipped")
    trainer.model.transformer.wte.weight.register_hook(lambda g: g * math.inf if trainer.step == 3 else g)
    stepper = ModelStepper(trainer)
    counts, weights = [], []
    for _ in range(5):
        stepper.train_step()
        p = trainer.model.transformer.h[0].mlp.c_fc.weight
        counts.append(int(trainer.optimizer.state[p]["step"]))
        weights.append(p.detach().clone())
    records = trainer.records.flush(wait=True)
    assert [r["train/scaler_skipped"] for r in records] == [False, False, False, True, False]
    assert counts == [1, 2, 3, 3, 4]  # the skipped update gave its step back
    assert torch.equal(weights[3], weights[2]) and not torch.equal(weights[4], weights[3])
    assert trainer.scaler.get_scale() == 2.0 ** 9  # halved once, for the one inf
    trainer.close()


# --- delayed records: a divergence revealed at a checkpoint step ---------------------------------


@pytest.mark.slow  # 12 steps, two checkpoints and a resume: seconds
def test_a_divergence_revealed_at_a_checkpoint_leaves_no_checkpoint_and_resume_takes_the_last_good(
        make_config, tmp_path):
    """flush_every=8, checkpoints every 6 steps: the records of steps 8-11 land only at the
    checkpoint of step 12, and show the run diverged at step 9. No checkpoint of step 12 (the
    diverged weights); resume=auto takes step 6's."""
    cfg = make_config(trainer__flush_every=8, trainer__ckpt_interval=6, trainer__max_steps=20, trainer__eval_interval=100)
    trainer = Trainer(cfg, tmp_path, quiet=True)
    trainer.model.transformer.wte.weight.register_hook(lambda g: g * math.nan if trainer.step == 8 else g)
    result = trainer.run()
    assert result.status == "diverged" and result.summary["diverged_step"] == 9
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert saved == ["step_0000006.pt"]
    assert [r["step"] for r in train_records(tmp_path)] == list(range(12))  # every record up to the stop
    resumed = Trainer(make_config(trainer__flush_every=8, trainer__ckpt_interval=6, trainer__max_steps=20,
                                  trainer__eval_interval=100, trainer__resume="auto"), tmp_path, quiet=True)
    assert resumed.step == 6 and resumed.resumed_from.name == "step_0000006.pt"
    resumed.close()


# --- a stand-in for CUDA events: records that land later -----------------------------------------


class LateEvents:
    """StepRecords' CUDA side on the CPU: each copy lands at the second look (query() False,
    then True), and a step's timing events may be read only once a copy after them landed."""

    def __init__(self):
        self.timings: list = []
        self.reads_early = 0

    class Timing:
        def __init__(self, owner):
            self.owner, self.landed = owner, False

        def record(self):
            pass

        def elapsed_time(self, end) -> float:
            if not (self.landed and end.landed):
                self.owner.reads_early += 1
            return 5.0  # ms

    class Copy:
        def __init__(self, covers):
            self.covers, self.queries = covers, 0

        def query(self) -> bool:
            self.queries += 1
            if self.queries >= 2:
                self.land()
            return self.queries >= 2

        def synchronize(self):
            self.land()

        def land(self):
            for t in self.covers:
                t.landed = True

    def timing(self):
        pair = (self.Timing(self), self.Timing(self))
        self.timings += pair
        return pair

    def to_host(self, values):
        return values.clone()

    def copy_done(self):
        covers, self.timings = self.timings, []
        return self.Copy(covers)


def test_records_wait_for_their_copy_and_wait_true_drains_all():
    schema = RecordSchema(["loss", "loss_max", "grad_norm"], block_size=8, grad_clip=1.0, beta1=0.9,
                          skip_spikes=False, flops_per_token=1.0, peak_flops=None)
    events = LateEvents()
    records = StepRecords(schema, torch.device("cpu"), events=events)

    def step(s):
        timing = records.timing()
        records.add(PendingStep(s, 1e-3, None, 8 * (s + 1), 1, False, None, timing), torch.tensor([5.0 - s, 6.0, 0.5]))

    for s in range(3):
        step(s)
    assert records.flush(wait=False) == []  # the copy is in flight: no row, no time read
    for s in range(3, 5):
        step(s)
    first = records.flush(wait=False)  # the first copy landed; the second is in flight
    assert [r["step"] for r in first] == [0, 1, 2] and [r["train/loss"] for r in first] == [5.0, 4.0, 3.0]
    assert first[0]["perf/step_ms"] == 5.0 and first[0]["perf/tok_per_s"] == 8 / 0.005
    step(5)
    rest = records.flush(wait=True)  # everything, in step order
    assert [r["step"] for r in rest] == [3, 4, 5]
    assert events.reads_early == 0 and records.inflight == [] and records.pending == []


# --- the precision a GPU gets ---------------------------------------------------------------------


@pytest.fixture
def fake_gpu(monkeypatch):
    def install(name: str, capability: tuple[int, int]):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what torch says, emulation included

    return install


@pytest.mark.parametrize("name, capability, auto", [("NVIDIA H100 80GB HBM3", (9, 0), "bf16"),
                                                    ("NVIDIA A100-SXM4-40GB", (8, 0), "bf16"),
                                                    ("Tesla V100-SXM2-16GB", (7, 0), "fp16"),
                                                    ("Tesla T4", (7, 5), "fp16")])
def test_precision_auto_takes_bf16_only_where_the_gpu_has_it(name, capability, auto, fake_gpu):
    fake_gpu(name, capability)
    said = []
    cuda = torch.device("cuda", 0)
    assert resolve_precision("auto", cuda, say=said.append) == auto
    assert resolve_precision("fp16", cuda, say=said.append) == "fp16"
    assert resolve_precision("fp32", cuda, say=said.append) == "fp32"
    if auto == "bf16":
        assert resolve_precision("bf16", cuda) == "bf16" and said == []
    else:
        assert said == [f"precision auto: {name} (compute capability {capability[0]}.{capability[1]}) has no native "
                        "bf16 (torch would emulate it); fp16 with loss scaling instead"]
        with pytest.raises(UserError) as e:
            resolve_precision("bf16", cuda)
        assert "\n" not in str(e.value) and name in str(e.value) and "use trainer.precision=fp16" in str(e.value)


def test_the_fallback_is_logged(fake_gpu, caplog):
    fake_gpu("Tesla T4", (7, 5))
    with caplog.at_level(logging.INFO, logger="minigpt"):
        assert resolve_precision("auto", torch.device("cuda", 0)) == "fp16"
    assert "has no native bf16" in caplog.text


# --- RNG state: this rank's device only -----------------------------------------------------------


def test_rng_state_saves_and_restores_only_the_device_this_rank_uses(monkeypatch):
    got, put = [], []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": got.append(device) or torch.tensor([7]))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": put.append((int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU's state saved"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("every GPU's state restored"))
    gpu1 = torch.device("cuda", 1)
    state = rng_state(gpu1)
    assert got == [gpu1] and int(state["cuda"][0]) == 7
    set_rng_state(state, torch.device("cuda", 0))  # a resume on another (or a single) GPU
    assert put == [(7, torch.device("cuda", 0))]
    # an older checkpoint holds every visible GPU's: the one of this device's index is taken, or none
    old = dict(state, cuda=[torch.tensor([10]), torch.tensor([11])])
    set_rng_state(old, gpu1)
    set_rng_state(old, torch.device("cuda", 5))
    assert put[1:] == [(11, gpu1)]
    cpu = rng_state(torch.device("cpu"))
    assert "cuda" not in cpu


def test_each_rank_restores_its_own_rng_state():
    saved = {"rng": {"who": 0}, "rng_ranks": [{"who": 0}, {"who": 1}]}
    assert own_rng_state(saved, runtime.Distributed(1, 1, 2)) == {"who": 1}
    assert own_rng_state(saved, runtime.Distributed(3, 3, 4)) == {"who": 0}  # more ranks than the run had
    assert own_rng_state({"rng": {"who": 0}}, runtime.Distributed(1, 1, 2)) == {"who": 0}  # an older checkpoint


# --- trainer.sync_debug=error with options that sync on purpose ----------------------------------


@pytest.mark.parametrize("args, words", [
    (["monitor.skip_spikes=true"], "trainer.sync_debug=error with monitor.skip_spikes=true"),
    (["monitor.sharpness_every=10"], "trainer.sync_debug=error with monitor.sharpness_every=10"),
])
def test_sync_debug_error_with_a_syncing_option_is_refused_by_the_precheck(args, words, tmp_path):
    from minigpt.launch.precheck import precheck

    with pytest.raises(UserError) as e:
        precheck(["trainer.sync_debug=error", *args, f"hydra.run.dir={tmp_path}/run"])
    assert str(e.value).startswith(words) and "use trainer.sync_debug=warn" in str(e.value)
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()
    precheck(["trainer.sync_debug=warn", *args, f"hydra.run.dir={tmp_path}/run"])  # warn: allowed


def test_fp16_with_an_unfused_optimizer_is_refused_under_sync_debug_error(make_config):
    cfg = make_config(trainer__sync_debug="error", trainer__device="cuda", optim__fused="off")
    with pytest.raises(UserError, match="trainer.precision=fp16 with optim.fused=off: the gradient scaler reads"):
        check_sync_debug(cfg, "fp16")
    check_sync_debug(cfg, "bf16")  # no scaler: fine
    check_sync_debug(make_config(trainer__sync_debug="error", trainer__device="cuda"), "fp16")  # fused: fine


# --- the sharpness measurement in full fp32 -------------------------------------------------------


def test_the_sharpness_measurement_runs_with_tf32_off_and_puts_it_back(make_config, tmp_path):
    """The runtime turns TF32 on for CUDA training (as here); the measurement turns it off."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        trainer = Trainer(make_config(monitor__sharpness_every=2), tmp_path, quiet=True)
        seen = []
        trainer.model.register_forward_hook(
            lambda *_: seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)))
        ModelStepper(trainer).train_step()  # step 0 measures
        assert seen[0] == (True, True) and set(seen[1:]) == {(False, False)}  # training, then the measurement
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # as it was
        trainer.close()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_steps_between_measurements_reuse_one_nan_on_the_device(make_config, tmp_path, monkeypatch):
    trainer = Trainer(make_config(monitor__sharpness_every=3), tmp_path, quiet=True)
    stepper = ModelStepper(trainer)
    made = []
    original = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: (made.append(trainer.step) if "device" in k else None)
                        or original(*a, **k))
    for _ in range(4):
        stepper.train_step()
    monkeypatch.undo()
    assert set(made) == {0, 3}  # torch.tensor(..., device=) in the measuring steps only
    records = trainer.records.flush(wait=True)
    assert [("train/sharpness" in r) for r in records] == [True, False, False, True]
    trainer.close()


# --- the logits are gone before the backward ---------------------------------------------------------


def test_the_step_keeps_no_reference_to_the_logits_through_the_backward(make_config, tmp_path):
    trainer = Trainer(make_config(), tmp_path, quiet=True)
    refs, alive_in_backward = [], []
    trainer.model.lm_head.register_forward_hook(lambda m, i, out: refs.append(weakref.ref(out)))

    def during_backward(grad):
        gc.collect()
        alive_in_backward.append(refs[-1]() is not None)
        return grad

    trainer.model.transformer.wpe.weight.register_hook(during_backward)  # runs late in the backward
    ModelStepper(trainer).train_step()
    assert alive_in_backward == [False]
    trainer.close()
