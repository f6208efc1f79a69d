"""train.py as a user runs it: Hydra overrides in, run directory out, one-line errors."""

import json
import re

import pytest

from conftest import hydra_args, run_train


@pytest.mark.slow
def test_train_py_runs_end_to_end_with_overrides(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train(hydra_args(cache_dir, run_dir, **{"scheduler": "constant", "optim.lr": 3e-3,
                                                        "trainer.max_steps": 8}))
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


@pytest.mark.parametrize("override, expected", [
    ("scheduler=cosin_warmup", ["unknown scheduler 'cosin_warmup'", "did you mean 'cosine_warmup'", "constant"]),
    ("model=gpt3", ["unknown model 'gpt3'", "cpu", "gpt2_small"]),
    ("optim.lrr=1", ["unknown config key 'optim.lrr'", "did you mean 'optim.lr'"]),
    ("model.n_embd=130", ["model.n_embd (130) must be divisible by model.n_head (4)", "n_head=5"]),
    ("optim.lr=fast", ["optim.lr", "expected a number", "'fast'"]),
    ("data=files", ["data.paths is empty"]),
])
def test_bad_config_is_one_line_before_any_run_directory(override, expected, tmp_path):
    run_dir = tmp_path / "run"
    line = one_line_error(run_train([override, f"hydra.run.dir={run_dir}"]))
    for text in expected:
        assert text in line, line
    assert not run_dir.exists()  # refused before Hydra created anything


def test_missing_data_path(tmp_path):
    line = one_line_error(run_train(["data=files", f"data.paths=[{tmp_path}/nowhere]",
                                     f"hydra.run.dir={tmp_path}/run"]))
    assert "nowhere" in line and "does not exist" in line


def test_empty_corpus_and_corpus_shorter_than_a_context(cache_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("\n \n")
    line = one_line_error(run_train(["data=files", f"data.paths=[{empty}]", f"data.cache_dir={tmp_path}/c",
                                     f"hydra.run.dir={tmp_path}/r1"]))
    assert "empty" in line
    short = tmp_path / "short"
    short.mkdir()
    (short / "a.txt").write_text("print('hello world')\n" * 3)
    line = one_line_error(run_train(["data=files", f"data.paths=[{short}]", "data.vocab_size=300",
                                     f"data.cache_dir={tmp_path}/c", f"hydra.run.dir={tmp_path}/r2"]))
    assert "fewer than one context window" in line and "block_size=128" in line
