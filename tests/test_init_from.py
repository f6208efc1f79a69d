"""trainer.init_from (a new run from another run's weights) and trainer.eval_only (minigpt/run/init_from.py)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch

from helpers import nested, tiny_overrides
from minigpt.config import config_from_dict
from minigpt.errors import UserError
from minigpt.run.checkpoint import load_checkpoint
from minigpt.run.init_from import check_tokenizer, config_hash
from minigpt.run.metrics import read_metrics
from minigpt.run.trainer import Trainer, train


@pytest.fixture(scope="module")
def parent(cache_dir, tmp_path_factory):
    """A finished 6-step cosine run to start from: (its config, its result)."""
    cfg = config_from_dict(nested({**tiny_overrides(cache_dir), "trainer.max_steps": 6, "trainer.eval_interval": 100}))
    result = train(cfg, tmp_path_factory.mktemp("parent") / "run", quiet=True)
    assert result.status == "completed" and result.checkpoint.name == "step_0000006.pt"
    return cfg, result


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_the_weights_alone(parent, make_config, tmp_path):
    parent_cfg, a = parent
    # resume=auto in a folder without a checkpoint (a first Slurm attempt, say): init_from starts the run
    child = make_config(trainer__max_steps=4, trainer__init_from=str(a.run_dir), trainer__resume="auto",
                        scheduler={"name": "constant"}, optim__lr=1e-3)
    b = Trainer(child, tmp_path / "b", quiet=True)
    weights = load_checkpoint(a.checkpoint)["model"]
    assert all(torch.equal(v, weights[k]) for k, v in b.model.state_dict().items())
    assert b.step == 0 and b.optimizer.state == {}  # a fresh optimizer, from step 0
    result = b.run()
    s = result.summary
    # the parent's weights on the same validation windows: the parent's final loss is the child's first
    assert s["initial_val_loss"] == pytest.approx(a.final_val_loss, abs=1e-6)
    assert s["init_from"] == {"path": str(a.checkpoint.resolve()), "step": 6,
                              "config_hash": config_hash(parent_cfg.to_dict())}
    assert s["resumed_from"] is None and s["step"] == 4
    train_records = [r for r in read_metrics(tmp_path / "b") if "train/loss" in r]
    assert [r["step"] for r in train_records] == [0, 1, 2, 3]
    assert {r["train/lr"] for r in train_records} == {1e-3}  # this run's schedule, not the parent's cosine

    # The same command again with a longer run: the folder's own checkpoint wins over init_from,
    # and the continued run still says where its weights first came from.
    longer = make_config(trainer__max_steps=6, trainer__init_from=str(a.run_dir), trainer__resume="auto",
                         scheduler={"name": "constant"}, optim__lr=1e-3)
    c = Trainer(longer, tmp_path / "b", quiet=True)
    assert c.step == 4 and c.resumed_from == result.checkpoint
    own = load_checkpoint(result.checkpoint)["model"]
    assert all(torch.equal(v, own[k]) for k, v in c.model.state_dict().items())
    assert c.run().summary["init_from"] == s["init_from"]


def test_eval_only_evaluates_the_checkpoint_and_trains_nothing(parent, make_config, tmp_path):
    _, a = parent
    cfg = make_config(trainer__eval_only=True, trainer__init_from=str(a.checkpoint), trainer__eval_iters=3)
    trainer = Trainer(cfg, tmp_path / "eval", quiet=True)
    # the mean and standard error of the three validation batches, computed here
    losses = []
    with torch.no_grad():
        trainer.model.eval()
        for i in range(3):
            x, y = trainer.val_batches.eval_batch(i)
            losses.append(trainer.model(x, y)[1].item())
    weights_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.run()
    s = result.summary
    assert s["task"] == "eval_only" and s["status"] == "completed" and s["step"] == 6
    assert s["final_val_loss"] == pytest.approx(statistics.mean(losses), abs=1e-6) == result.final_val_loss
    assert s["val_loss_stderr"] == pytest.approx(statistics.stdev(losses) / math.sqrt(3), rel=1e-4)
    assert s["val_loss_stderr"] > 0
    assert s["eval_iters"] == 3 and s["eval_tokens"] == 3 * 4 * 32 and s["tokens"] == 0
    assert s["init_from"]["path"] == str(a.checkpoint.resolve())
    assert read_metrics(tmp_path / "eval") == [{"step": 6, "val/loss": s["final_val_loss"],
                                                "val/loss_stderr": s["val_loss_stderr"]}]
    assert not (tmp_path / "eval" / "checkpoints").exists()
    assert all(torch.equal(v, weights_before[k]) for k, v in trainer.model.state_dict().items())
    assert a.final_val_loss == pytest.approx(
        Trainer(make_config(trainer__eval_only=True, trainer__init_from=str(a.run_dir)), tmp_path / "eval2",
                quiet=True).run().final_val_loss, abs=1e-6)  # the run folder: its newest checkpoint, same windows


def test_every_seed_reads_the_same_validation_windows_unless_eval_seed_is_null(parent, make_config, tmp_path):
    _, a = parent

    def val_loss(name, **overrides):
        cfg = make_config(trainer__eval_only=True, trainer__init_from=str(a.checkpoint), trainer__eval_iters=2, **overrides)
        return Trainer(cfg, tmp_path / name, quiet=True).run().final_val_loss

    # One set of weights: its loss is a property of the windows alone.
    common = {seed: val_loss(f"s{seed}", seed=seed) for seed in (1, 2, 1337)}
    assert common[1] == common[2] == common[1337]
    own = {seed: val_loss(f"own{seed}", seed=seed, trainer__eval_seed=None) for seed in (1, 2, 1337)}
    assert own[1] != own[2] and abs(own[1] - own[2]) > 1e-4  # null: each seed draws its own windows
    # the default eval_seed is the default seed, so the default run reads the windows it always read
    assert own[1337] == common[1337]
    assert val_loss("s7", seed=1, trainer__eval_seed=7) == val_loss("s7b", seed=2, trainer__eval_seed=7) != common[1]


@pytest.mark.parametrize("overrides, says", [
    ({"trainer.init_from": "x.pt", "trainer.resume": "y.pt"}, "both name weights to start from"),
    ({"trainer.eval_only": True}, "trainer.eval_only=true evaluates the checkpoint that trainer.init_from names"),
    ({"trainer.eval_only": True, "trainer.init_from": "x.pt", "trainer.resume": "auto"}, "nothing to resume"),
    ({"trainer.eval_only": True, "trainer.init_from": "x.pt", "task": "lr_range_test"}, "task=lr_range_test trains"),
])
def test_combinations_that_make_no_sense_are_refused(overrides, says, cache_dir):
    with pytest.raises(UserError, match=says) as e:
        config_from_dict(nested({**tiny_overrides(cache_dir), **overrides}))
    assert "\n" not in str(e.value)


def test_another_tokenizer_is_refused(parent, make_config, tmp_path):
    state = {"tokenizer": '{"kind": "byte"}'}
    with pytest.raises(UserError, match="another tokenizer.*data.tokenizer=byte"):
        check_tokenizer(state, Path("a.pt"), '{"version": "1.0", "model": {}}')
    check_tokenizer(state, Path("a.pt"), '{"kind": "byte"}')  # the byte tokenizer of any corpus: accepted



@pytest.mark.slow
def test_init_from_in_stacked_runs(parent, make_config, tmp_path):
    """Stacked runs are built as Trainers, so each starts from the checkpoint's weights."""
    from minigpt.run.stack import train_stacked

    _, a = parent
    configs = [make_config(trainer__max_steps=2, trainer__init_from=str(a.checkpoint), scheduler={"name": name})
               for name in ("constant", "cosine_warmup")]
    for result in train_stacked(configs, [tmp_path / "s0", tmp_path / "s1"], quiet=True):
        assert result.summary["initial_val_loss"] == pytest.approx(a.final_val_loss, abs=1e-5)
        assert result.summary["init_from"]["step"] == 6


@pytest.mark.slow
def test_init_from_in_the_lr_range_test(parent, make_config, tmp_path):
    import json

    from minigpt.studies.lr_range_test import run_lr_range_test

    _, a = parent
    cfg = make_config(task="lr_range_test", scheduler={"name": "lr_range_test"}, trainer__max_steps=3,
                      trainer__init_from=str(a.checkpoint))
    run_lr_range_test(cfg, tmp_path / "range", quiet=True)
    summary = json.loads((tmp_path / "range" / "summary.json").read_text())
    assert summary["initial_val_loss"] == pytest.approx(a.final_val_loss, abs=1e-6)
