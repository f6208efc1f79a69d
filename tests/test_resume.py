"""Never lose a run: exact resume, clean stops on signals, and files that survive crashes.

The end-to-end tests run `train.py` as a user would (CPU, fp32, a tiny model, a checkpoint
every 3 steps), kill or signal it in the middle of the run, resume it, and compare every
per-step record with an uninterrupted run of the same config, to the bit.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import ROOT, hydra_args, nested, run_python, run_train, start_python, tiny_overrides
from minigpt.run import checkpoint as ckpt_mod
from minigpt.data import cache as data_mod
from minigpt.config import config_from_dict
from minigpt.run.checkpoint import (checkpoint_path, checkpoint_step, latest_checkpoint, list_checkpoints, load_checkpoint,
                                prune_checkpoints, resume_config_changes, save_checkpoint)
from minigpt.data.cache import prepare_data
from minigpt.errors import UserError
from minigpt.run.metrics import read_metrics
from minigpt.run.trainer import Trainer, train

STEPS = 24
CKPT_EVERY = 3


def run_args(cache_dir, run_dir, **extra) -> list[str]:
    args = {"trainer.max_steps": STEPS, "trainer.ckpt_interval": CKPT_EVERY, "trainer.eval_interval": 5,
            "trainer.precision": "fp32", "trainer.device": "cpu", "trainer.threads": 1,
            "trainer.keep_checkpoints": 2}
    args.update(extra)
    return hydra_args(cache_dir, run_dir, **args)


def start(args: list[str], log: Path):
    with open(log, "w") as out:
        return start_python([ROOT / "train.py", *args], out)


def wait_for_step(proc, run_dir: Path, step: int, log: Path, timeout: float = 300) -> None:
    """Return once metrics.jsonl holds the record of `step` (the run is then past it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [r["step"] for r in read_metrics(run_dir) if "train/loss" in r]
        if steps and steps[-1] >= step:
            return
        assert proc.poll() is None, f"the run ended before step {step}:\n{log.read_text()[-3000:]}"
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def deterministic(record: dict) -> dict:
    """A record without its timings: everything left must match between runs, bit for bit."""
    return {k: v for k, v in record.items() if not k.startswith("perf/")}


def assert_same_as_reference(run_dir: Path, reference: list[dict]) -> None:
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(STEPS + 1))  # each step once, then the final eval
    train_records = [r for r in records if "train/loss" in r]
    ref_train = [r for r in reference if "train/loss" in r]
    # JSON floats round-trip exactly, so == here is equality of the float64 bits.
    assert [r["train/loss"] for r in train_records] == [r["train/loss"] for r in ref_train]
    assert [r["train/lr"] for r in train_records] == [r["train/lr"] for r in ref_train]
    assert [deterministic(r) for r in records] == [deterministic(r) for r in reference]


