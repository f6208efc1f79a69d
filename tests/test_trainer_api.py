"""A run's state behind a typed API (minigpt/run/trainer.py): nothing outside trainer.py reads a
Trainer attribute that is not part of it.

The check is dynamic: Trainer.__getattribute__ is wrapped so that every attribute read of a
Trainer from code outside trainer.py (the steppers, the stack, the LR range test, the launcher,
scripts/bench.py) is recorded with its file and line, through real runs that cover those
paths: a run with every per-step option on and its resume, a stack, an LR range test, an
evaluation of a checkpoint and the benchmark's loop. Every name read must be in the API: the
class's annotated attributes, its properties and public methods. (Branches that only a GPU or
torchrun reaches are not exercised here; they use the same names.)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from helpers import ROOT, tiny_overrides
from minigpt.run.trainer import Trainer

TRAINER_FILE = str(ROOT / "minigpt" / "run" / "trainer.py")
WATCHED = (str(ROOT / "minigpt"), str(ROOT / "scripts"))


def api() -> set[str]:
    names = set(Trainer.__annotations__)
    names |= {n for n, v in vars(Trainer).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))}
    return names


@pytest.fixture
def outside_reads(monkeypatch):
    """{name: 'file:line' of a first read} of Trainer attributes read outside trainer.py."""
    reads: dict[str, str] = {}

    def spy(self, name):
        frame = sys._getframe(1)
        file = frame.f_code.co_filename
        if file != TRAINER_FILE and file.startswith(WATCHED):
            reads.setdefault(name, f"{Path(file).relative_to(ROOT)}:{frame.f_lineno}")
        return object.__getattribute__(self, name)

    monkeypatch.setattr(Trainer, "__getattribute__", spy)
    return reads


def test_the_api_is_small_and_typed():
    names = api()
    # what checkpoints, summary.json and the steppers go through
    assert {"state_dict", "load_state_dict", "summary", "step_parts", "progress", "step"} <= names
    # the parts a stepper uses are not read off the Trainer
    assert not {"optimizer", "model", "scaler", "ema", "records", "monitor", "train_batches"} & names
    assert len(names) < 45


@pytest.mark.slow
def test_a_run_and_its_resume_read_only_the_api(make_config, tmp_path, outside_reads):
    from minigpt.run.trainer import train

    options = dict(optim__ema=3, monitor__sharpness_every=2, monitor__sharpness_iters=2, monitor__update_ratio=True,
                   monitor__max_attn_logit=True, monitor__logz=True, monitor__skip_spikes=True,
                   trainer__eval_interval=2, trainer__ckpt_interval=2)
    assert train(make_config(trainer__max_steps=3, **options), tmp_path / "a", quiet=True).status == "completed"
    again = train(make_config(trainer__max_steps=5, trainer__resume="auto", **options), tmp_path / "a", quiet=True)
    assert again.status == "completed" and again.summary["resumed_from"]
    assert outside_reads, "the spy saw nothing"
    assert {k: v for k, v in outside_reads.items() if k not in api()} == {}


@pytest.mark.slow
def test_an_evaluation_a_stack_a_range_test_and_the_benchmark_read_only_the_api(make_config, cache_dir, tmp_path,
                                                                                outside_reads):
    from minigpt.launch.compose import compose
    from minigpt.run.stack import train_stacked
    from minigpt.run.trainer import train
    from minigpt.studies.lr_range_test import run_lr_range_test

    assert train(make_config(trainer__max_steps=2), tmp_path / "a", quiet=True).status == "completed"
    evaluated = train(make_config(trainer__eval_only=True, trainer__init_from=str(tmp_path / "a")),
                      tmp_path / "e", quiet=True)
    assert evaluated.summary["task"] == "eval_only"

    results = train_stacked([make_config(trainer__max_steps=3, seed=s) for s in (1, 2)],
                            [tmp_path / "s1", tmp_path / "s2"], quiet=True)
    assert [r.status for r in results] == ["completed", "completed"]
    assert "stack" in {Path(v.split(":")[0]).stem for v in outside_reads.values()}

    overrides = {k: v for k, v in tiny_overrides(cache_dir).items() if k != "scheduler.name"}
    cfg = compose(["experiment=lr_range_test", *(f"{k}={v}" for k, v in overrides.items()), "trainer.max_steps=6"])
    assert len(run_lr_range_test(cfg, tmp_path / "lrrt", quiet=True).lrs) == 6

    spec = importlib.util.spec_from_file_location("bench_under_test", ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = bench.bench_one(make_config(trainer__max_steps=6).to_dict(), 1, 1, True, 1)
    assert row["ms_per_step"] > 0
    assert "bench" in {Path(v.split(":")[0]).stem for v in outside_reads.values()}
    assert {k: v for k, v in outside_reads.items() if k not in api()} == {}
