"""Sweeps: `train.py -m`, the sweep files, the Optuna sweeper and the Slurm/local launchers.

A sweep must survive its failed and diverged jobs, give every job its own readable directory,
close every logger, and put the wandb runs of one sweep in one group.
"""

import json
import os
import struct
import textwrap
from datetime import datetime
from pathlib import Path

import pytest
import hydra
from omegaconf import OmegaConf

from helpers import ROOT, composed_scheduler, hydra_args, run_train
from minigpt.launch import cli
from minigpt.launch.precheck import precheck
from minigpt.launch.compose import CONF_DIR, composed, group_options, hydra_search_path
from minigpt.errors import UserError
from minigpt.schedules import list_schedules
from test_cli import one_line_error

# Launchers that start new Python processes (joblib, submitit) must import this checkout's minigpt.
THIS_CHECKOUT = {"PYTHONPATH": str(ROOT)}


def sweep_args(cache_dir, sweep_dir, **extra):
    """The tiny run's overrides for a sweep into sweep_dir."""
    args = hydra_args(cache_dir, sweep_dir, **{"trainer.threads": 1, **extra})
    return [a for a in args if not a.startswith("hydra.run.dir=")] + [f"hydra.sweep.dir={sweep_dir}"]


def summaries(sweep_dir) -> dict:
    return {d.name: json.loads((d / "summary.json").read_text()) for d in sorted(Path(sweep_dir).iterdir())
            if d.is_dir() and not d.name.startswith(".")}


# --- the sweep files --------------------------------------------------------------------------


def test_schedules_sweep_runs_every_training_schedule():
    params = composed(["sweep=schedules"]).hydra.sweeper.params
    swept = params.scheduler.split(",")
    assert sorted(swept) == sorted(set(list_schedules()) - {"lr_range_test"})  # a new schedule belongs here
    assert set(swept) <= set(group_options("scheduler", [CONF_DIR]))


@pytest.mark.parametrize("name", ["schedules", "lr_warmup"])
def test_sweep_files_are_multiruns_of_the_basic_sweeper(name):
    cfg = composed([f"sweep={name}"])
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper._target_.endswith("BasicSweeper")
    if name == "lr_warmup":
        assert cfg.hydra.sweeper.params["optim.lr"] == "1e-3,3e-3,1e-2,3e-2"
        assert cfg.hydra.sweeper.params["scheduler.warmup"] == "0,0.01,0.05,0.2"


def test_every_value_of_a_sweep_file_is_checked_before_any_job(tmp_path):
    """constant has no warmup: all 16 jobs of the LR x warmup grid would fail, so none starts."""
    # In process, as train.py checks it before Hydra starts (its exit status and one line: test_bad_input).
    with pytest.raises(UserError) as e:
        precheck(["sweep=lr_warmup", "scheduler=constant", f"hydra.sweep.dir={tmp_path}/s"])
    assert "scheduler.warmup" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_sweep_of_values_is_checked_with_one_composition_per_config_group_choice(tmp_path, monkeypatch):
    """Values of plain keys are applied to a composition of the group choices, as Hydra applies
    them; each new set of group choices is composed. A bad value anywhere in the grid is refused."""
    import hydra

    from minigpt.launch import compose

    monkeypatch.setattr(compose, "_GROUP_CHOICES_COMPOSED", {})  # what earlier tests of this process composed: not here
    composed = []
    real = hydra.compose
    monkeypatch.setattr(hydra, "compose", lambda **kw: composed.append(kw["overrides"]) or real(**kw))
    out = f"hydra.sweep.dir={tmp_path}/s"
    precheck(["-m", "optim.lr=1e-3,3e-3,1e-2", "seed=1,2,3", "scheduler.warmup=0,'64k tokens'", out])
    precheck(["-m", "optim.lr=1e-4,3e-4", "trainer.max_steps=50", out])  # the same (no) group choices
    assert len(composed) <= 1  # none where an earlier test of this process composed the defaults
    composed.clear()
    precheck(["-m", "scheduler=wsd,inverse_sqrt,polynomial", "optim.lr=1e-3,3e-3", "seed=11", out])
    assert sorted(composed) == [["scheduler=inverse_sqrt"], ["scheduler=polynomial"], ["scheduler=wsd"]]
    with pytest.raises(UserError) as e:  # the third value of the second key
        precheck(["-m", "optim.lr=1e-3,3e-3", "trainer.max_steps=100,200,-5", out])
    assert "trainer.max_steps" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError) as e:  # a key the group's file lacks: refused as Hydra refuses it
        precheck(["-m", "scheduler=wsd,constant", "scheduler.decay=0.1", out])
    assert "scheduler.decay" in str(e.value)


