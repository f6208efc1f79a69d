"""Runs written by an earlier minigpt keep working: they resume, sample and report with today's code.

tests/fixtures/run_v0/ is a one-job sweep written by the code of commit 1dc383c (before the
package moved into folders, before run files carried a format version) with:

    git worktree add /tmp/old 1dc383c && cd /tmp/old
    python train.py -m +debug=tiny trainer.max_steps=2 model.n_layer=1 model.n_embd=16 model.n_head=2 \
        model.block_size=16 data.vocab_size=300 data.max_chars=100000 trainer.eval_iters=1 \
        data.cache_dir=data hydra.sweep.dir=<fixture> hydra.sweep.subdir=old_run

(its schedule.png left out, to keep the fixture small; everything else as written.)
"""

from __future__ import annotations

import io
import json
import pickletools
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from minigpt.errors import UserError
from minigpt.launch.compose import compose
from minigpt.run.checkpoint import load_checkpoint, save_checkpoint
from minigpt.run.metrics import FORMAT_VERSION, read_metrics
from minigpt.run.trainer import train
from minigpt.tools import plot_run, report, sample

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0"
OLD_RUN = FIXTURE / "old_run"
OLD_CHECKPOINT = OLD_RUN / "checkpoints" / "step_0000002.pt"


@pytest.fixture
def old_sweep(tmp_path):
    """A copy of the fixture: nothing a test does may change the committed files."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "sweep"))


def old_overrides() -> list[str]:
    return yaml.safe_load((OLD_RUN / ".hydra" / "overrides.yaml").read_text())


def composed_config(overrides: list[str]):
    return compose(overrides)


def pickled_globals(path: Path) -> set[str]:
    """The classes and functions a checkpoint's pickle names (what unpickling would import)."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    names, strings = set(), []
    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        if isinstance(arg, str):
            strings.append(arg)
        if op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            names.add(f"{strings[-2]}.{strings[-1]}")
    return names


def test_the_fixture_is_small_and_from_before_format_versions():
    size = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    assert size < 300_000
    assert "format_version" not in json.loads((OLD_RUN / "summary.json").read_text())
    assert "format_version" not in load_checkpoint(OLD_CHECKPOINT)  # read as version 0


def test_an_old_checkpoint_names_no_module_of_ours_so_moves_cannot_break_it():
    names = pickled_globals(OLD_CHECKPOINT)
    assert "torch._utils._rebuild_tensor_v2" in names  # the walk sees the pickle's globals
    assert not [n for n in names if n.startswith("minigpt")], names
    state = load_checkpoint(OLD_CHECKPOINT)
    assert state["step"] == 2 and state["model_config"]["n_embd"] == 16


@pytest.mark.slow  # prepares the run's token cache and trains two steps: about 15 s on 2 cores
def test_an_old_run_resumes_with_todays_code(old_sweep, tmp_path):
    run_dir = old_sweep / "old_run"
    overrides = [o for o in old_overrides() if not o.startswith(("trainer.max_steps=", "data.cache_dir="))]
    config = composed_config([*overrides, "trainer.max_steps=4", f"data.cache_dir={tmp_path / 'data'}",
                              "trainer.resume=auto"])
    result = train(config, run_dir, quiet=True)
    assert result.status == "completed" and result.summary["step"] == 4
    assert result.summary["resumed_from"].endswith("step_0000002.pt")  # continued, not started again
    steps = [r["step"] for r in read_metrics(run_dir) if "train/loss" in r]
    assert steps == [0, 1, 2, 3]  # the old records kept, the new ones after them
    old = [r for r in read_metrics(OLD_RUN) if "train/loss" in r]
    assert [r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r][:2] == [r["train/loss"] for r in old]
    # From now on the run's files carry the format version.
    assert json.loads((run_dir / "summary.json").read_text())["format_version"] == FORMAT_VERSION
    assert load_checkpoint(run_dir / "checkpoints" / "step_0000004.pt")["format_version"] == FORMAT_VERSION


def test_an_old_run_samples(capsys):
    assert sample.main([str(OLD_RUN), "--max-new-tokens", "12", "--prompt", "def ", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("def ") and len(first) > len("def \n")
    assert sample.main([str(OLD_CHECKPOINT), "--max-new-tokens", "12", "--prompt", "def ", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first  # the run folder's newest checkpoint is that file


@pytest.mark.slow  # the report's figures: about 4 s
def test_an_old_run_reports_and_plots(old_sweep):
    assert report.main([str(old_sweep), "-o", str(old_sweep / "report")]) == 0
    table = (old_sweep / "report" / "report.md").read_text()
    final = json.loads((OLD_RUN / "summary.json").read_text())["final_val_loss"]
    assert "old_run" in table and f"{final:.4f}" in table
    assert plot_run.main([str(old_sweep / "old_run"), "-o", str(old_sweep / "run.png")]) == 0
    assert (old_sweep / "run.png").read_bytes()[:4] == b"\x89PNG"


def test_a_checkpoint_from_a_newer_format_is_refused_in_one_line(tmp_path):
    state = load_checkpoint(OLD_CHECKPOINT)
    state["format_version"] = FORMAT_VERSION + 1
    path = save_checkpoint(state, tmp_path / "checkpoints" / "step_0000002.pt")
    with pytest.raises(UserError, match=rf"format_version {FORMAT_VERSION + 1}, newer than this minigpt reads"):
        load_checkpoint(path)
    assert torch.load(path, weights_only=True)["format_version"] == FORMAT_VERSION + 1
