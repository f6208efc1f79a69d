"""Speed plumbing: FLOPs and peaks for MFU, scripts/bench.py, no recompilation when the LR
changes, and (on a GPU) no host-device synchronisation in the step loop."""

import json
from pathlib import Path

import pytest
import torch
import torch._dynamo

from minigpt.run.metrics import MetricsLogger, read_metrics
from minigpt.run.perf import flops_per_token, peak_flops, peak_flops_for_name
from minigpt.run.stepper import ModelStepper
from minigpt.run.trainer import Trainer, advance

from helpers import ROOT, hydra_args, run_python


def test_flops_per_token_is_6n_plus_the_attention_term():
    # GPT-2 small as nanoGPT counts it: 124M parameters without position embeddings.
    n = 123_653_376
    assert flops_per_token(n, 12, 768, 1024) == 6 * n + 12 * 12 * 768 * 1024
    # The attention term grows with the context; the weight term does not.
    assert flops_per_token(n, 12, 768, 2048) - flops_per_token(n, 12, 768, 1024) == 12 * 12 * 768 * 1024


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA GH200 480GB", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA L40", None),  # not the L4's figure: unknown, so no MFU
    ("NVIDIA H200 NVL", None),
    ("Some Future GPU", None),
])
def test_peak_flops_by_gpu_name(name, peak):
    assert peak_flops_for_name(name) == peak


def test_no_peak_and_no_mfu_on_a_cpu():
    assert peak_flops(torch.device("cpu")) is None


# --- scripts/bench.py --------------------------------------------------------------------------


def tiny_hydra_overrides(cache_dir) -> str:
    return " ".join(a for a in hydra_args(cache_dir, "unused") if not a.startswith(("hydra.", "trainer.max_steps",
                                                                                     "trainer.progress")))


@pytest.mark.slow
def test_bench_runs_several_configs_and_writes_json(cache_dir, tmp_path):
    tiny = tiny_hydra_overrides(cache_dir)
    out = tmp_path / "bench.json"
    compiled = tiny + " trainer.compile=true trainer.compile_backend=eager"
    proc = run_python([ROOT / "scripts" / "bench.py", "-c", tiny, "-c", compiled, "--warmup", "2", "--steps", "3",
                       "--compare-logging", "--repeats", "1", "--out", out], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert len(results) == 2
    for r in results:
        for key in ("tokens_per_s", "ms_per_step", "mfu", "peak_memory_mb", "compile_s", "device", "command",
                    "logging_overhead_pct", "ms_per_step_logging_off", "record_host_ms_per_step"):
            assert key in r, key
        assert r["mfu"] is None and r["peak_flops"] is None  # a CPU: no made-up peak
        assert r["device"].startswith("cpu") and r["memory_kind"] == "cpu_peak_rss"
        assert r["tokens_per_step"] == 4 * 32
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / (r["ms_per_step"] / 1000), rel=1e-3)
        assert r["peak_memory_mb"] > 50  # a Python process with torch loaded
    assert results[0]["compile_s"] is None and results[1]["compile_s"] >= 0
    assert results[1]["compile_backend"] == "eager"
    table = proc.stdout
    assert "tokens/s" in table and "logging overhead %" in table and table.count("(RSS)") == 2


def test_bench_bad_override_is_one_line(tmp_path):
    proc = run_python([ROOT / "scripts" / "bench.py", "optim.lr=fast", "--out", tmp_path / "b.json"], timeout=300,
                      fork=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "optim.lr" in lines[0], proc.stderr
    assert not (tmp_path / "b.json").exists()


# --- no recompilation when the LR changes ------------------------------------------------------


def compiled_trainer(make_config, run_dir):
    torch._dynamo.reset()
    cfg = make_config(trainer__compile=True, trainer__compile_backend="eager", trainer__max_steps=8,
                      trainer__eval_interval=4, scheduler={"name": "cosine_warmup", "warmup": 3})
    return Trainer(cfg, run_dir, quiet=True)


def warm_up_then_run(trainer):
    """Compile the training and the evaluation graphs, then finish the run with any
    recompilation turned into an error."""
    trainer.evaluate()
    ModelStepper(trainer).train_step()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        result = trainer.run()
    return graphs, result


@pytest.mark.slow  # torch.compile (dynamo) traces the training and evaluation graphs: seconds
def test_changing_the_lr_every_step_does_not_recompile(make_config, tmp_path):
    trainer = compiled_trainer(make_config, tmp_path)
    before, result = warm_up_then_run(trainer)
    assert before >= 2  # something was compiled: the training and the evaluation forward
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before  # and nothing since
    lrs = [r["train/lr"] for r in read_metrics(tmp_path) if "train/lr" in r]
    assert result.status == "completed" and len(lrs) == 8 and len(set(lrs)) == 8  # a new LR at every step


class LrAsArgument(torch.nn.Module):
    """A design that would bake the LR into a graph: the compiled function receives it as a
    Python float (here it scales nothing, but it is an input of the compiled code)."""

    def __init__(self, model, optimizer):
        super().__init__()
        self.model, self.optimizer = model, optimizer
        self.compiled = torch.compile(self._forward, backend="eager")

    def _forward(self, x, y, lr):
        logits, loss = self.model(x, y)
        return logits, loss * (lr / lr)

    def forward(self, x, y):
        return self.compiled(x, y, self.optimizer.param_groups[0]["lr"])


@pytest.mark.slow  # torch.compile, as above
@pytest.mark.parametrize("design", ["lr_argument", "compiled_optimizer_step"])
def test_the_recompile_check_catches_an_lr_baked_into_a_graph(design, make_config, tmp_path):
    trainer = compiled_trainer(make_config, tmp_path)
    if design == "lr_argument":
        trainer.step_model = LrAsArgument(trainer.model, trainer.optimizer)
    else:  # the optimizer step compiled, with the LR a Python float in the param groups
        trainer.optimizer.step = torch.compile(trainer.optimizer.step, backend="eager")
    with pytest.raises(torch._dynamo.exc.RecompileError):
        warm_up_then_run(trainer)


# --- no host-device synchronisation in the CUDA step loop --------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_step_loop_never_waits_for_the_gpu(precision, make_config, tmp_path):
    cfg = make_config(trainer__device="cuda", trainer__precision=precision, trainer__max_steps=40,
                      trainer__flush_every=8)
    trainer = Trainer(cfg, Path(tmp_path), quiet=True)
    trainer.metrics = MetricsLogger(Path(tmp_path), cfg.logger, config=cfg.to_dict(),
                                    total_steps=trainer.total_steps, progress=False)
    stepper = ModelStepper(trainer)
    for _ in range(4):  # warm-up: allocator, kernels, pinned buffers
        advance(stepper)
    trainer.flush(wait=True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(24):
            advance(stepper)  # the step, and the asynchronous hand-off of records every 8 steps
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer.flush(wait=True)
    trainer.metrics.close()
    records = [r for r in read_metrics(tmp_path) if "train/loss" in r]
    assert [r["step"] for r in records] == list(range(28))  # every step still on record
    if precision == "fp16":
        assert all("train/scaler_skipped" in r for r in records)
