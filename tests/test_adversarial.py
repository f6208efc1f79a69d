"""The defects of issue 28 ("258 adversarial cases, 12 defects"), each with its reproduction.

Numbered as in the issue: 1 unbounded memory from a valid integer, 2 symlinks in run and cache
folders, 3 an overwrite that moved everything, 4 the claim before Hydra writes, 5 token caches
checked by content, 6 a deleted checksum, 7 corpus files that change during preparation, 8 a
healthy cache called damaged, 9 tracebacks for bad input, 10 meaningless values, 11 duplicated
records, 12 code named by a fit file, and the two "also seen". In process on tiny runs; a
subprocess only where the exit status, a memory limit or a second process is the point.
docs/reliability.md's fault table names the test of each row.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, nested, tiny_overrides, run_python

from minigpt import schedules
from minigpt.config import MAX_STEPS, config_from_dict
from minigpt.errors import UserError
from minigpt.launch.precheck import precheck
from minigpt.plan import BatchPlan


def peak_bytes(fn):
    """(result, the peak of Python's allocations while fn ran)."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- 1. bounded memory and time for any value the config accepts -----------------------------


@pytest.mark.parametrize("override", ["trainer.max_steps=1e30", "trainer.max_steps=1000000000001",
                                      "trainer.max_steps=null trainer.max_tokens=1e30",
                                      "trainer.max_steps=null trainer.max_tokens=1e400",
                                      "trainer.max_steps=null trainer.epochs=inf",
                                      "trainer.batch_ramp_start=4 trainer.batch_ramp_tokens=1e30"])
def test_a_run_length_that_cannot_be_meant_is_refused_in_one_line(override, tmp_path):
    with pytest.raises(UserError, match=r"trainer\.(max_steps|max_tokens|epochs|batch_ramp_tokens)") as e:
        precheck([*override.split(), f"hydra.run.dir={tmp_path / 'r'}"])
    assert "\n" not in str(e.value)


@dataclass(frozen=True)
class TipParams:
    def validate(self, total_steps):
        pass


def test_the_curve_check_finds_a_tip_between_samples_in_bounded_memory(schedule_registry_kept, monkeypatch):
    # A triangle whose tip lies between two samples and on no phase boundary: the old check held
    # every step of the gap around the highest sample in a set (total / EXACT_STEPS steps: 5 x
    # 10^24 at 10^30); the zoom finds the tip in O(log n) rounds. Scaled down to 2,000 samples
    # so that it takes a tenth of a second (the real 200,000: the slow test of a 10^9-step run).
    monkeypatch.setattr(schedules, "EXACT_STEPS", 2000)

    @schedules.register_schedule("tip_between_samples", TipParams)
    def tip(step, total_steps, p):
        return 1.0 - abs(step - (total_steps // 3 + 12345)) / total_steps

    schedule = schedules.build_schedule("tip_between_samples", MAX_STEPS)
    assert schedule.describe()["peak_step"] == MAX_STEPS // 3 + 12345
    huge = schedules.build_schedule("tip_between_samples", 10**30)  # the check alone, without the config's cap
    steps, peak = peak_bytes(lambda: schedules.curve_steps(huge))
    assert peak < 20e6 and len(steps) < 20_000
    assert huge(max(steps, key=huge)) == 1.0


def test_the_ramp_arithmetic_is_per_batch_level_and_exact():
    import random

    def updates_walked(b, tokens):  # the definition: one update at a time
        seen, n = 0, 0
        while seen < min(tokens, b.ramp_tokens):
            seen, n = seen + b.batch_at(seen) * b.block_size, n + 1
        return max(1, n + max(0, math.ceil((tokens - seen) / b.final_tokens)))

    rng = random.Random(0)
    for _ in range(300):
        q = rng.choice([1, 2, 8])
        final = q * rng.randint(1, 30)
        b = BatchPlan(final, max(q, rng.randint(1, final) // q * q), rng.randint(1, 5000), q, rng.choice([1, 16]))
        for tokens in (1, b.ramp_tokens, rng.randint(1, 20000)):
            assert b.updates_for(tokens) == updates_walked(b, tokens)
    # a ramp of 10^15 tokens in updates of 64 tokens: 1.5 x 10^13 turns of the old loop
    long = BatchPlan(1024, 4, 10**15, 4, 16)
    assert long.tokens_after(long.updates_for(10**15)) >= 10**15


def test_predict_loss_reads_a_run_claiming_step_10_to_the_12_in_bounded_memory(tmp_path):
    from minigpt.studies import loss_prediction as lp

    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "train/lr": 0.001}\n{"step": 1000000000000, "train/lr": 0.001}\n')
    with pytest.raises(UserError, match="reach step 999,999,999,999|past the"):
        peak_bytes(lambda: lp.read_run(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "train/lr": 0.001}\n{"step": 900000, "train/lr": 0.001}\n')
    with pytest.raises(UserError, match=r"missing for 899,?999 of steps 0..900000 \(first: 1\)"):
        lp.read_run(tmp_path)


LIMITED = textwrap.dedent("""
    import resource, runpy, sys
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GB of address space
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


@pytest.mark.slow
def test_train_py_with_max_steps_1e30_under_1_gb_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-c", LIMITED, str(ROOT / "train.py"), "trainer.max_steps=1e30",
                           f"hydra.run.dir={tmp_path / 'r'}"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "trainer.max_steps" in proc.stderr
    assert not (tmp_path / "r").exists()


# --- 2. no link in a run or cache folder is followed --------------------------------------------


@pytest.fixture
def tiny(cache_dir):
    def make(**overrides):
        merged = {**tiny_overrides(cache_dir), "trainer.max_steps": 4, "model.n_layer": 1}
        merged.update({k.replace("__", "."): v for k, v in overrides.items()})
        return config_from_dict(nested(merged))

    return make


def important(tmp_path) -> Path:
    target = tmp_path / "important"
    target.write_text("years of notes\n")
    return target


@pytest.mark.parametrize("kind", ["link", "folder", "fifo"])
def test_a_lock_path_that_is_not_a_regular_file_is_refused_in_one_line(tiny, tmp_path, kind):
    from minigpt.run.folder import LOCK_FILE
    from minigpt.run.trainer import train

    run_dir = tmp_path / "R"
    run_dir.mkdir()
    target = important(tmp_path)
    lock = run_dir / LOCK_FILE
    {"link": lambda: lock.symlink_to(target), "folder": lock.mkdir, "fifo": lambda: os.mkfifo(lock)}[kind]()
    expected = r"the lock file '.*\.minigpt\.lock' is (a symbolic link|not a)"
    with pytest.raises(UserError, match=expected) as e:  # the precheck
        precheck([f"hydra.run.dir={run_dir}", "trainer.max_steps=4"])
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=expected):  # and the trainer's claim
        train(tiny(), run_dir, quiet=True)
    assert target.read_text() == "years of notes\n"
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]


@pytest.mark.slow
def test_links_planted_as_the_runs_temporaries_are_replaced_never_written_through(tiny, tmp_path, monkeypatch):
    from minigpt.run.trainer import train

    run_dir = tmp_path / "R"
    (run_dir / "checkpoints").mkdir(parents=True)
    target = important(tmp_path)
    planted = ["summary.json.tmp", "metrics.jsonl.tmp", "schedule.png.tmp", "checkpoints/step_0000004.pt.tmp",
               "checkpoints/step_0000004.pt.sha256.tmp", "checkpoints/step_0000002.pt.tmp"]
    for name in planted:
        (run_dir / name).symlink_to(target)
    # the write test's name was .minigpt-write-test-<pid>: a link under it was written through
    (run_dir / f".minigpt-write-test-{os.getpid()}").symlink_to(target)
    result = train(tiny(trainer__ckpt_interval=2, trainer__schedule_plot=True), run_dir, quiet=True)
    assert result.status == "completed"
    assert target.read_text() == "years of notes\n"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    # each temporary the run wrote replaced its link (metrics.jsonl is rewritten only at a resume)
    assert [name for name in planted if (run_dir / name).is_symlink()] == ["metrics.jsonl.tmp"]


@pytest.mark.parametrize("name", ["metrics.jsonl", "metrics.jsonl.unreadable"])
def test_a_link_planted_as_a_file_the_run_appends_to_is_refused(tiny, tmp_path, name):
    from minigpt.run.metrics import truncate_metrics
    from minigpt.run.trainer import train

    run_dir = tmp_path / "R"
    run_dir.mkdir()
    target = important(tmp_path)
    (run_dir / name).symlink_to(target)
    with pytest.raises(UserError, match=rf"'{run_dir / name}' is a symbolic link"):
        if name == "metrics.jsonl":
            train(tiny(), run_dir, quiet=True)
        else:
            (run_dir / "metrics.jsonl").write_text('{"step": 0}\ngarbled\n')
            truncate_metrics(run_dir, 1)
    assert target.read_text() == "years of notes\n"


# --- 3. overwrite moves only the run's own files -------------------------------------------------


@pytest.mark.slow
def test_overwrite_moves_only_the_runs_files_and_refuses_a_folder_holding_more(tiny, tmp_path):
    from minigpt.run.folder import lock_holder
    from minigpt.run.trainer import train

    run_dir = tmp_path / "R"
    train(tiny(trainer__ckpt_interval=2, trainer__schedule_plot=True), run_dir, quiet=True)
    (run_dir / "notes.txt").write_text("mine\n")
    (run_dir / ".git").mkdir()
    before = sorted(p.name for p in run_dir.iterdir())
    for args in ([f"hydra.run.dir={run_dir}", "trainer.overwrite=true", "trainer.max_steps=4"],):
        with pytest.raises(UserError, match=r"overwrite=true moves only a run's own files, and '.*R' also holds "
                                            r"\.git/, notes\.txt; move those"):
            precheck(args)
    with pytest.raises(UserError, match=r"also holds \.git/, notes\.txt"):
        train(tiny(trainer__overwrite=True), run_dir, quiet=True)
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing moved
    (run_dir / "notes.txt").unlink()
    (run_dir / ".git").rmdir()
    (run_dir / "train.log").write_text("the launcher's log\n")
    assert train(tiny(trainer__overwrite=True, trainer__schedule_plot=True), run_dir, quiet=True).status == "completed"
    (aside,) = [p for p in run_dir.iterdir() if p.name.startswith("replaced-")]
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoints", "metrics.jsonl", "schedule.png", "summary.json"]
    assert (run_dir / "train.log").read_text() == "the launcher's log\n"
    assert lock_holder(run_dir) is None


@pytest.mark.slow
def test_overwrite_refuses_a_folder_with_a_live_run_below_naming_it(tiny, tmp_path):
    from minigpt.run.folder import RunFolderLock
    from minigpt.run.trainer import train

    outer = tmp_path / "R"
    train(tiny(), outer, quiet=True)
    (outer / "inner").mkdir()
    # flock locks belong to an open file: the lock held here is seen by the check's own open
    with RunFolderLock(outer / "inner"), \
            pytest.raises(UserError, match=rf"would move a live run below '.*R': inner/ \(in use by pid {os.getpid()}"):
        train(tiny(trainer__overwrite=True), outer, quiet=True)
    assert (outer / "metrics.jsonl").is_file() and not any(p.name.startswith("replaced-") for p in outer.iterdir())


# --- 5. token caches checked by content ------------------------------------------------------------


def byte_data(tmp_path, **extra):
    from minigpt.config import DataConfig

    return DataConfig(tokenizer="byte", max_chars=60_000, cache_dir=str(tmp_path / "cache"), **extra)


def flip_keeping_size_and_mtime(path: Path, position: int, new_id: int) -> None:
    st = path.stat()
    ids = np.fromfile(path, dtype=np.uint16)
    assert ids[position] != new_id
    ids[position] = new_id
    ids.tofile(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("full", [True, False])
def test_ids_changed_to_other_valid_ids_are_found_at_the_next_reuse(tmp_path, monkeypatch, full):
    from minigpt.data import cache as cache_mod

    if not full:  # a large cache: the sampled blocks (the first one holds id 0's neighbours)
        monkeypatch.setattr(cache_mod, "FULL_HASH_BYTES", 0)
    lines = []
    first = cache_mod.prepare_data(byte_data(tmp_path), log=lines.append, progress=False)
    original = np.array(first.train)
    flip_keeping_size_and_mtime(first.cache_dir / "train.bin", 10, (int(original[10]) + 1) % 256)
    again = cache_mod.prepare_data(byte_data(tmp_path), log=lines.append, progress=False)
    assert any("train.bin differs" in line and "rebuilding it" in line for line in lines), lines
    assert np.array_equal(np.array(again.train), original)


def test_an_id_outside_the_vocabulary_never_reaches_the_model():
    import torch

    from minigpt.data.cache import Batches

    tokens = np.full(200, 7, dtype=np.uint16)
    tokens[50:60] = 300  # past a byte tokenizer's 257 ids, with the file's size and stamp unchanged
    batches = Batches(tokens, 16, 8, seed=0, device=torch.device("cpu"), vocab_size=257)
    with pytest.raises(UserError, match=r"the train split holds id 300, outside the vocabulary of 257"):
        for step in range(50):
            batches.train_batch(step, 0)


def test_a_resume_hashes_the_token_files_whole_and_compares_them_with_the_checkpoints(tiny, tmp_path, monkeypatch):
    from minigpt.data import cache as cache_mod
    from minigpt.run.checkpoint import (
        check_compatible,
        checkpoint_path,
        load_checkpoint,
    )
    from minigpt.run.trainer import train

    run_dir = tmp_path / "R"
    private = {"data__cache_dir": str(tmp_path / "cache"), "data__tokenizer": "byte", "data__max_chars": 60_000}
    monkeypatch.setattr(cache_mod, "SAMPLE_BYTES", 16)  # blocks small enough to miss the middle of the file
    train(tiny(**private), run_dir, quiet=True)
    # an id changed between the sampled blocks of a large cache: a reuse does not see it, a resume does
    monkeypatch.setattr(cache_mod, "FULL_HASH_BYTES", 0)
    (cache,) = (tmp_path / "cache").glob("stdlib-*")
    ids = np.fromfile(cache / "train.bin", dtype=np.uint16)
    flip_keeping_size_and_mtime(cache / "train.bin", len(ids) // 2 + 5, (int(ids[len(ids) // 2 + 5]) + 1) % 256)
    with pytest.raises(UserError, match=r"trainer.resume: the token cache .* changed after it was written: train.bin "
                                        "differs from the SHA-256"):
        train(tiny(**private, trainer__max_steps=6, trainer__resume="auto"), run_dir, quiet=True)
    state = load_checkpoint(checkpoint_path(run_dir, 4))
    assert set(state["data_sha256"]) == {"train.bin", "val.bin"}
    check_compatible(state, Path("x.pt"), state["model_config"], state["data_key"], state["data_sha256"])
    other = {**state["data_sha256"], "train.bin": "0" * 64}
    with pytest.raises(UserError, match="token files of cache .* have other SHA-256 hashes"):
        check_compatible(state, Path("x.pt"), state["model_config"], state["data_key"], other)


# --- 8. this process' trouble is not the cache's damage ----------------------------------------------


@pytest.mark.parametrize("error", [ImportError("no module named tokenizers"), MemoryError()])
def test_an_import_or_memory_error_leaves_a_healthy_cache_as_it_was(tmp_path, monkeypatch, error):
    from minigpt.data import cache as cache_mod

    data = cache_mod.prepare_data(byte_data(tmp_path), log=lambda m: None, progress=False)
    meta = (data.cache_dir / "meta.json").read_text()

    def fails(path):
        raise error

    monkeypatch.setattr(cache_mod, "load_tokenizer", fails)
    with pytest.raises(type(error)):
        cache_mod.prepare_data(byte_data(tmp_path), log=lambda m: None, progress=False)
    assert (data.cache_dir / "meta.json").read_text() == meta  # it used to be deleted and the cache rebuilt


# --- 6. a checkpoint whose checksum was deleted -------------------------------------------------------


def test_a_checkpoint_without_its_checksum_beside_checked_ones_is_not_loaded_silently(tmp_path):
    import torch

    from minigpt.run.checkpoint import (
        DamagedCheckpoint,
        checkpoint_path,
        checksum_path,
        load_checkpoint,
        newest_intact_checkpoint,
        save_checkpoint,
    )

    for step in (2, 4):
        save_checkpoint({"model": {"w": torch.ones(2) * step}, "step": step}, checkpoint_path(tmp_path, step))
    checksum_path(checkpoint_path(tmp_path, 4)).unlink()
    with pytest.raises(DamagedCheckpoint, match=r"step_0000004.pt.sha256 is missing, while the run's other "
                                                r"checkpoints have one \(e.g. step_0000002.pt.sha256\)"):
        load_checkpoint(checkpoint_path(tmp_path, 4))
    path, state, skipped = newest_intact_checkpoint(tmp_path)
    assert path == checkpoint_path(tmp_path, 2) and state["step"] == 2
    assert [p.name for p, _ in skipped] == ["step_0000004.pt"]
    # a run saved before checksums existed (none has one) still loads
    checksum_path(checkpoint_path(tmp_path, 2)).unlink()
    assert load_checkpoint(checkpoint_path(tmp_path, 4))["step"] == 4


# --- 10. values that cannot mean anything ---------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("optim.eps", math.inf), ("optim.eps", math.nan), ("optim.weight_decay", math.inf),
    ("optim.weight_decay", math.nan), ("optim.grad_clip", math.inf), ("model.z_loss", math.inf),
    ("model.z_loss", math.nan), ("monitor.loss_limit", math.nan), ("monitor.loss_limit", math.inf),
    ("monitor.spike_k", math.inf), ("monitor.stuck_min_drop", math.inf), ("monitor.stuck_margin", math.nan),
    ("monitor.skip_k", math.inf), ("lr_range_test.stop_factor", math.inf), ("trainer.epochs", math.inf),
    ("model.n_layer", 10**9), ("model.n_embd", 2**20), ("model.block_size", 2**30),
    ("trainer.micro_batch_size", 10**9), ("trainer.grad_accum", 10**9), ("trainer.batch_size", 2**40),
    ("trainer.threads", 10**6), ("data.cache_dir", ""), ("data.cache_dir", "  "),
])
def test_a_meaningless_value_is_refused_in_one_line_naming_its_key(key, value):
    overrides = {"trainer.max_steps": None, key: value} if key == "trainer.epochs" else {key: value}
    if key == "model.n_embd":
        overrides["model.n_head"] = 1
    with pytest.raises(UserError, match=rf"^{key.replace('.', '[.]')}") as e:
        config_from_dict(nested(overrides))
    assert "\n" not in str(e.value)


def test_an_empty_cache_dir_is_refused_by_the_precheck_as_an_empty_run_dir_is(tmp_path):
    with pytest.raises(UserError, match="data.cache_dir is empty, which would put the token caches into the working"):
        precheck(["data.cache_dir=", f"hydra.run.dir={tmp_path / 'r'}"])
    assert not (tmp_path / "r").exists()


# --- 9. bad input that ended in a traceback ---------------------------------------------------------


def test_a_python_tag_in_a_config_dir_file_is_one_line_and_constructs_nothing(tmp_path):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    flag = tmp_path / "ran"
    (tmp_path / "conf" / "model" / "evil.yaml").write_text(
        f'n_layer: !!python/object/apply:os.system ["touch {flag}"]\n')
    with pytest.raises(UserError, match=r"a config file cannot be read in .*evil.yaml, line 1: could not determine "
                                        r"a constructor for the tag .*python/object/apply:os.system"):
        precheck(["--config-dir", str(tmp_path / "conf"), "model=evil", f"hydra.run.dir={tmp_path / 'r'}"])
    assert not flag.exists() and not (tmp_path / "r").exists()


def test_a_model_larger_than_the_machine_is_refused_before_it_is_built(tmp_path):
    with pytest.raises(UserError, match=r"model: 1024 layers of width 65536 need at least [\d,.]+ GiB .* more than "
                                        r"this machine's memory"):
        precheck(["model.n_layer=1024", "model.n_embd=65536", "model.n_head=1", f"hydra.run.dir={tmp_path}/r"])


def test_an_allocation_failure_while_building_the_model_is_one_line(monkeypatch):
    import torch

    from minigpt.run import trainer

    def cannot(config):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 4398046511104 bytes.\nmore")

    monkeypatch.setattr(trainer, "GPT", cannot)
    with pytest.raises(UserError, match=r"model: cannot allocate the model on cpu \(\[enforce fail .* can't allocate"):
        trainer.build_model(None, torch.device("cpu"))


def predict_script():
    """`minigpt predict` (scripts/predict_loss.py is a shim that runs it)."""
    from minigpt.tools import predict

    return predict


FIT = {"law": "multi_power", "params": {"L0": 3.0, "A": 1.6, "alpha": 0.5, "B": 70.0, "C": 0.5, "beta": 0.6,
                                       "gamma": 0.5}, "overrides": ["trainer.max_steps=50"]}


@pytest.mark.parametrize("case", ["train/lr", "overrides.yaml", "params", "overrides", "-o"])
def test_malformed_inputs_of_predict_loss_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, case):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    lr = '"fast"' if case == "train/lr" else "0.001"
    (run_dir / "metrics.jsonl").write_text("".join(f'{{"step": {s}, "train/lr": {lr}, "val/loss": 3.0}}\n'
                                                   for s in range(3)))
    (run_dir / ".hydra" / "overrides.yaml").write_text("- [unclosed\n" if case == "overrides.yaml" else "- a=1\n")
    fit = dict(FIT)
    if case == "params":
        fit["params"] = {**FIT["params"], "alpha": [1, 2]}
    if case == "overrides":
        fit["overrides"] = {"trainer.max_steps": 50}
    (tmp_path / "fit.json").write_text(json.dumps(fit))
    readonly = tmp_path / "ro"
    readonly.write_text("a file where a folder should be")
    args = {"train/lr": ["fit", str(run_dir)], "overrides.yaml": ["fit", str(run_dir)],
            "params": ["predict", str(tmp_path / "fit.json"), "--scheduler", "wsd"],
            "overrides": ["predict", str(tmp_path / "fit.json"), "--scheduler", "wsd"],
            "-o": ["predict", str(tmp_path / "fit.json"), "--scheduler", "wsd", "-o", str(readonly / "out.png")]}[case]
    monkeypatch.chdir(tmp_path)
    assert predict_script().main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert {"train/lr": "train/lr of step 0 in", "overrides.yaml": "overrides.yaml' is not readable YAML",
            "params": "its params, stderr or runs do not read", "overrides": "'overrides' must be a list",
            "-o": "ro: File exists; check the paths given"}[case] in err, err


@pytest.mark.slow
@pytest.mark.parametrize("case", ["epochs=inf", "lock is a folder"])
def test_train_py_ends_bad_input_with_one_line_and_exit_2(tmp_path, case):
    run_dir = tmp_path / "r"
    args = [f"hydra.run.dir={run_dir}"]
    if case == "epochs=inf":
        args += ["trainer.max_steps=null", "trainer.epochs=inf"]
    else:
        (run_dir / ".minigpt.lock").mkdir(parents=True)
    proc = run_python([ROOT / "train.py", *args], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")


# --- 12. a fit file names no code to import ---------------------------------------------------------


def test_predict_and_optimize_refuse_a_scheduler_module_from_a_fit_file(tmp_path, monkeypatch, capsys):
    planted = tmp_path / "planted_schedule.py"
    flag = tmp_path / "imported"
    planted.write_text(f"open({str(flag)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fit = {**FIT, "overrides": ["trainer.max_steps=50", "scheduler=custom", "scheduler.module=planted_schedule",
                                "scheduler.name=x"]}
    (tmp_path / "fit.json").write_text(json.dumps(fit))
    script = predict_script()
    for args in (["predict", str(tmp_path / "fit.json"), "--scheduler", "wsd", "-o", str(tmp_path / "p.png")],
                 ["optimize", str(tmp_path / "fit.json"), "-o", str(tmp_path / "o.json")]):
        assert script.main(args) == 2
        err = capsys.readouterr().err
        assert "sets scheduler.module=planted_schedule, and composing it would import (run) that module's code" in err
    assert not flag.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["fit.json", "planted_schedule.py"]
    # minigpt's own table schedule (what optimize --family free writes) is still taken
    from minigpt.studies import loss_prediction as lp

    own = ["scheduler=custom", "scheduler.module=minigpt.studies.lr_table", "scheduler.name=table"]
    assert lp.fit_overrides({"overrides": own}, "fit.json") == own


# --- 11. every step once, whatever metrics.jsonl held ---------------------------------------------


def test_truncate_metrics_keeps_each_step_once_in_order_and_drops_negative_steps(tmp_path):
    from minigpt.run.metrics import read_metrics, truncate_metrics

    lines = [{"step": 0, "v": "a"}, {"step": 1, "v": "a"}, {"step": -3, "v": "x"}, {"step": 1, "v": "b"},
             {"step": 2, "v": "a"}, {"step": 0, "v": "b"}, {"step": 7, "v": "late"}, {"step": 2, "v": "b"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert truncate_metrics(tmp_path, 3) == (5, 0)
    assert read_metrics(tmp_path) == [{"step": 0, "v": "b"}, {"step": 1, "v": "b"}, {"step": 2, "v": "b"}]
    assert truncate_metrics(tmp_path, 3) == (0, 0)  # a clean file is left as it is


# --- 7. corpus files that change during preparation ----------------------------------------------


@pytest.mark.parametrize("change", ["added", "deleted", "edited"])
def test_a_corpus_file_changed_during_preparation_is_refused_and_the_cache_left_incomplete(tmp_path, monkeypatch,
                                                                                           change):
    from minigpt.config import DataConfig
    from minigpt.data import cache as cache_mod

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"doc{i}.txt").write_text(f"document {i} " * 400 + "\n")
    cfg = DataConfig(source="files", paths=[str(corpus)], tokenizer="byte", cache_dir=str(tmp_path / "cache"))
    real = cache_mod.survey

    def survey_then_change(*args, **kwargs):
        found = real(*args, **kwargs)
        if change == "added":
            (corpus / "doc0a.txt").write_text("a new document\n")
        elif change == "deleted":
            (corpus / "doc2.txt").unlink()
        else:
            with open(corpus / "doc4.txt", "a") as f:
                f.write("more text\n")
        return found

    monkeypatch.setattr(cache_mod, "survey", survey_then_change)
    with pytest.raises(cache_mod.CorpusChanged, match="the corpus changed while it was being prepared"):
        cache_mod.prepare_data(cfg, log=lambda m: None, progress=False)
    assert not list((tmp_path / "cache").glob("*/meta.json"))
    monkeypatch.setattr(cache_mod, "survey", real)
    data = cache_mod.prepare_data(cfg, log=lambda m: None, progress=False)  # the corpus as it is now
    assert data.cache_dir.name.endswith(cache_mod.cache_key(cfg))
    text = "".join(chr(i) for i in np.concatenate([data.train, data.val]) if i < 256)
    assert ("a new document" in text) == (change == "added") and ("document 2" in text) == (change != "deleted")


# --- also seen: the divergence patience scales with the run -------------------------------------------


def test_a_short_run_that_blows_up_is_diverged_not_completed():
    from minigpt.config import MonitorConfig
    from minigpt.run.monitor import Monitor

    monitor = Monitor(MonitorConfig(stuck_after=0.0), total_steps=41)
    assert monitor.patience == 5 and "patience 5 steps for this 41-step run" in monitor.patience_note()
    for step in range(41):
        monitor.observe({"step": step, "train/loss": 5.0 if step < 30 else 7e7, "train/grad_norm": 1.0})
    assert monitor.verdict.diverged and monitor.verdict.step == 34
    assert "for 5 consecutive steps" in monitor.verdict.reason
    long = Monitor(MonitorConfig(), total_steps=10_000)
    assert long.patience == 50 and long.patience_note() is None


# --- also seen: a finished cache on a read-only mount -------------------------------------------------


def test_a_finished_cache_on_a_read_only_mount_is_read_and_a_missing_one_refused(tmp_path, monkeypatch):
    import errno

    from minigpt.data import cache as cache_mod

    data_cfg = byte_data(tmp_path)
    cache_mod.prepare_data(data_cfg, log=lambda m: None, progress=False)
    assert cache_mod.complete_cache(data_cfg)
    real_open = os.open

    def read_only(path, flags, *args):  # what a read-only mount answers to a file being created
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(cache_mod.os, "open", read_only)
    lines = []
    data = cache_mod.prepare_data(data_cfg, log=lines.append, progress=False)
    assert len(data.train) > 0 and lines[-1].endswith(", read-only")
    other = byte_data(tmp_path, split_seed=1)  # a cache that was never prepared
    assert not cache_mod.complete_cache(other)
    with pytest.raises(UserError, match=r"data.cache_dir: '.*cache' cannot be written \(read-only\?\), and the token "
                                        r"cache this run needs, stdlib-\w+, is missing"):
        cache_mod.prepare_data(other, log=lambda m: None, progress=False)


# --- 4. the run folder is claimed before Hydra writes into it ----------------------------------------


@pytest.fixture
def claims_kept_here(monkeypatch):
    """The claim's token goes into the environment (for jobs in other processes): kept to this test."""
    from minigpt.run.folder import CLAIM_ENV, release_early_claims

    monkeypatch.delenv(CLAIM_ENV, raising=False)
    yield CLAIM_ENV
    release_early_claims()


def test_the_precheck_returns_holding_the_run_folders_lock_and_hands_it_to_the_run(tiny, tmp_path, cache_dir,
                                                                                  claims_kept_here, monkeypatch):
    from minigpt.run.folder import RunFolderInUse, RunFolderLock, lock_holder
    from minigpt.run.trainer import train

    run_dir = tmp_path / "R"
    precheck([f"hydra.run.dir={run_dir}", "trainer.max_steps=4", f"data.cache_dir={cache_dir}"])
    # held from here, through Hydra's writes of .hydra/ and the log, to the end of the run
    assert lock_holder(run_dir).startswith(f"pid {os.getpid()} on host ")
    with pytest.raises(RunFolderInUse, match="is in use by another process"), monkeypatch.context() as m:
        m.delenv(claims_kept_here)  # a second launch: no claim of this launcher
        RunFolderLock(run_dir).acquire()
    assert train(tiny(), run_dir, quiet=True).status == "completed"  # the run takes the precheck's lock over
    assert lock_holder(run_dir) is None  # and releases it at its end


def test_the_precheck_claims_no_time_stamped_folder_and_under_torchrun_the_ranks_one(tmp_path, cache_dir,
                                                                                     claims_kept_here, monkeypatch):
    """A run folder named by a time stamp is resolved by Hydra when the job starts (maybe a second
    later): the precheck leaves it to the trainer instead of creating a folder of its own second.
    Under torchrun it claims the folder the ranks share (torchrun-<id>), not the time-stamped default."""
    from minigpt.run.folder import lock_holder

    monkeypatch.chdir(tmp_path)
    precheck(["run_name=plain", "trainer.max_steps=4", f"data.cache_dir={cache_dir}"])
    assert not (tmp_path / "outputs" / "plain").exists()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "f58f043bcafe")
    precheck(["run_name=ddp", "trainer.max_steps=4", f"data.cache_dir={cache_dir}"])
    assert [p.name for p in (tmp_path / "outputs" / "ddp").iterdir()] == ["torchrun-f58f043b"]
    assert lock_holder(tmp_path / "outputs" / "ddp" / "torchrun-f58f043b").startswith(f"pid {os.getpid()} ")


def test_a_job_in_a_process_of_its_own_runs_under_its_launchers_claim(tmp_path, claims_kept_here, monkeypatch):
    from minigpt.run.folder import RunFolderInUse, RunFolderLock, claim_early

    claim_early(tmp_path / "job0")
    job = RunFolderLock(tmp_path / "job0").acquire()  # what a parallel or slurm job finds: the launcher's claim
    assert job.launcher.startswith(f"pid {os.getpid()} ") and "claim" not in job.launcher
    monkeypatch.setenv(claims_kept_here, "another launch")
    with pytest.raises(RunFolderInUse, match=rf"in use by another process \(pid {os.getpid()} on host [^;]*\)"):
        RunFolderLock(tmp_path / "job0").acquire()


def test_two_jobs_of_one_sweep_naming_one_folder_are_refused_before_any_starts(tmp_path, claims_kept_here):
    sweep = tmp_path / "S"
    with pytest.raises(UserError, match=r"hydra.sweep.dir: job 1 of this sweep \(optim.lr=0.002\) and job 0 of this "
                                        r"sweep \(optim.lr=0.001\) would both write into '.*S/same'"):
        precheck(["-m", "optim.lr=0.001,0.002", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=same",
                      "trainer.max_steps=4"])
    assert not sweep.exists()
