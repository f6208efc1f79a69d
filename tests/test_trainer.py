import json
import math
import statistics

import pytest
import torch

from minigpt.errors import UserError
from minigpt.run.metrics import read_metrics
from minigpt.run.runtime import resolve_precision
from minigpt.run.trainer import Trainer, train


def final_params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


@pytest.mark.slow
def test_gradient_accumulation_matches_one_big_batch(make_config, tmp_path):
    """8 micro-batches of 1 and 1 of 8 (and 4 of 2) see the same windows and make the same updates."""
    results = {}
    for micro, accum in ((8, 1), (1, 8), (2, 4)):
        cfg = make_config(trainer__micro_batch_size=micro, trainer__grad_accum=accum, trainer__max_steps=3,
                          trainer__eval_interval=100)
        trainer = Trainer(cfg, tmp_path / f"{micro}x{accum}", quiet=True)
        result = trainer.run()
        records = [r for r in read_metrics(result.run_dir) if "train/loss" in r]
        results[(micro, accum)] = (final_params(trainer), [r["train/loss"] for r in records],
                                   [r["train/grad_norm"] for r in records])
    ref_params, ref_loss, ref_norm = results[(8, 1)]
    for key in ((1, 8), (2, 4)):
        params, loss, norm = results[key]
        # Adam is nearly scale-invariant, so the grad norms (below) are what would catch a sum-instead-of-mean bug.
        assert torch.allclose(params, ref_params, atol=1e-5, rtol=1e-5), key
        assert loss == pytest.approx(ref_loss, rel=1e-5) and norm == pytest.approx(ref_norm, rel=1e-4)
    # and the updates did something: the weights moved away from the initialisation
    assert results[(8, 1)][1][0] != pytest.approx(results[(8, 1)][1][-1], rel=1e-3)


def test_schedule_advances_once_per_optimizer_step_and_logs_the_lr_used(make_config, tmp_path):
    cfg = make_config(trainer__grad_accum=3, trainer__max_steps=10, scheduler={"name": "cosine_warmup", "warmup": 3,
                                                                            "min_lr_ratio": 0.1})
    trainer = Trainer(cfg, tmp_path, quiet=True)
    used = []
    original_step = trainer.optimizer.step

    def spy(*args, **kwargs):
        used.append([g["lr"] for g in trainer.optimizer.param_groups])
        return original_step(*args, **kwargs)

    trainer.optimizer.step = spy
    trainer.run()
    records = [r for r in read_metrics(tmp_path) if "train/loss" in r]
    assert len(used) == 10 and [r["step"] for r in records] == list(range(10))  # one record per update
    for r, lrs in zip(records, used):
        assert all(lr == r["train/lr"] for lr in lrs)  # every group used the logged LR
        assert r["train/lr"] == pytest.approx(cfg.optim.lr * trainer.plan.schedule(r["step"]), rel=1e-12)
    assert used[0][0] > 0  # the project's warmup never spends an update at LR 0
    assert len({lrs[0] for lrs in used}) > 5  # the LR really changed from step to step


def test_records_summary_and_final_evaluation(make_config, tmp_path):
    cfg = make_config(trainer__max_steps=9, trainer__eval_interval=4, trainer__schedule_plot=True)
    result = train(cfg, tmp_path, quiet=True)
    records = read_metrics(tmp_path)
    train_records = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train_records] == list(range(9))
    assert [r["step"] for r in records if "val/loss" in r] == [0, 4, 8, 9]  # start, every 4, end
    first = train_records[0]
    for key in ("train/lr", "train/loss", "train/loss_max", "train/grad_norm", "train/clipped", "train/tokens",
                "perf/tok_per_s", "spike/loss", "spike/loss_z", "spike/grad_norm", "train/spike"):
        assert key in first, key
    assert train_records[-1]["train/tokens"] == 9 * 4 * 32  # steps x micro-batch x context
    assert first["train/loss_max"] >= first["train/loss"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and result.status == "completed"
    assert summary["final_val_loss"] == records[-1]["val/loss"] == result.final_val_loss
    assert summary["final_val_loss"] < summary["initial_val_loss"]  # it learned something
    assert summary["unigram_entropy_val"] > 0 and summary["tokens"] == 9 * 128
    assert (tmp_path / "schedule.png").stat().st_size > 1000
    assert result.checkpoint is not None and result.checkpoint.exists()



def test_every_evaluation_records_its_standard_error_over_the_batches(make_config, tmp_path):
    """val/loss_stderr: the batches' standard deviation over sqrt(eval_iters), at every evaluation."""
    trainer = Trainer(make_config(trainer__max_steps=4, trainer__eval_interval=2, trainer__eval_iters=3), tmp_path,
                      quiet=True)
    result = trainer.run()
    evals = [r for r in read_metrics(tmp_path) if "val/loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 4] and all(r["val/loss_stderr"] > 0 for r in evals)
    losses = []  # the final weights on the three validation batches, computed here
    with torch.no_grad():
        trainer.model.eval()
        for i in range(3):
            x, y = trainer.val_batches.eval_batch(i)
            losses.append(trainer.model(x, y)[1].item())
    assert evals[-1]["val/loss"] == pytest.approx(statistics.mean(losses), abs=1e-6)
    assert evals[-1]["val/loss_stderr"] == pytest.approx(statistics.stdev(losses) / math.sqrt(3), rel=1e-4)
    assert result.summary["val_loss_stderr"] == evals[-1]["val/loss_stderr"]
    assert evals[0]["val/loss_stderr"] != evals[-1]["val/loss_stderr"]  # each evaluation its own

def test_run_length_in_tokens_and_epochs(make_config, tmp_path):
    by_tokens = Trainer(make_config(trainer__max_steps=None, trainer__max_tokens="1k"), tmp_path / "t", quiet=True)
    assert by_tokens.total_steps == math.ceil(1000 / 128)
    by_epochs = Trainer(make_config(trainer__max_steps=None, trainer__epochs=0.01), tmp_path / "e", quiet=True)
    assert by_epochs.total_steps == math.ceil(0.01 * by_epochs.data.meta["train_tokens"] / 128)


def test_bf16_autocast_runs_on_cpu(make_config, tmp_path):
    result = train(make_config(trainer__precision="bf16", trainer__max_steps=3), tmp_path, quiet=True)
    assert result.status == "completed" and math.isfinite(result.final_val_loss)
    assert not (tmp_path / "schedule.png").exists()  # trainer.schedule_plot=false, the tests' tiny default


def test_precision_and_device_errors():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given without a GPU")
def test_cuda_without_gpu_is_a_clear_error(make_config, tmp_path):
    with pytest.raises(UserError, match="no CUDA GPU"):
        Trainer(make_config(trainer__device="cuda"), tmp_path, quiet=True)
