"""A run folder holds one run, written by one process, from intact files (docs/reliability.md).

Each test is a fault of issue 16 with its reproduction: a second run into a folder that holds
one, a garbled metrics.jsonl, two processes in one folder, a damaged checkpoint, bad seeds,
unwritable folders, unknown compile options, signals before training, and the validation
gaps. Most run in process on the tiny config `B` of the issue (one layer, 32 wide); a
subprocess only where the exit status, a signal or a second process is the point.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, hydra_args, nested, run_python, start_python, tiny_overrides
from minigpt import schedules
from minigpt.run.checkpoint import (DamagedCheckpoint, checkpoint_path, list_checkpoints, load_checkpoint,
                                prune_checkpoints, save_checkpoint)
from minigpt.config import config_from_dict
from minigpt.errors import UserError
from minigpt.run.metrics import FORMAT_VERSION, UNREADABLE_FILE, read_metrics, truncate_metrics, write_failed_summary
from minigpt.run.folder import LOCK_FILE, RunFolderInUse
from minigpt.run.runtime import check_compile_backend
from minigpt.run.trainer import train

# The tiny config B (with the test session's shared token cache and no progress bar).
B = {"model.n_layer": 1, "model.n_embd": 32, "model.n_head": 2, "model.block_size": 32, "data.max_chars": 200_000,
     "data.vocab_size": 300, "trainer.max_steps": 40, "trainer.eval_interval": 10, "monitor.stuck_after": 0.0,
     "trainer.eval_iters": 2, "trainer.threads": 1}


@pytest.fixture
def config_b(cache_dir):
    def make(**overrides):
        merged = {**tiny_overrides(cache_dir), **B}
        merged.update({k.replace("__", "."): v for k, v in overrides.items()})
        return config_from_dict(nested(merged))

    return make


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def steps_of(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if "train/loss" in r]


# --- 1. one run per folder ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_into_a_folder_that_holds_a_run_is_refused_and_touches_nothing(config_b, tmp_path):
    run_dir = tmp_path / "X"
    train(config_b(trainer__max_steps=8), run_dir, quiet=True)
    before = hashes(run_dir)
    # the same run again, and a shorter one: each used to append its steps to the same metrics.jsonl
    for steps in (8, 4):
        with pytest.raises(RunFolderInUse, match=r"already holds a run \(metrics.jsonl \(9 lines\), 1 checkpoint, "
                                                 r"summary.json \(completed at step 8\)\).*trainer.overwrite=true"):
            train(config_b(trainer__max_steps=steps), run_dir, quiet=True)
    assert hashes(run_dir) == before


@pytest.mark.slow
def test_a_branch_into_a_folder_that_holds_a_run_is_refused(config_b, tmp_path):
    parent, other = tmp_path / "parent", tmp_path / "other"
    train(config_b(trainer__max_steps=4), parent, quiet=True)
    train(config_b(trainer__max_steps=6), other, quiet=True)
    before = hashes(other)
    with pytest.raises(RunFolderInUse, match="a branch from another run's checkpoint would mix"):
        train(config_b(trainer__max_steps=6, trainer__resume=str(checkpoint_path(parent, 4))), other, quiet=True)
    assert hashes(other) == before


@pytest.mark.slow
def test_overwrite_moves_the_old_run_aside_and_starts_clean(config_b, tmp_path):
    run_dir = tmp_path / "X"
    train(config_b(trainer__max_steps=8, trainer__ckpt_interval=4), run_dir, quiet=True)
    old = hashes(run_dir)
    result = train(config_b(trainer__max_steps=5, trainer__overwrite=True), run_dir, quiet=True)
    assert result.status == "completed"
    assert steps_of(run_dir) == [0, 1, 2, 3, 4]  # the new run's steps, once each
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_0000005.pt"]
    assert Path(result.summary["checkpoint"]).is_file()
    (aside,) = [p for p in run_dir.iterdir() if p.name.startswith("replaced-")]
    assert {f"{aside.name}/{k}": v for k, v in old.items() if not k.startswith(".")} == \
           {k: v for k, v in hashes(run_dir).items() if k.startswith(aside.name)}  # the old run, whole


# --- 2. metrics.jsonl repair -----------------------------------------------------------------------


def test_unreadable_lines_of_metrics_are_set_aside_and_every_readable_record_kept(tmp_path):
    lines = [json.dumps({"step": s, "train/loss": 5.0 - s / 10}) for s in range(10)]
    lines[5] = lines[5][:17]  # cut short in the middle of the file
    lines.insert(8, "null")  # valid JSON, not a record
    lines.insert(9, "[1, 2]")
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    dropped, set_aside = truncate_metrics(tmp_path, 8)
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3, 4, 6, 7]
    assert (dropped, set_aside) == (2, 3)  # steps 8 and 9 after the resume step; three lines unreadable
    assert (tmp_path / UNREADABLE_FILE).read_text().splitlines() == [lines[5], "null", "[1, 2]"]


@pytest.mark.slow
def test_a_resume_keeps_the_records_after_a_garbled_line(config_b, tmp_path, caplog):
    run_dir = tmp_path / "X"
    train(config_b(trainer__max_steps=12, trainer__ckpt_interval=6, trainer__keep_checkpoints=3), run_dir, quiet=True)
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[5] = lines[5][: len(lines[5]) // 2]
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level("INFO", logger="minigpt"):
        train(config_b(trainer__max_steps=12, trainer__ckpt_interval=6, trainer__resume=str(checkpoint_path(run_dir, 6))),
              run_dir)
    assert steps_of(run_dir) == [s for s in range(12) if s != 5]  # step 5's line was lost, no other
    assert "1 unreadable line of metrics.jsonl set aside" in caplog.text
    assert len((run_dir / UNREADABLE_FILE).read_text().splitlines()) == 1


# --- 3. one process per folder ---------------------------------------------------------------------


def hold_lock(run_dir: Path) -> subprocess.Popen:
    code = ("import sys, time; from minigpt.run.folder import RunFolderLock; "
            "RunFolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_naming_the_holder_and_a_dead_ones_lock_is_taken_over(config_b, tmp_path, caplog):
    run_dir = tmp_path / "X"
    run_dir.mkdir()
    holder = hold_lock(run_dir)
    try:
        with pytest.raises(RunFolderInUse, match=rf"in use by another process \(pid {holder.pid} on host "
                                                 rf"{socket.gethostname()}, since "):
            train(config_b(trainer__max_steps=2, trainer__resume="auto"), run_dir, quiet=True)
        assert not (run_dir / "metrics.jsonl").exists()
    finally:
        holder.kill()  # SIGKILL: no clean-up, its lock file still names it
        holder.wait()
    assert f"pid {holder.pid}" in (run_dir / LOCK_FILE).read_text()
    with caplog.at_level("INFO", logger="minigpt"):
        assert train(config_b(trainer__max_steps=2, trainer__resume="auto"), run_dir).status == "completed"
    assert f"took over the lock left by pid {holder.pid}" in caplog.text
    assert (run_dir / LOCK_FILE).read_text() == ""  # released at the end of the run


def sweep_command(cache_dir, sweep_dir, *extra) -> list[str]:
    args = [a for a in hydra_args(cache_dir, sweep_dir) if not a.startswith("hydra.run.dir=")]
    return ["-m", *extra, *args, f"hydra.sweep.dir={sweep_dir}"]


@pytest.mark.slow
def test_a_sweep_job_whose_folder_holds_a_run_is_refused_before_hydra_writes(cache_dir, tmp_path, monkeypatch):
    """Job folders are named by number and overrides (0_optim.lr=0.001): the precheck names them
    as Hydra will and refuses a taken one, before Hydra rewrites its .hydra/."""
    from minigpt.launch.precheck import precheck

    monkeypatch.chdir(tmp_path)  # the time-stamped sweep dir below (multirun/...) is claimed here, not in the checkout

    sweep = tmp_path / "sweep"
    taken = sweep / "1_optim.lr=0.003"
    (taken / ".hydra").mkdir(parents=True)
    (taken / "metrics.jsonl").write_text('{"step": 0, "train/loss": 5.0}\n')
    (taken / ".hydra" / "config.yaml").write_text("the earlier run's config\n")
    before = hashes(sweep)
    with pytest.raises(UserError) as e:
        precheck(sweep_command(cache_dir, sweep, "optim.lr=1e-3,3e-3"))
    line = str(e.value)
    assert "\n" not in line and "job 1 of this sweep (optim.lr=0.003)" in line
    assert str(taken) in line and "metrics.jsonl (1 lines)" in line and "trainer.resume=auto" in line
    assert hashes(sweep) == before
    # Other jobs' names, a continuation, a replacement and a time-stamped sweep dir all pass.
    precheck(sweep_command(cache_dir, sweep, "optim.lr=1e-2,3e-2"))
    precheck(sweep_command(cache_dir, sweep, "optim.lr=1e-3,3e-3", "trainer.resume=auto"))
    precheck(sweep_command(cache_dir, sweep, "optim.lr=1e-3,3e-3", "trainer.overwrite=true"))
    precheck([a for a in sweep_command(cache_dir, sweep, "optim.lr=1e-3,3e-3") if not a.startswith("hydra.sweep")])
    # The job number is part of the name: the same overrides in another position are another folder.
    precheck(sweep_command(cache_dir, sweep, "optim.lr=3e-3,1e-3"))
    # a precheck that passes claims each job's folder (its lock file) before Hydra writes; nothing else
    assert {k: v for k, v in hashes(sweep).items() if not k.endswith(LOCK_FILE)} == before
    # A sweep file's grid, expanded as Hydra expands it (a MULTIRUN without -m).
    grid = tmp_path / "grid"
    (grid / "1_optim.lr=0.001,scheduler.warmup=0.01" / "checkpoints").mkdir(parents=True)
    (grid / "1_optim.lr=0.001,scheduler.warmup=0.01" / "summary.json").write_text('{"status": "failed", "step": 3}')
    with pytest.raises(UserError, match=r"job 1 of this sweep \(optim.lr=0.001 scheduler.warmup=0.01\)"):
        precheck(sweep_command(cache_dir, grid, "sweep=lr_warmup")[1:])


def test_a_search_into_a_folder_that_holds_runs_is_refused(cache_dir, tmp_path):
    """A search cannot know its trials' folders (number and sampled values): any run in its
    sweep folder could be one of them."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from minigpt.launch.precheck import precheck

    sweep = tmp_path / "sweep"
    (sweep / "1_optim.lr=0.003").mkdir(parents=True)
    (sweep / "1_optim.lr=0.003" / "metrics.jsonl").write_text('{"step": 0}\n')
    (sweep / "0_optim.lr=0.001").mkdir()  # a folder without a run is no obstacle
    with pytest.raises(UserError, match=r"already holds runs \(1_optim.lr=0.003\), and a search names its trials"):
        precheck(sweep_command(cache_dir, sweep, "sweep=optuna", "hydra.sweeper.n_trials=2")[1:])
    precheck(sweep_command(cache_dir, tmp_path / "fresh", "sweep=optuna", "hydra.sweeper.n_trials=2")[1:])


