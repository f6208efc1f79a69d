"""Stacked runs (minigpt/run/stack.py): M runs trained as one batched model must each take exactly
the steps they would take alone, and leave the same records, checkpoints and summary."""

import json
import os
import signal

import pytest
import torch

from helpers import hydra_args, run_train
from minigpt.errors import UserError
from minigpt.run.metrics import read_metrics
from minigpt.run.stack import StackedStepper, stack_groups, train_stacked
from minigpt.run.trainer import Trainer, train
from test_sweeps import summaries, wandb_records


def train_records(run_dir):
    return [r for r in read_metrics(run_dir) if "train/loss" in r]


def assert_same_run(single_dir, stacked_dir, steps):
    one, two = train_records(single_dir), train_records(stacked_dir)
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(steps)
    for a, b in zip(one, two):
        assert b["train/lr"] == a["train/lr"] and b["train/tokens"] == a["train/tokens"]
        assert b["train/loss"] == pytest.approx(a["train/loss"], abs=1e-5)
        assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-4)
        assert b["train/clipped"] == a["train/clipped"] and "spike/loss_z" in b
    vals = lambda d: [(r["step"], r["val/loss"]) for r in read_metrics(d) if "val/loss" in r]  # noqa: E731
    assert [s for s, _ in vals(stacked_dir)] == [s for s, _ in vals(single_dir)]
    assert [v for _, v in vals(stacked_dir)] == pytest.approx([v for _, v in vals(single_dir)], abs=1e-5)
    stderr = lambda d: [r["val/loss_stderr"] for r in read_metrics(d) if "val/loss" in r]  # noqa: E731
    # the batches' losses agree to about 1e-6, and a standard error of ~1e-4 (batches alike) is a
    # difference of nearly equal sums: compared to the same absolute precision
    assert stderr(stacked_dir) == pytest.approx(stderr(single_dir), rel=1e-3, abs=1e-6)


def checkpoint_weights(path):
    return torch.cat([v.flatten() for v in torch.load(path, weights_only=True)["model"].values()])


# Three runs that differ in schedule, LR, seed (so: data and initialisation), clipping and weight decay.
VARIANTS = [
    {},
    {"optim__lr": 3e-3, "scheduler": {"name": "wsd", "decay": 0.5}},
    {"seed": 7, "optim__grad_clip": 0.05, "optim__weight_decay": 0.5, "scheduler": {"name": "one_cycle"}},
]
COMMON = {"trainer__max_steps": 8, "trainer__eval_interval": 4, "trainer__grad_accum": 2, "trainer__ckpt_interval": 4,
          "trainer__threads": 1}


@pytest.mark.slow
def test_each_stacked_run_takes_the_steps_it_would_take_alone(make_config, tmp_path):
    configs = [make_config(**COMMON, **v) for v in VARIANTS]
    stacked = train_stacked(configs, [tmp_path / f"stacked{i}" for i in range(3)], quiet=True)
    for i, v in enumerate(VARIANTS):
        single = train(make_config(**COMMON, **v), tmp_path / f"single{i}", quiet=True)
        assert stacked[i].status == single.status == "completed"
        assert_same_run(tmp_path / f"single{i}", tmp_path / f"stacked{i}", range(8))
        assert torch.allclose(checkpoint_weights(stacked[i].checkpoint), checkpoint_weights(single.checkpoint), atol=1e-5)
        s = json.loads((tmp_path / f"stacked{i}" / "summary.json").read_text())
        assert s["final_val_loss"] == pytest.approx(single.final_val_loss, abs=1e-5) and s["stacked_runs"] == 3
        assert s["schedule"] == single.summary["schedule"] and s["tokens"] == single.summary["tokens"]
    # one_cycle also cycles beta1; the stack applies each run's beta1 (a wrong one shows in the losses above)
    assert train_records(tmp_path / "stacked2")[3]["train/beta1"] != train_records(tmp_path / "stacked2")[0]["train/beta1"]