@pytest.mark.parametrize("overrides", [
    ["optim.lr=0.02", "seed=7", "scheduler.warmup='64k tokens'"],
    ["scheduler=wsd", "model.n_layer=3", "trainer.max_steps=null", "run_name=mine", "hydra.run.dir=out/x"],
    ["data=files", "data.paths=[a.txt,b.txt]", "arch=post_ln", "optim.lr=1e-3", "optim.lr=2e-3"],
    ["sweep=warmup_divergence_cpu", "hydra/launcher=stacked", "trainer.eval_interval=5", "hydra.sweep.dir=s"],
    ["experiment=warmup_divergence_cpu", "++seed=3"],  # a ++ override: Hydra composes it all
])
@pytest.mark.slow
def test_the_precheck_composes_what_hydra_composes(overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a working directory of its own: composed afresh here
    ours = composed(overrides)
    again = composed(overrides)
    with hydra_search_path([CONF_DIR]):  # Hydra's own compose, the reference
        hydras = hydra.compose(config_name="config", overrides=overrides, return_hydra_config=True)
    assert OmegaConf.to_container(ours) == OmegaConf.to_container(hydras)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(hydras)
    again.seed = 12345  # a copy: what one caller changes, the next one does not see
    assert composed(overrides).seed == hydras.seed


def test_a_changed_config_file_is_composed_again(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("n_layer: 3\n")
    dirs = [tmp_path, CONF_DIR]
    assert composed(["model=mine", "seed=2"], dirs).model.n_layer == 3
    (tmp_path / "model" / "mine.yaml").write_text("n_layer: 5\n")
    assert composed(["model=mine", "seed=2"], dirs).model.n_layer == 5


def test_optuna_sweep_file_composes():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweeper = composed(["sweep=optuna"]).hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert sweeper.params["optim.lr"] == "tag(log, interval(3e-4, 3e-2))"
    assert sweeper.params["scheduler.warmup"] == "interval(0.0, 0.3)"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 1337


@pytest.mark.slow  # its own processes
def test_a_missing_plugin_is_named_in_one_line(tmp_path):
    """Without the sweeps extra (simulated: an empty hydra_plugins package hides the installed ones)."""
    (tmp_path / "hydra_plugins").mkdir()
    (tmp_path / "hydra_plugins" / "__init__.py").write_text("")
    env = {"PYTHONPATH": str(tmp_path)}
    for override, plugin in (("sweep=optuna", "hydra-optuna-sweeper"), ("hydra/launcher=slurm", "hydra-submitit-launcher")):
        line = one_line_error(run_train(["-m", override, f"hydra.sweep.dir={tmp_path}/s"], env=env))
        assert plugin in line and "pip install -e '.[sweeps]'" in line, line


# --- the Slurm launcher ---------------------------------------------------------------------------


def test_slurm_launcher_composes_into_an_sbatch_script(tmp_path, monkeypatch):
    """The launcher config as submitit renders it: N GPUs and N ranks per job, SIGUSR1 before the end."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cfg = composed(["sweep=schedules", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4",
                          "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.tasks_per_node == 4  # one rank per GPU

    # What SlurmLauncher.launch hands to submitit (its own mapping of the keys), rendered as sbatch does.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that srun exists
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    params = {}
    for key in launcher:
        if key not in ("_target_", "submitit_folder", "max_num_timeout", "name"):
            value = launcher[key]
            params[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "submitit")
    executor.update_parameters(**{(k if k in base else f"slurm_{k}"): v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit", "0")
    for line in ("--gpus-per-node=4", "--ntasks-per-node=4", "--partition=gpu", "--time=90", "--signal=USR2@120",
                 "--cpus-per-task=8", "--nodes=1"):
        assert f"#SBATCH {line}\n" in script, (line, script)
    assert script.count("--signal") == 1


@pytest.mark.slow
def test_submitit_local_launcher_runs_each_job_with_two_ranks(cache_dir, tmp_path):
    """The launcher code path of Slurm, run locally: a job of 2 tasks, each task a DDP rank (one
    job: a second would only repeat it, and each task is a process of its own)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    args = sweep_args(cache_dir, sweep, **{"trainer.max_steps": 4, "trainer.batch_size": 8, "trainer.micro_batch_size": 2})
    proc = run_train(["-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                      "hydra.launcher.timeout_min=10", "optim.lr=3e-3", *args], env=THIS_CHECKOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = summaries(sweep)
    assert len(found) == 1, sorted(found)
    for name, s in found.items():
        assert s["status"] == "completed" and s["world_size"] == 2 and s["configured_lr"] == 3e-3
        records = [json.loads(x) for x in (sweep / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "train/loss" in r] == [0, 1, 2, 3]  # rank 0 alone wrote them


def log_span(log_file: Path) -> tuple[datetime, datetime]:
    """Times of the first and the last line of a job's log."""
    stamps = [datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f") for line in log_file.read_text().splitlines()
              if line.startswith("[")]
    return stamps[0], stamps[-1]


@pytest.mark.slow
def test_parallel_launcher_runs_jobs_at_the_same_time(cache_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = run_train(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "optim.lr=1e-3,3e-3",
                      *sweep_args(cache_dir, sweep, **{"trainer.max_steps": 6})], env=THIS_CHECKOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = summaries(sweep)
    assert sorted(found) == ["0_optim.lr=0.001", "1_optim.lr=0.003"]
    for name, s in found.items():
        assert s["status"] == "completed" and s["configured_lr"] == float(name.split("=")[1])
        assert (sweep / name / "checkpoints" / "step_0000006.pt").exists()
        records = [json.loads(x) for x in (sweep / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "train/loss" in r] == list(range(6))
    (start0, end0), (start1, end1) = (log_span(sweep / name / "train.log") for name in sorted(found))
    assert start0 < end1 and start1 < end0  # the two jobs' lifetimes overlap
    # The same sweep again into the same folder: refused before Hydra rewrites any job's .hydra/.
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    again = run_train(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "optim.lr=1e-3,3e-3",
                       *sweep_args(cache_dir, sweep, **{"trainer.max_steps": 6})], env=THIS_CHECKOUT)
    assert again.returncode == 2
    assert "job 0 of this sweep (optim.lr=0.001)" in one_line_error(again)
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before


# --- a sweep that goes wrong in every way -------------------------------------------------------

BAD_SCHEDULES = '''
    """Schedules for the sweep tests: each breaks in its own way once training has started."""
    import sys
    from dataclasses import dataclass

    from minigpt.errors import UserError
    from minigpt.schedules import register_schedule


    @dataclass(frozen=True)
    class NoParams:
        pass


    def training():
        # True inside the training loop, False while train.py and the trainer check the curve.
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name == "train_step":
                return True
            frame = frame.f_back
        return False


    @register_schedule("explode", NoParams)
    def explode(step, total_steps, p):
        return 1e4  # 10^4 x the peak LR: the loss blows up within a few steps


    @register_schedule("boom_bug", NoParams)
    def boom_bug(step, total_steps, p):
        if training():
            raise RuntimeError("a bug in the middle of training")
        return 1.0


    @register_schedule("boom_user", NoParams)
    def boom_user(step, total_steps, p):
        if training():
            raise UserError("scheduler.boom_user: a bad value noticed only at run time")
        return 1.0
'''


def wandb_records(run_dir: Path) -> list:
    """The records of a run's offline wandb log (its LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, block, chunks, records = path.read_bytes(), 7, 32768, b"", []  # 7: the ':W&B' header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


@pytest.mark.slow
def test_failed_and_diverged_jobs_never_stop_the_sweep(cache_dir, tmp_path):
    (tmp_path / "sweep_test_schedules.py").write_text(textwrap.dedent(BAD_SCHEDULES))
    sweep = tmp_path / "sweep"
    args = sweep_args(cache_dir, sweep, **{"trainer.max_steps": 8, "monitor.patience": 2})
    proc = run_train(["-m", "scheduler=custom", "scheduler.module=sweep_test_schedules",
                      "scheduler.name=boom_bug,explode,boom_user,constant", "logger=wandb", *args],
                     env={"PYTHONPATH": str(tmp_path), "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Every job ran, in its own directory named after what it changes.
    found = summaries(sweep)
    assert list(found) == ["0_scheduler.name=boom_bug", "1_scheduler.name=explode", "2_scheduler.name=boom_user",
                           "3_scheduler.name=constant"]
    bug, diverged, user, ok = found.values()
    assert bug["status"] == "failed" and bug["reason"] == "RuntimeError: a bug in the middle of training"
    assert bug["step"] == 0  # what the trainer knew when it failed is kept
    assert "Traceback" in (sweep / "0_scheduler.name=boom_bug" / "error.txt").read_text()
    assert diverged["status"] == "diverged" and diverged["diverged_step"] is not None
    assert user["status"] == "failed" and user["reason"] == "scheduler.boom_user: a bad value noticed only at run time"
    assert not (sweep / "2_scheduler.name=boom_user" / "error.txt").exists()  # a user error needs no traceback
    assert ok["status"] == "completed" and ok["final_val_loss"] < ok["initial_val_loss"]
    assert (sweep / "3_scheduler.name=constant" / "checkpoints").is_dir()
    assert "job 0 failed: RuntimeError" in proc.stdout + proc.stderr

    # One wandb group per sweep; every run closed, the failed ones with a failing exit code.
    exit_codes = {}
    for name in found:
        records = wandb_records(sweep / name)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert run.run_group == sweep.name
        exit_codes[name] = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    assert list(exit_codes.values()) == [[1], [0], [1], [0]]


@pytest.mark.slow
def test_optuna_sweep_minimises_the_returned_val_loss(cache_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    proc = run_train(["sweep=optuna", "hydra.sweeper.n_trials=3", *sweep_args(cache_dir, sweep, **{"trainer.max_steps": 6})])
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = summaries(sweep)
    assert len(found) == 3 and all(s["status"] == "completed" for s in found.values())
    lrs = {s["configured_lr"] for s in found.values()}
    assert len(lrs) == 3 and all(3e-4 <= lr <= 3e-2 for lr in lrs)  # three different draws from the range
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    best = min(found.values(), key=lambda s: s["final_val_loss"])
    assert result.best_value == pytest.approx(best["final_val_loss"])
    assert result.best_params["optim.lr"] == pytest.approx(best["configured_lr"])


def test_a_key_of_some_schedules_only_is_scoped_to_them(tmp_path):
    """Issue 27: `scheduler.decay=0.3` in a sweep over cosine_warmup and wsd names the jobs and the
    schedule that lack it and the scoped form; `scheduler.wsd.decay=0.3` gives it to wsd only."""
    from minigpt.schedules import schedule_from_config

    out = f"hydra.sweep.dir={tmp_path}/s"
    with pytest.raises(UserError) as e:
        precheck(["-m", "scheduler=cosine_warmup,wsd", "scheduler.decay=0.3", out])
    assert str(e.value).startswith("scheduler.decay: the jobs with scheduler=cosine_warmup cannot take it: schedule "
                                   "cosine_warmup has no key 'decay' (wsd has it); give it to the schedules that have "
                                   "it only with scheduler.wsd.decay=0.3 (docs/sweeps.md)")
    precheck(["-m", "scheduler=cosine_warmup,wsd", "scheduler.wsd.decay=0.3", out])  # Hydra gets the '+'
    assert cli.scope_schedule_keys(["scheduler.wsd.decay=0.3", "scheduler.warmup=5", "+scheduler.x.y=1"]) == \
        ["+scheduler.wsd.decay=0.3", "scheduler.warmup=5", "+scheduler.x.y=1"]

    # What each job's schedule takes: its own scoped keys (over the plain ones), none of another's.
    for name in ("cosine_warmup", "wsd"):
        raw = {**composed_scheduler(name), "warmup": 4, "wsd": {"decay": 0.3, "warmup": 2}}
        s = schedule_from_config(raw, 100, None)
        assert s.name == name and s.params.warmup == (2 if name == "wsd" else 4)
        assert s.params.decay == 30 if name == "wsd" else not hasattr(s.params, "decay")
    with pytest.raises(UserError, match=r"scheduler.wsdd: 'wsdd' is no schedule \(did you mean 'scheduler.wsd'\?\)"):
        schedule_from_config({"name": "wsd", "wsdd": {"decay": 0.3}}, 100, None)
    with pytest.raises(UserError, match="scheduler 'wsd' has no parameter 'decayy'"):
        schedule_from_config({"name": "wsd", "wsd": {"decayy": 0.3}}, 100, None)


def test_a_second_command_shares_the_sweep_folder_without_colliding(tmp_path):
    """Jobs of another command in the folder (`0_seed=1` of `scheduler=cosine_warmup seed=1,2`):
    this command's jobs are named by all their overrides; the same command again is refused (or
    resumed) as before."""
    sweep = tmp_path / "s"
    for num, seed in ((0, 1), (1, 2)):  # what the first command left: a run in each job folder
        job = sweep / f"{num}_seed={seed}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- scheduler=cosine_warmup\n- seed={seed}\n"
                                                       f"- data.cache_dir=/x\n")
        (job / "metrics.jsonl").write_text('{"step": 0}\n')
    second = ["-m", "scheduler=wsd", "scheduler.wsd.decay=0.3", "seed=1,2", f"hydra.sweep.dir={sweep}"]
    extras = precheck(second).extras
    (names,) = [e for e in extras if e.startswith("hydra.job.config.override_dirname.exclude_keys=")]
    assert "'scheduler'" not in names and "'scheduler.wsd.decay'" not in names and "'data.cache_dir'" in names
    same = ["-m", "scheduler=cosine_warmup", "seed=1,2", "data.cache_dir=/y", f"hydra.sweep.dir={sweep}"]
    with pytest.raises(UserError, match=r"job 0 of this sweep \(seed=1\) would write into .*already holds a run"):
        precheck(same)
    (names,) = [e for e in precheck([*same, "trainer.resume=auto"]).extras if "exclude_keys" in e]
    assert "'scheduler'" in names  # resumed under the first command's names