def test_a_sweep_job_folder_in_use_by_a_live_process_is_refused(cache_dir, tmp_path):
    from minigpt.launch.precheck import precheck

    sweep = tmp_path / "sweep"
    job = sweep / "0_optim.lr=0.001"
    job.mkdir(parents=True)
    holder = hold_lock(job)
    try:
        with pytest.raises(UserError, match=r"job 0 of this sweep .* another process is writing into \(pid"):
            precheck(sweep_command(cache_dir, sweep, "optim.lr=1e-3,3e-3"))
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_train_py_refuses_a_folder_in_use_with_one_line(cache_dir, tmp_path):
    run_dir = tmp_path / "X"
    run_dir.mkdir()
    holder = hold_lock(run_dir)
    try:
        proc = run_python([ROOT / "train.py", *hydra_args(cache_dir, run_dir), "trainer.resume=auto"], timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: hydra.run.dir: '{run_dir}' is in use by another process (pid {holder.pid} on host "
        f"{socket.gethostname()}, since {proc.stderr.split('since ')[1].split(')')[0]}); wait for it to end, stop it, "
        "or pick another hydra.run.dir"]
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # Hydra wrote nothing there


# --- 4. checkpoint integrity -------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "overwritten":
        middle = len(data) // 2
        data[middle:middle + 2000] = bytes(2000)
    elif how == "truncated":
        data = data[: len(data) // 3]
    else:
        data = bytearray()
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["overwritten", "truncated", "empty"])
def test_resume_auto_falls_back_to_the_newest_intact_checkpoint(config_b, tmp_path, caplog, how):
    run_dir = tmp_path / "X"
    cfg = dict(trainer__max_steps=9, trainer__ckpt_interval=3, trainer__keep_checkpoints=2)
    train(config_b(**cfg), run_dir, quiet=True)
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_0000006.pt", "step_0000009.pt"]
    damage(checkpoint_path(run_dir, 9), how)
    with caplog.at_level("INFO", logger="minigpt"):
        result = train(config_b(**{**cfg, "trainer__max_steps": 12, "trainer__keep_checkpoints": 1},
                                trainer__resume="auto"), run_dir)
    assert result.summary["resumed_from"] == str(checkpoint_path(run_dir, 6))
    assert "skipped step_0000009.pt: " in caplog.text
    assert steps_of(run_dir) == list(range(12))
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "step_0000009.pt.damaged" in names  # kept to look at, never again taken for a checkpoint
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_0000012.pt"]
    load_checkpoint(checkpoint_path(run_dir, 12))  # intact


def test_an_explicit_damaged_checkpoint_is_refused_with_one_line(tmp_path):
    path = save_checkpoint({"model": {}, "step": 3, "blob": bytes(range(256)) * 40}, checkpoint_path(tmp_path, 3))
    damage(path, "overwritten")
    with pytest.raises(DamagedCheckpoint, match=rf"trainer.resume: '{path}' is damaged: its SHA-256 differs"):
        load_checkpoint(path)


def test_pruning_counts_only_checkpoints_with_a_checksum(tmp_path):
    for step in (3, 6):
        save_checkpoint({"model": {}, "step": step}, checkpoint_path(tmp_path, step))
    (tmp_path / "checkpoints" / "step_0000009.pt").write_bytes(b"")  # no checksum: not a finished save
    assert prune_checkpoints(tmp_path, keep=1) == [checkpoint_path(tmp_path, 3)]
    assert checkpoint_path(tmp_path, 6).is_file()  # the newest intact one stays


# --- 5. seeds, and a failed start never spoils a completed run -------------------------------------


@pytest.mark.parametrize("key, value", [("seed", -1), ("seed", 18446744073709551616), ("data.split_seed", -1)])
def test_seeds_out_of_range_are_refused_up_front(cache_dir, key, value):
    with pytest.raises(UserError, match=rf"^{key} must be in \[0, 9223372036854775807\]; got {value}$"):
        config_from_dict(nested({**tiny_overrides(cache_dir), key: value}))


def test_resume_auto_of_a_completed_run_changes_nothing(config_b, tmp_path):
    run_dir = tmp_path / "X"
    done = train(config_b(trainer__max_steps=6), run_dir, quiet=True)
    before = hashes(run_dir)
    again = train(config_b(trainer__max_steps=6, trainer__resume="auto"), run_dir, quiet=True)
    assert again.status == "completed" and again.summary == done.summary
    assert hashes(run_dir) == before  # the final validation record and the summary stand


def test_a_failure_summary_never_replaces_a_completed_one(tmp_path):
    summary = {"status": "completed", "step": 40, "final_val_loss": 4.3}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert not write_failed_summary(tmp_path, {"status": "failed", "reason": "seed must be ..."})
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    (tmp_path / "summary.json").write_text(json.dumps({"status": "interrupted", "step": 20}))
    assert write_failed_summary(tmp_path, {"status": "failed", "reason": "boom"})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"format_version": FORMAT_VERSION, "status": "failed",
                                                                    "step": 20, "reason": "boom"}