@pytest.fixture(scope="module")
def reference(cache_dir, tmp_path_factory):
    """An uninterrupted run, started in the background so that the tests below overlap with it."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    log = run_dir.parent / "log.txt"
    proc = start(run_args(cache_dir, run_dir, **{"trainer.keep_checkpoints": 100}), log)

    def result() -> tuple[Path, list[dict]]:
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        return run_dir, read_metrics(run_dir)

    return result


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_auto_is_bitwise_identical(reference, cache_dir, tmp_path):
    kill_at = random.randint(1, STEPS // 2)
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    proc = start(run_args(cache_dir, run_dir), log)
    wait_for_step(proc, run_dir, kill_at, log)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL, f"the run was not killed in the middle (kill_at={kill_at})"
    saved = latest_checkpoint(run_dir)

    resumed = run_train(run_args(cache_dir, run_dir, **{"trainer.resume": "auto"}))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if saved is None:  # killed before the first checkpoint: starts over, dropping the records it had
        assert f"resume: no checkpoint in {run_dir}; starting from step 0" in resumed.stdout, kill_at
    else:
        assert f"resume: from {saved} at step {checkpoint_step(saved)}" in resumed.stdout, kill_at
    ref_dir, ref_records = reference()
    assert_same_as_reference(run_dir, ref_records)
    # keep_checkpoints=2: the two newest remain, the last one at the end of the run
    assert list_checkpoints(run_dir) == [checkpoint_path(run_dir, STEPS - CKPT_EVERY), checkpoint_path(run_dir, STEPS)]
    assert not list((run_dir / "checkpoints").glob("*.tmp"))


@pytest.mark.slow
def test_resume_from_a_given_checkpoint_into_a_new_run_dir(reference, cache_dir, tmp_path):
    ref_dir, ref_records = reference()
    source = checkpoint_path(ref_dir, 12)
    run_dir = tmp_path / "run"
    proc = run_train(run_args(cache_dir, run_dir, **{"trainer.resume": str(source)}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # another run's checkpoint: a branch, a run of its own that starts with the parent's records
    assert f"branch: from {source} at step 12" in proc.stdout
    # the reference kept every checkpoint; that is the one change, and it is reported
    assert "resume: config changes from the checkpoint: trainer.keep_checkpoints: 100 -> 2\n" in proc.stdout
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(STEPS + 1))
    assert [deterministic(r) for r in records] == [deterministic(r) for r in ref_records]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == str(source) and summary["branched_from"] == str(source)


@pytest.mark.slow
def test_sigterm_sigint_sigusr1_save_at_the_next_step_and_say_how_to_resume(reference, cache_dir, tmp_path):
    """One run stopped three times, once by each signal; the printed command finishes it."""
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    args = run_args(cache_dir, run_dir)
    command = None
    for sig, steps_later in ((signal.SIGTERM, 2), (signal.SIGINT, 4), (signal.SIGUSR1, 3)):
        resumed_at = checkpoint_step(latest_checkpoint(run_dir)) if command else 0
        proc = start(shlex.split(command)[2:] if command else args, log)
        wait_for_step(proc, run_dir, resumed_at + steps_later, log)
        proc.send_signal(sig)
        assert proc.wait(timeout=300) == 128 + sig, log.read_text()[-3000:]
        out = log.read_text()
        assert "Traceback" not in out
        records = [r for r in read_metrics(run_dir) if "train/loss" in r]
        stop_step = records[-1]["step"] + 1  # the boundary after the last step that was done
        assert latest_checkpoint(run_dir) == checkpoint_path(run_dir, stop_step)  # saved right there
        assert f"stopped by {sig.name} at step {stop_step}; checkpoint {checkpoint_path(run_dir, stop_step)}" in out
        command = out.split("Resume with:")[1].strip().splitlines()[0]
        assert command.startswith("python train.py ") and command.endswith(f"hydra.run.dir={run_dir} trainer.resume=auto")
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["step"] == stop_step
    proc = run_python([ROOT / "train.py", *shlex.split(command)[2:]], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, ref_records = reference()
    assert_same_as_reference(run_dir, ref_records)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_under_ddp_a_signal_to_one_rank_stops_every_rank_at_the_same_step(cache_dir, tmp_path):
    """Slurm may signal the ranks at different moments: they agree at a flush, then all stop."""
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    args = run_args(cache_dir, run_dir, **{"trainer.max_steps": 400, "trainer.ckpt_interval": 0,
                                           "trainer.flush_every": 4, "trainer.eval_interval": 1000})
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             str(ROOT / "train.py"), *args], cwd=ROOT, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_for_step(proc, run_dir, 10, log)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2, workers
        os.kill(int(workers[1]), signal.SIGUSR1)  # one rank only
        proc.wait(timeout=120)  # a rank stopping alone would leave the other waiting in a collective
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    records = [r for r in read_metrics(run_dir) if "train/loss" in r]
    stop_step = records[-1]["step"] + 1
    assert [r["step"] for r in records] == list(range(stop_step))
    assert stop_step % 4 == 0 and stop_step < 400  # at the boundary after a flush, where the ranks agreed
    assert list_checkpoints(run_dir) == [checkpoint_path(run_dir, stop_step)]
    assert out.count(f"stopped by SIGUSR1 at step {stop_step}; checkpoint {checkpoint_path(run_dir, stop_step)}") == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["world_size"] == 2


# --- resume checks, in process ---------------------------------------------------------------


@pytest.fixture(scope="module")
def short_run(cache_dir, tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4 (tests that write to it copy it)."""
    overrides = {**tiny_overrides(cache_dir), "trainer.max_steps": 4, "trainer.ckpt_interval": 2,
                 "trainer.eval_interval": 2}
    run_dir = tmp_path_factory.mktemp("short") / "first"
    result = train(config_from_dict(nested(overrides)), run_dir, quiet=True)
    assert result.checkpoint == checkpoint_path(run_dir, 4)
    return result.checkpoint