@pytest.mark.slow
def test_a_stacked_checkpoint_resumes_in_the_ordinary_trainer(make_config, tmp_path):
    """The step-4 checkpoint of a stacked run holds weights, AdamW state and monitor state: the
    ordinary trainer continues from it exactly as the stack did."""
    configs = [make_config(**COMMON, **v) for v in VARIANTS[:2]]
    train_stacked(configs, [tmp_path / "a", tmp_path / "b"], quiet=True)
    checkpoint = tmp_path / "b" / "checkpoints" / "step_0000004.pt"
    resumed = Trainer(make_config(**COMMON, **VARIANTS[1], trainer__resume=str(checkpoint)), tmp_path / "b2", quiet=True)
    assert resumed.step == 4
    resumed.run()
    stacked_tail = [r for r in train_records(tmp_path / "b") if r["step"] >= 4]
    # another run's checkpoint: a branch, whose records start with the parent's first 4
    resumed_tail = [r for r in train_records(tmp_path / "b2") if r["step"] >= 4]
    assert [r["step"] for r in train_records(tmp_path / "b2")] == list(range(8))
    assert [r["step"] for r in resumed_tail] == [4, 5, 6, 7]
    assert [r["train/loss"] for r in resumed_tail] == pytest.approx([r["train/loss"] for r in stacked_tail], abs=1e-5)


@pytest.mark.slow
def test_a_diverged_run_leaves_the_stack_and_the_others_carry_on(make_config, tmp_path):
    common = {**COMMON, "monitor__patience": 2, "trainer__ckpt_interval": 0}
    variants = [{}, {"optim__lr": 20.0, "scheduler": {"name": "constant"}}, {"optim__lr": 3e-3}]
    results = train_stacked([make_config(**common, **v) for v in variants],
                            [tmp_path / f"s{i}" for i in range(3)], quiet=True)
    assert [r.status for r in results] == ["completed", "diverged", "completed"]
    diverged = json.loads((tmp_path / "s1" / "summary.json").read_text())
    assert diverged["status"] == "diverged" and diverged["step"] < 8 and results[1].checkpoint is None
    for i in (0, 2):  # the survivors, after run 1 was dropped from the stack, still match their solo runs
        train(make_config(**common, **variants[i]), tmp_path / f"single{i}", quiet=True)
        assert_same_run(tmp_path / f"single{i}", tmp_path / f"s{i}", range(8))


def test_runs_of_different_shapes_go_to_different_stacks(make_config):
    configs = [make_config(), make_config(optim__lr=1e-3), make_config(model__n_embd=64),
               make_config(seed=3, scheduler={"name": "wsd"}), make_config(model__n_embd=64, optim__lr=1e-3)]
    assert stack_groups(configs) == [[0, 1, 3], [2, 4]]


