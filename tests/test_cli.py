"""train.py as a user runs it: Hydra overrides in, run directory out, one-line errors."""

import json
import re

import pytest

from helpers import hydra_args, run_train


@pytest.mark.slow
def test_train_py_runs_end_to_end_with_overrides(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train(hydra_args(cache_dir, run_dir, **{"scheduler": "constant", "optim.lr": 3e-3,
                                                        "trainer.max_steps": 8,
                                                        "trainer.schedule_plot": True}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == list(range(8))
    assert all(r["train/lr"] == 3e-3 for r in records if "train/lr" in r)  # constant schedule, peak 3e-3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["schedule"] == "constant"
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "schedule.png").exists()
    assert "final val loss" in proc.stdout


PROGRESS_BAR = re.compile(r"\d+%\|")


def one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    # Progress bars of data preparation may precede the error; the error itself is one line.
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


# The table of bad inputs (unknown keys and options, bad values, missing or short corpora, bad
# resumes, unwritable folders) lives in test_bad_input.py.


def test_run_job_reports_a_run_a_watcher_stopped_without_taking_it_for_a_signal(monkeypatch, tmp_path, caplog):
    """A trainer driven from code can be ended by a watcher (status `stopped`, a reason that names no
    signal): run_job logs it and returns its loss instead of parsing the reason as a signal name."""
    import logging
    from types import SimpleNamespace

    from hydra.types import RunMode

    import minigpt.run.trainer
    from minigpt.config import Config
    from minigpt.launch import jobs
    from minigpt.run.metrics import RunResult, RunStatus

    summary = {"status": "stopped", "reason": "the watcher's limit was reached", "step": 7}
    monkeypatch.setattr(minigpt.run.trainer, "train",
                        lambda config, run_dir: RunResult(RunStatus.STOPPED, 4.5, summary, run_dir))
    hc = SimpleNamespace(runtime=SimpleNamespace(output_dir=str(tmp_path)), mode=RunMode.RUN)
    with caplog.at_level(logging.INFO, logger="minigpt"):
        assert jobs.run_job(Config(), hc) == 4.5
    assert "stopped at step 7: the watcher's limit was reached" in caplog.text