@pytest.mark.parametrize("change, named", [
    ({"model__n_layer": 3}, "model.n_layer (2 -> 3)"),
    ({"model__n_embd": 64}, "model.n_embd (32 -> 64)"),
    ({"model__block_size": 64}, "model.block_size (32 -> 64)"),
    ({"data__vocab_size": 640}, "data.vocab_size (512 -> 640)"),
    ({"data__tokenizer": "byte"}, "data.tokenizer ('bpe' -> 'byte')"),
    ({"data__max_chars": 300_000}, "data.max_chars (400000 -> 300000)"),
    ({"data__val_fraction": 0.1}, "data.val_fraction (0.05 -> 0.1)"),
])
@pytest.mark.slow
def test_resume_refuses_another_model_shape_tokenizer_or_data(short_run, make_config, tmp_path, cache_dir, change,
                                                               named):
    caches = sorted(p.name for p in cache_dir.iterdir())
    with pytest.raises(UserError) as err:
        Trainer(make_config(trainer__resume=str(short_run), **change), tmp_path / "second", quiet=True)
    message = str(err.value)
    assert message.startswith("trainer.resume: ") and named in message and "\n" not in message
    assert sorted(p.name for p in cache_dir.iterdir()) == caches  # refused before any data was prepared


def test_resume_allows_and_reports_safe_changes(short_run, make_config, tmp_path, caplog):
    run_dir = tmp_path / "first"
    shutil.copytree(short_run.parents[1], run_dir)
    short_run = checkpoint_path(run_dir, 4)
    cfg = make_config(trainer__max_steps=7, trainer__eval_interval=3, trainer__ckpt_interval=2,
                      model__dropout=0.1, trainer__resume="auto")
    with caplog.at_level("INFO", logger="minigpt"):
        result = Trainer(cfg, run_dir).run()
    assert result.status == "completed"
    text = caplog.text
    assert "resume: config changes from the checkpoint:" in text
    assert "trainer.max_steps: 4 -> 7" in text and "trainer.eval_interval: 2 -> 3" in text
    assert "model.dropout: 0.0 -> 0.1" in text  # no change of shape: the weights still fit
    assert "trainer.resume" not in text.split("config changes")[1].splitlines()[0]  # not a change worth a word
    assert f"resume: from {short_run} at step 4" in text
    records = read_metrics(run_dir)
    # steps 0-3 from the first run (its final evaluation at step 4 dropped), then 4-6 and the final eval
    assert [r["step"] for r in records] == list(range(8))
    assert [r["step"] for r in records if "val/loss" in r] == [0, 2, 6, 7]


def test_resume_config_changes_names_every_difference():
    saved = {"model": {"n_layer": 2, "n_head": 2, "dropout": 0.0}, "data": {"vocab_size": 512, "cache_dir": "a"},
             "trainer": {"max_steps": 10, "resume": None}}
    safe = {"model": {"n_layer": 2, "n_head": 2, "dropout": 0.1}, "data": {"vocab_size": 512, "cache_dir": "b"},
            "trainer": {"max_steps": 20, "resume": "auto"}}
    assert resume_config_changes(saved, safe, Path("c.pt")) == [
        "data.cache_dir: 'a' -> 'b'", "model.dropout: 0.0 -> 0.1", "trainer.max_steps: 10 -> 20"]
    unsafe = {**safe, "model": {"n_layer": 4, "n_head": 1, "dropout": 0.0}, "data": {"vocab_size": 256}}
    with pytest.raises(UserError, match=r"data.vocab_size \(512 -> 256\), model.n_head \(2 -> 1\), "
                                        r"model.n_layer \(2 -> 4\)"):
        resume_config_changes(saved, unsafe, Path("c.pt"))