# --- 6, 7, 11: checked before any training ----------------------------------------------------------


def test_an_unwritable_checkpoints_folder_is_found_before_training(config_b, tmp_path):
    run_dir = tmp_path / "X"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the checkpoints folder goes")
    with pytest.raises(UserError, match=r"hydra.run.dir: cannot write to '.*checkpoints'"):
        train(config_b(trainer__max_steps=4), run_dir, quiet=True)
    assert not (run_dir / "metrics.jsonl").exists()


def test_unknown_compile_options_are_refused():
    with pytest.raises(UserError, match=r"trainer.compile_mode: must be one of default, reduce-overhead, max-autotune"):
        config_from_dict({"trainer": {"compile_mode": "fastest"}})
    tc = config_from_dict({"trainer": {"compile": True, "compile_backend": "inductr"}}).trainer
    with pytest.raises(UserError, match=r"unknown torch.compile backend 'inductr' \(did you mean 'inductor'\?\)"):
        check_compile_backend(tc)


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ""])
def test_a_data_name_cannot_leave_the_cache_dir(name):
    with pytest.raises(UserError, match="data.name: .* must be a plain name"):
        config_from_dict({"data": {"name": name}})


def test_resuming_past_the_end_of_the_run_is_refused(config_b, tmp_path):
    run_dir = tmp_path / "X"
    train(config_b(trainer__max_steps=6), run_dir, quiet=True)
    before = hashes(run_dir)
    with pytest.raises(UserError, match=r"step_0000006.pt is at step 6, past the end of this run \(4 steps\)"):
        train(config_b(trainer__max_steps=4, trainer__resume="auto"), run_dir, quiet=True)
    assert hashes(run_dir) == before