@pytest.mark.parametrize("override, name", [
    ({"trainer__compile": True}, "trainer.compile"),
    ({"monitor__skip_spikes": True}, "monitor.skip_spikes"),
    ({"monitor__max_attn_logit": True}, "monitor.max_attn_logit"),
    ({"monitor__sharpness_every": 5}, "monitor.sharpness_every"),
])
def test_unsupported_options_are_refused_before_anything_runs(make_config, tmp_path, override, name):
    with pytest.raises(UserError, match=name.replace(".", r"\.")):
        train_stacked([make_config(), make_config(**override)], [tmp_path / "a", tmp_path / "b"], quiet=True)
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_stacked_sweep_from_the_command_line(cache_dir, tmp_path):
    """`train.py -m ... hydra/launcher=stacked`: one process, every job in its own directory with
    its records, checkpoint and summary, its wandb run in the sweep's group."""
    sweep = tmp_path / "sweep"
    args = [a for a in hydra_args(cache_dir, sweep, **{"trainer.max_steps": 6, "trainer.threads": 1})
            if not a.startswith("hydra.run.dir")]
    proc = run_train(["-m", "hydra/launcher=stacked", "scheduler=constant_warmup,wsd", "optim.lr=1e-3",
                      "seed=1,2", "logger=wandb", f"hydra.sweep.dir={sweep}", *args], env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = summaries(sweep)
    assert list(found) == ["0_scheduler=constant_warmup,seed=1", "1_scheduler=constant_warmup,seed=2",
                           "2_scheduler=wsd,seed=1", "3_scheduler=wsd,seed=2"]
    for name, s in found.items():
        assert s["status"] == "completed" and s["stacked_runs"] == 4 and s["configured_lr"] == 1e-3
        assert s["schedule"] == name.split(",")[0].split("=")[1]
        assert [r["step"] for r in train_records(sweep / name)] == list(range(6))
        assert (sweep / name / "checkpoints" / "step_0000006.pt").exists()
        records = wandb_records(sweep / name)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert run.run_group == sweep.name
        assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [0]
    assert len({s["final_val_loss"] for s in found.values()}) == 4  # four different runs
    assert "stack: 4 runs trained together" in (sweep / "stacked.log").read_text()


@pytest.mark.slow
def test_a_signal_stops_every_run_of_the_stack_with_a_checkpoint(make_config, tmp_path):
    """Preemption (SIGUSR1 on Slurm) or Ctrl-C: the stack stops at the next step boundary, every
    run saves a checkpoint, and the stack resumes from them."""
    stack = StackedStepper([make_config(trainer__max_steps=8, trainer__threads=1),
                             make_config(trainer__max_steps=8, trainer__threads=1, optim__lr=1e-3)],
                            [tmp_path / "a", tmp_path / "b"], quiet=True)
    original = stack.train_step

    def step_then_signal():
        original()
        if stack.step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)  # delivered to the handler the stack installed

    stack.train_step = step_then_signal
    results = stack.run()
    assert [r.status for r in results] == ["interrupted", "interrupted"]
    for r in results:
        assert r.summary["reason"] == "stopped by SIGUSR1" and r.summary["step"] == 3
        assert r.checkpoint.name == "step_0000003.pt" and torch.load(r.checkpoint)["step"] == 3
        assert [x["step"] for x in train_records(r.run_dir)] == [0, 1, 2]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handlers are put back

    # Run again with trainer.resume=auto: the stack continues from step 3 as if never stopped.
    again = train_stacked([make_config(trainer__max_steps=8, trainer__threads=1, trainer__resume="auto"),
                           make_config(trainer__max_steps=8, trainer__threads=1, optim__lr=1e-3,
                                       trainer__resume="auto")], [tmp_path / "a", tmp_path / "b"], quiet=True)
    assert [r.status for r in again] == ["completed", "completed"]
    whole = train_stacked([make_config(trainer__max_steps=8, trainer__threads=1),
                           make_config(trainer__max_steps=8, trainer__threads=1, optim__lr=1e-3)],
                          [tmp_path / "c", tmp_path / "d"], quiet=True)
    for resumed, uninterrupted in zip(again, whole):
        assert_same_run(uninterrupted.run_dir, resumed.run_dir, range(8))


@pytest.mark.slow
def test_max_stack_splits_a_sweep_into_stacks(make_config, tmp_path):
    configs = [make_config(trainer__max_steps=2, trainer__threads=1, seed=s) for s in (1, 2, 3)]
    results = train_stacked(configs, [tmp_path / str(s) for s in (1, 2, 3)], quiet=True, max_stack=2)
    assert [r.summary["stacked_runs"] for r in results] == [2, 2, 1]
    assert all(r.status == "completed" for r in results)


@pytest.mark.parametrize("args, words", [
    (["-m", "optim.lr=1e-3,2e-3", "trainer.compile=true"], "trainer.compile is not supported for stacked runs"),
    (["-m", "optim.lr=1e-3,2e-3", "monitor.sharpness_every=5"], "monitor.sharpness_every is not supported for stacked runs"),
    (["sweep=optuna"], "needs each result before it picks the next trial"),
])
@pytest.mark.slow
def test_stacked_sweep_with_an_unsupported_option_stops_before_any_job(args, words, tmp_path):
    """Refused by train.py's precheck, in one line, before the sweep folder exists (the exit
    status and the missing traceback of such a refusal: tests/test_bad_input.py)."""
    from minigpt.launch.precheck import precheck

    if "sweep=optuna" in args:
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    with pytest.raises(UserError) as e:
        precheck([*args, "hydra/launcher=stacked", f"hydra.sweep.dir={tmp_path}/s"])
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "s").exists()