def test_resume_continues_the_same_wandb_run(make_config, tmp_path, monkeypatch):
    """The wandb run id is saved in the checkpoint and handed back to wandb.init on resume."""
    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        run = types.SimpleNamespace(id=kwargs.get("id") or "run-abc123", summary={})
        run.log = lambda *a, **k: None
        run.finish = lambda **k: None
        return run

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    cfg = dict(logger__wandb=True, logger__mode="offline", trainer__ckpt_interval=2, trainer__max_steps=2)
    first = train(make_config(**cfg), tmp_path, quiet=True)
    assert load_checkpoint(first.checkpoint)["wandb_id"] == "run-abc123"
    train(make_config(**{**cfg, "trainer__max_steps": 3, "trainer__resume": "auto"}), tmp_path, quiet=True)
    assert calls[0]["id"] is None and calls[0]["resume"] is None
    assert calls[1]["id"] == "run-abc123" and calls[1]["resume"] == "allow"


@pytest.mark.slow
def test_rewinding_to_an_older_checkpoint_drops_the_later_history(make_config, tmp_path):
    run_dir = tmp_path / "run"
    cfg = dict(trainer__ckpt_interval=2, trainer__eval_interval=100)
    train(make_config(trainer__max_steps=6, trainer__keep_checkpoints=10, **cfg), run_dir, quiet=True)
    assert [checkpoint_step(p) for p in list_checkpoints(run_dir)] == [2, 4, 6]
    # Back to step 2, now for a 4-step run keeping one checkpoint: the old step 6 must neither
    # outlive the rewind (resume=auto would pick it) nor make pruning delete the new step 4.
    rewind = make_config(trainer__max_steps=4, trainer__keep_checkpoints=1,
                         trainer__resume=str(checkpoint_path(run_dir, 2)), **cfg)
    assert train(rewind, run_dir, quiet=True).status == "completed"
    assert list_checkpoints(run_dir) == [checkpoint_path(run_dir, 4)]
    assert load_checkpoint(latest_checkpoint(run_dir))["config"]["trainer"]["max_steps"] == 4
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(5))


def test_resume_auto_without_a_checkpoint_starts_over_and_drops_the_earlier_records(make_config, tmp_path):
    """A run killed before its first checkpoint left records only: resume=auto starts at step 0, once."""
    tmp_path.joinpath("metrics.jsonl").write_text("".join(json.dumps({"step": s, "train/loss": 9.0}) + "\n"
                                                          for s in range(3)) + '{"step": 3, "tra')
    result = train(make_config(trainer__max_steps=4, trainer__resume="auto"), tmp_path, quiet=True)
    records = read_metrics(tmp_path)
    assert result.status == "completed" and [r["step"] for r in records] == list(range(5))
    assert all(r["train/loss"] != 9.0 for r in records[:4])


# --- checkpoint files ------------------------------------------------------------------------


def small_state(step: int) -> dict:
    return {"model": {"w": torch.full((3,), float(step))}, "step": step, "config": {"seed": 1}}


def checkpoint_like(folder: Path) -> list[str]:
    """Every file in the folder that a reader could take for a checkpoint."""
    return sorted(p.name for p in folder.iterdir() if ".pt" in p.name)


@pytest.mark.parametrize("fail_in", ["torch.save", "rename"])
def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch, fail_in):
    good = save_checkpoint(small_state(3), checkpoint_path(tmp_path, 3))
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half the bytes are out, then the disk fills
        raise OSError(28, "No space left on device")

    def broken_replace(src, dst):
        raise OSError(5, "Input/output error")

    if fail_in == "torch.save":
        monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    else:
        monkeypatch.setattr(ckpt_mod.os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_checkpoint(small_state(6), checkpoint_path(tmp_path, 6))
    monkeypatch.undo()
    folder = tmp_path / "checkpoints"
    # no partial file, under any name, and no checksum of a checkpoint that does not exist
    assert checkpoint_like(folder) == ["step_0000003.pt", "step_0000003.pt.sha256"]
    assert latest_checkpoint(tmp_path) == good
    state = load_checkpoint(good)
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.full((3,), 3.0))