def test_a_context_longer_than_the_data_is_refused_before_the_model_is_built(config_b, tmp_path, monkeypatch):
    import minigpt.run.trainer as trainer_mod

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(trainer_mod, "GPT", no_model)
    with pytest.raises(UserError, match=r"fewer than one context window \(model.block_size=1000000 plus 1\)"):
        train(config_b(model__block_size=1_000_000), tmp_path / "X", quiet=True)


@pytest.mark.slow
def test_the_schedule_check_of_a_billion_step_run_takes_seconds():
    start = time.perf_counter()
    s = schedules.build_schedule("cosine_warmup", 10**9, warmup=1000)
    schedules.check_curve(s)
    described = s.describe()
    assert time.perf_counter() - start < 20  # walking every step took over an hour
    assert described["peak_step"] == 999 and described["peak"] == 1.0
    # a peak between two samples (a triangle's tip) is still found: no false "never reaches its peak"
    cyclic = schedules.build_schedule("cyclic", 10**9)
    schedules.check_curve(cyclic)
    assert cyclic.describe()["peak"] == 1.0


# --- 10. signals before training -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_signal_during_data_preparation_is_one_line_and_128_plus_the_signal(cache_dir, tmp_path, sig):
    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)  # reading it blocks: data preparation waits here until the signal comes
    run_dir = tmp_path / "run"
    args = hydra_args(tmp_path / "cache", run_dir, **{"data": "files", "data.paths": f"[{fifo}]"})
    with open(tmp_path / "out.txt", "w") as out_file, open(tmp_path / "err.txt", "w") as err_file:
        proc = start_python([ROOT / "train.py", *args], out_file, err_file)
    deadline = time.time() + 120
    while not (run_dir / LOCK_FILE).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    out, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err + out
    assert err.strip().splitlines()[-1].startswith(f"stopped by {signal.Signals(sig).name} outside training")
    assert not (run_dir / "metrics.jsonl").exists()


@pytest.mark.slow
def test_more_ctrl_c_while_a_stopped_run_exits_is_no_traceback(cache_dir, tmp_path):
    """Ctrl-C, then Ctrl-C again and again while the run saves its checkpoint and exits (the
    clean-up at exit included): status 130, no traceback, the checkpoint saved."""
    run_dir = tmp_path / "run"
    args = hydra_args(cache_dir, run_dir, **{**B, "trainer.max_steps": 400})
    log = open(tmp_path / "out.txt", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.time() + 120
    while len(read_metrics(run_dir)) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    while proc.poll() is None and time.time() < deadline:  # keep pressing it until the process is gone
        time.sleep(0.01)
        try:
            proc.send_signal(signal.SIGINT)
        except ProcessLookupError:
            break
    proc.wait(timeout=60)
    out = (tmp_path / "out.txt").read_text()
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "Exception ignored" not in out, out[-3000:]
    assert list_checkpoints(run_dir), out[-3000:]

