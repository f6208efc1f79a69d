"""`minigpt plot-run` (minigpt/tools/plot_run.py) and minigpt.plots.plot_run: a run's curves on a shared step axis."""

import math
import subprocess
import sys

import numpy as np
import pytest

from minigpt.plots import plot_run
from minigpt.run.trainer import train



def synthetic_records():
    records = []
    for step in range(40):
        r = {"step": step, "train/loss": 5.0 - 0.05 * step, "train/loss_max": 5.2 - 0.05 * step,
             "train/lr": 1e-3 * (step + 1) / 40, "train/grad_norm": 1.0, "spike/loss": step in (10, 25),
             "spike/grad_norm": step == 30, "train/skipped": step == 25}
        if step in (10, 25):
            r["train/loss"] += 2.0
        if step == 30:
            r["train/grad_norm"] = 50.0
        if step % 10 == 0:
            r["val/loss"] = 5.1 - 0.05 * step
        records.append(r)
    records[39]["train/loss"] = math.nan
    records.append({"step": 40, "val/loss": 3.0})  # the final evaluation: a record of its own
    return records


def line(ax, label_start):
    matches = [ln for ln in ax.get_lines() if ln.get_label().startswith(label_start)]
    assert len(matches) == 1, [ln.get_label() for ln in ax.get_lines()]
    return matches[0]


def test_plot_run_draws_every_series_on_a_shared_step_axis(tmp_path):
    records = synthetic_records()
    summary = {"status": "diverged", "diverged_step": 39, "unigram_entropy_val": 4.5}
    fig = plot_run(records, tmp_path / "run.png", summary=summary)
    assert (tmp_path / "run.png").stat().st_size > 10_000
    ax_loss, ax_lr, ax_gn = fig.axes
    assert ax_loss.get_shared_x_axes().joined(ax_loss, ax_gn) and ax_lr.get_shared_x_axes().joined(ax_lr, ax_gn)
    train = line(ax_loss, "train loss")
    assert list(train.get_xdata()) == list(range(40))
    y = np.asarray(train.get_ydata(), dtype=float)
    assert y[10] == pytest.approx(6.5) and math.isnan(y[39])  # the NaN step is a gap, not a crash
    assert list(line(ax_loss, "val loss").get_xdata()) == [0, 10, 20, 30, 40]
    assert list(line(ax_loss, "loss spike").get_xdata()) == [10, 25]
    assert list(line(ax_loss, "update skipped").get_xdata()) == [25]
    assert list(line(ax_gn, "grad-norm spike").get_xdata()) == [30]
    assert list(ax_lr.get_lines()[0].get_ydata()) == pytest.approx([1e-3 * (s + 1) / 40 for s in range(40)])
    assert ax_gn.get_yscale() == "log"
    for ax in fig.axes:  # the divergence step marked on every panel
        assert any(list(ln.get_xdata()) == [39, 39] for ln in ax.get_lines())


@pytest.mark.slow
def test_plot_run_script_on_a_real_run(make_config, tmp_path):
    run_dir = tmp_path / "run"
    train(make_config(trainer__max_steps=10), run_dir, quiet=True)
    out = tmp_path / "plot.png"
    proc = subprocess.run([sys.executable, "-m", "minigpt", "plot-run", str(run_dir), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    proc = subprocess.run([sys.executable, "-m", "minigpt", "plot-run", str(run_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and (run_dir / "run.png").exists()


def test_plot_run_script_without_records_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "minigpt", "plot-run", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "metrics.jsonl" in lines[0]


@pytest.mark.slow
def test_plot_run_draws_sharpness_beside_the_adam_threshold(tmp_path):
    records = synthetic_records()
    for r in records[:40:5]:  # measured every 5 steps
        r["train/sharpness"] = 100.0 + r["step"]
        r["train/sharpness_threshold"] = 38.0 / r["train/lr"]
    fig = plot_run(records, tmp_path / "run.png")
    ax_loss, ax_lr, ax_gn, ax_sharp = fig.axes
    assert ax_sharp.get_shared_x_axes().joined(ax_sharp, ax_loss)
    sharp = line(ax_sharp, "sharpness")
    assert list(sharp.get_xdata()) == list(range(0, 40, 5))
    assert list(sharp.get_ydata()) == pytest.approx([100.0 + s for s in range(0, 40, 5)])
    threshold = line(ax_sharp, "Adam stability threshold")
    assert list(threshold.get_ydata()) == pytest.approx([38.0 / (1e-3 * (s + 1) / 40) for s in range(0, 40, 5)])
    assert ax_sharp.get_yscale() == "log"
    assert len(plot_run(synthetic_records(), tmp_path / "plain.png").axes) == 3  # no sharpness: no panel
