"""The LR of step t can be followed from the command line through the four Python files that
docs/code_layout.md names ("Following the LR of step t"), and nothing else computes or writes it.

1. From a command line (composed as the entry's @hydra.main composes it), every function of ours
   that runs while minigpt/launch/train.py types the config, the run plan is built and the LR of step t is
   written into an optimizer lies in those files (a profile hook sees every Python call).
2. In a real run, every LR that reaches the optimizer is written by `RunPlan.apply` (plan.py),
   with the value lr_at(step) x the group's multiplier: the trainer and its stepper only call it.
"""

from __future__ import annotations

import atexit
import inspect
import json
import re
import sys
from pathlib import Path

import torch

from helpers import ROOT
from minigpt.launch import cli
from minigpt.launch import jobs as launch_jobs
from minigpt.launch.compose import composed
from minigpt.plan import RunPlan
from minigpt.run.trainer import Trainer


def layout_files() -> list[str]:
    """The files docs/code_layout.md lists, in order, on the first line of its LR section."""
    text = (ROOT / "docs" / "code_layout.md").read_text()
    section = text.split("## Following the LR of step t", 1)[1].strip()
    return re.findall(r"`([\w/]+\.py)`", section.splitlines()[0])


def load_train_entry():
    """minigpt/launch/train.py: what `python train.py` and `minigpt train` run."""
    import minigpt.launch.train as module

    atexit.unregister(module._ignore_stop_signals)  # the entry's exit handler is for its own process
    return module


class Calls:
    """The files of ours (the package and train.py) whose Python code runs inside the block."""

    def __init__(self):
        self.files: set[str] = set()

    def __enter__(self):
        sys.setprofile(self.profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)

    def profile(self, frame, event, arg):
        if event == "call":
            path = Path(frame.f_code.co_filename)
            if path == ROOT / "train.py" or path.is_relative_to(ROOT / "minigpt"):
                self.files.add(path.relative_to(ROOT).as_posix())


def test_the_layout_names_at_most_four_files_from_the_entry_to_the_multiplier():
    files = layout_files()
    assert files == ["minigpt/launch/train.py", "minigpt/config.py", "minigpt/plan.py", "minigpt/schedules.py"]
    assert len(files) <= 4 and all((ROOT / f).is_file() for f in files)


def test_from_the_command_line_the_lr_of_step_t_is_computed_in_those_files(monkeypatch, tmp_path):
    argv = ["scheduler=cosine_warmup", "optim.lr=3e-3", "trainer.max_steps=100", f"hydra.run.dir={tmp_path}"]
    args = cli.read_command_line(argv)
    cfg = composed(args.overrides, cli.config_dirs(args), with_hydra=False)
    entry = load_train_entry()
    jobs = []
    monkeypatch.setattr(entry.HydraConfig, "get", staticmethod(lambda: "the job's HydraConfig"))
    monkeypatch.setattr(launch_jobs, "run_job", lambda config, hc, stacked: jobs.append(config))  # typed, not trained
    optimizer = torch.optim.AdamW([{"params": [torch.zeros(2, requires_grad=True)], "lr_mult": 1.0},
                                   {"params": [torch.zeros(1, requires_grad=True)], "lr_mult": 0.5}])
    with Calls() as calls:
        entry.hydra_app([])(cfg)  # Hydra's decorator hands a given config straight to the task
        plan = RunPlan.build(jobs[0], world_size=1)  # as the trainer builds it (trainer.max_steps: no data needed)
        lrs = {t: plan.apply(optimizer, t)[0] for t in (0, 19, 50, 99)}
    assert calls.files == set(layout_files()), calls.files
    # The values of the documented conventions: warmup of 20% = 20 steps, step 0 at 1/20 of the
    # peak, the peak at step 19, the floor (0.1 x peak) at the last step; the group's multiplier on top.
    assert abs(lrs[0] - 1.5e-4) < 1e-12 and abs(lrs[19] - 3e-3) < 1e-12 and abs(lrs[99] - 3e-4) < 1e-12
    assert 3e-4 < lrs[50] < 3e-3
    assert [g["lr"] for g in optimizer.param_groups] == [lrs[99], lrs[99] * 0.5]


def test_in_a_run_only_the_plan_writes_the_lr_into_the_optimizer(make_config, tmp_path):
    cfg = make_config(trainer__max_steps=6, trainer__eval_interval=100, optim__lr_multipliers__matrices=0.5,
                      optim__lr_multipliers__norms_biases=2.0)
    run = Trainer(cfg, tmp_path / "run", quiet=True, checkpoints=False)
    writes = []

    class Watched(dict):
        def __setitem__(self, key, value):
            if key == "lr":
                caller = inspect.currentframe().f_back.f_code
                writes.append((Path(caller.co_filename).relative_to(ROOT).as_posix(), caller.co_name, self["name"], value))
            super().__setitem__(key, value)

    run.optimizer.param_groups[:] = [Watched(g) for g in run.optimizer.param_groups]
    run.run()
    assert {(path, function) for path, function, _, _ in writes} == {("minigpt/plan.py", "apply")}
    mult = {g["name"]: g["lr_mult"] for g in run.optimizer.param_groups}
    assert set(mult.values()) == {1.0, 0.5, 2.0}
    expected = [(name, run.plan.lr_at(t)[0] * mult[name]) for t in range(6) for name in mult]
    assert [(name, lr) for _, _, name, lr in writes] == expected
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["train/lr"] for r in records if "train/lr" in r]
    assert logged == [run.plan.lr_at(t)[0] for t in range(6)]
