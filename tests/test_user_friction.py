"""The smaller things a new user ran into (issue 27, item 6), each checked in process."""

import json
import logging
import shlex
import sys
import types
from pathlib import Path

import pytest
from hydra.types import RunMode
from omegaconf import OmegaConf

from helpers import ROOT
from minigpt.errors import UserError
from minigpt.launch import cli
from minigpt.launch.compose import CONF_DIR, hydra_search_path
from minigpt.run.trainer import Trainer
from minigpt.studies.sweep.jobs import find_jobs


def fake_hc(run_dir: Path, multirun: bool = False, num: int = 0, launcher: str = "basic", task=()):
    """The parts of a Hydra job's HydraConfig that cli.run_job reads."""
    return types.SimpleNamespace(
        runtime=types.SimpleNamespace(output_dir=str(run_dir), choices={"hydra/launcher": launcher}),
        mode=RunMode.MULTIRUN if multirun else RunMode.RUN, job=types.SimpleNamespace(num=num, override_dirname=""),
        sweep=types.SimpleNamespace(dir=str(run_dir.parent)), overrides=types.SimpleNamespace(task=list(task)),
        sweeper={})


def test_plus_on_a_key_the_config_has_says_drop_the_plus():
    with pytest.raises(UserError) as e:
        cli.precheck(["+scheduler.warmup=10"])
    assert str(e.value) == ("scheduler.warmup is already in the config: drop the + (scheduler.warmup=10); '+' adds a "
                            "key that no config file holds")


@pytest.mark.slow
def test_help_lists_no_internal_group():
    """--help lists the groups a user picks from; the schedules' defaults are no group of their own
    (the scheduler group comes from the registry: minigpt/launch/compose.py: register_defaults)."""
    from hydra.core.global_hydra import GlobalHydra

    with hydra_search_path([CONF_DIR]):
        listed = GlobalHydra.instance().hydra.format_config_groups(lambda g: not g.startswith("hydra"))
    groups = [line.split(":")[0] for line in listed.splitlines()]
    assert "scheduler" in groups and "model" in groups and not any("defaults" in g for g in groups)


def test_a_stopped_sweep_prints_the_sweeps_resume_command(monkeypatch, tmp_path):
    job = tmp_path / "sweep" / "1_scheduler=wsd"
    monkeypatch.setenv(cli.COMMAND_ENV, "-m scheduler=cosine_warmup,wsd 'optim.lr=1e-3,3e-3' hydra.sweep.dir=x")
    hc = fake_hc(job, multirun=True, task=["scheduler=wsd", "optim.lr=1e-3"])
    assert cli.resume_command(hc, job, multirun=True) == (
        f"python train.py -m scheduler=cosine_warmup,wsd optim.lr=1e-3,3e-3 hydra.sweep.dir={tmp_path / 'sweep'} "
        "trainer.resume=auto")
    assert cli.resume_command(hc, job, multirun=False) == shlex.join(
        ["python", "train.py", "scheduler=wsd", "optim.lr=1e-3", f"hydra.run.dir={job}", "trainer.resume=auto"])


def test_every_launcher_ends_a_sweep_with_a_line_per_job(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for name, summary in (("0_seed=1", {"status": "completed", "final_val_loss": 4.25}),
                          ("1_seed=2", {"status": "failed", "reason": "data.text_field: no column 'body'"}),
                          ("10_seed=3", None), ("2_seed=4", {"status": "diverged", "reason": "loss is nan"})):
        (sweep / name / ".hydra").mkdir(parents=True)
        if summary:
            (sweep / name / "summary.json").write_text(json.dumps(summary))
    (sweep / "multirun.yaml").write_text("")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "runtime": {"choices": {"hydra/launcher": "basic"}}}})
    cli.SweepSummary().on_multirun_end(config)
    assert capsys.readouterr().out.splitlines() == [
        f"sweep {sweep}: 4 jobs",
        "  0_seed=1: completed; final val loss 4.2500",
        "  1_seed=2: failed; data.text_field: no column 'body'",
        "  2_seed=4: diverged; loss is nan",
        "  10_seed=3: no summary.json (stopped before it ended, or still running)"]
    config.hydra.runtime.choices["hydra/launcher"] = "stacked"  # prints its own after training
    cli.SweepSummary().on_multirun_end(config)
    assert capsys.readouterr().out == ""
    hydra_conf = OmegaConf.load(ROOT / "conf" / "hydra" / "default.yaml")
    assert hydra_conf.callbacks.sweep_summary._target_ == "minigpt.launch.cli.SweepSummary"


def test_parallel_jobs_and_stacked_runs_name_themselves_in_their_lines(make_config, tmp_path, capsys, caplog):
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    kept = root.handlers[:]
    root.addHandler(console)
    try:
        cli._name_the_job_in_console_lines(3)
        logging.getLogger("minigpt").warning("done: final val loss 4.1")
    finally:
        root.handlers[:] = kept
    assert "[job 3] done: final val loss 4.1" in capsys.readouterr().out

    with caplog.at_level(logging.INFO, logger="minigpt"):
        run = Trainer(make_config(trainer__max_steps=1), tmp_path / "0_seed=1", label="0_seed=1")
        run.close()
    assert any(r.getMessage().startswith("[0_seed=1] ") for r in caplog.records)


def test_log_lines_go_above_the_progress_bar(tmp_path, capsys):
    from tqdm.contrib.logging import _TqdmLoggingHandler

    from minigpt.config import LoggerConfig
    from minigpt.run.metrics import MetricsLogger

    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    kept = root.handlers[:]
    root.handlers[:] = [console]
    try:
        metrics = MetricsLogger(tmp_path, LoggerConfig(), config={}, total_steps=4, progress=True)
        assert any(isinstance(h, _TqdmLoggingHandler) for h in root.handlers)  # lines through tqdm.write
        metrics.close()
        assert root.handlers == [console]  # put back when the bar is gone
    finally:
        root.handlers[:] = kept


def test_a_bad_input_found_by_the_data_leaves_a_failed_summary(make_config, tmp_path):
    import pandas as pd

    table = tmp_path / "rows.parquet"
    pd.DataFrame({"body": [f"row {i} " * 30 for i in range(50)]}).to_parquet(table)
    cfg = make_config(data__source="files", data__paths=[str(table)], data__name="rows",
                      data__cache_dir=str(tmp_path / "data"))
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)  # Hydra made it, with .hydra/
    with pytest.raises(SystemExit) as e:
        cli.run_job(cfg, fake_hc(run_dir))
    assert e.value.code == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "data.text_field" in summary["reason"] and "'text'" in summary["reason"]
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("- data=files\n")
    assert [j.status for j in find_jobs(tmp_path / "runs")] == ["failed"]