@pytest.mark.slow
def test_a_run_whose_save_fails_resumes_from_the_previous_checkpoint(make_config, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    cfg = dict(trainer__ckpt_interval=2, trainer__eval_interval=100)
    real_save = torch.save
    calls = []

    def save_fails_second_time(obj, f, *args, **kwargs):
        calls.append(obj["step"])
        real_save(obj, f, *args, **kwargs)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", save_fails_second_time)
    with pytest.raises(OSError):
        train(make_config(trainer__max_steps=6, **cfg), run_dir, quiet=True)
    monkeypatch.undo()
    assert calls == [2, 4]
    assert checkpoint_like(run_dir / "checkpoints") == ["step_0000002.pt", "step_0000002.pt.sha256"]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    result = train(make_config(trainer__max_steps=6, trainer__resume="auto", **cfg), run_dir, quiet=True)
    assert result.status == "completed" and result.summary["resumed_from"] == str(checkpoint_path(run_dir, 2))
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(7))


def test_pruning_keeps_the_newest_checkpoints_by_step_and_never_the_newest(tmp_path):
    steps = [3, 9_999_999, 10_000_000, 12]  # 10_000_000 sorts first as text: the order must be numeric
    for s in steps:
        save_checkpoint(small_state(s), checkpoint_path(tmp_path, s))
    (tmp_path / "checkpoints" / "step_0000001.pt.tmp").write_bytes(b"left by a crash")
    assert [checkpoint_step(p) for p in prune_checkpoints(tmp_path, 2)] == [3, 12]
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [9_999_999, 10_000_000]
    assert checkpoint_like(tmp_path / "checkpoints") == ["step_10000000.pt", "step_10000000.pt.sha256",
                                                         "step_9999999.pt", "step_9999999.pt.sha256"]  # .tmp gone
    prune_checkpoints(tmp_path, 0)  # a keep below 1 still keeps the newest
    assert list_checkpoints(tmp_path) == [checkpoint_path(tmp_path, 10_000_000)]
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 10_000_000


def test_checkpoints_refuse_pickles_that_could_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model": {}, "step": 0, "extra": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match=r"holds a Python object .* that a safe weights_only load refuses"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(UserError, match="is not a minigpt checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="no model or step in it"):
        load_checkpoint(tmp_path / "other.pt")


def test_a_real_checkpoint_holds_only_safe_types_and_everything_to_resume(short_run):
    state = torch.load(short_run, weights_only=True)  # would raise on any object outside the safe set
    for key in ("model", "optimizer", "scaler", "step", "tokens_seen", "rng", "monitor", "val_history", "config",
                "model_config", "data_key", "tokenizer", "wandb_id"):
        assert key in state, key
    assert state["step"] == 4 and not any(k.startswith("_orig_mod.") for k in state["model"])
    assert set(state["rng"]) >= {"torch", "python", "numpy"}


# --- token cache -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_half_written_token_cache_is_detected_and_rebuilt(make_config, tmp_path, monkeypatch):
    cfg = make_config(data__cache_dir=str(tmp_path), data__max_chars=100_000).data

    def interrupted(parts, tokenizer, cache, *args):
        (cache / "train.bin.tmp").write_bytes(b"\0" * 10)  # Ctrl-C while the training tokens were written
        raise KeyboardInterrupt

    monkeypatch.setattr(data_mod, "_write_tokens", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, log=lambda m: None, progress=False)
    monkeypatch.undo()
    (cache,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (cache / "tokenizer.json").exists() and not (cache / "meta.json").exists()

    messages = []
    data = prepare_data(cfg, log=messages.append, progress=False)
    assert any("is incomplete" in m and "rebuilding" in m for m in messages), messages
    train_tokens = np.array(data.train)
    assert len(train_tokens) == data.meta["train_tokens"] > 0

    # A cache whose token file was cut short (a disk filled up, a copy was interrupted) is rebuilt too.
    with open(cache / "train.bin", "r+b") as f:
        f.truncate(100)
    messages.clear()
    again = prepare_data(cfg, log=messages.append, progress=False)
    assert any("is incomplete" in m for m in messages), messages
    assert np.array_equal(np.array(again.train), train_tokens)  # the same tokens as before

    messages.clear()
    prepare_data(cfg, log=messages.append, progress=False)
    assert any("reusing token cache" in m for m in messages), messages  # and a whole cache is reused
