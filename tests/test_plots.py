"""minigpt/plots.py: the schedule curves and a run's figure, drawn in process."""

import math

import numpy as np
import pytest

from helpers import is_png
from minigpt.plots import plot_run, plot_schedule_curve, plot_schedules
from minigpt.schedules import build_schedule

pytest.importorskip("matplotlib")


@pytest.mark.slow
def test_plot_schedule_curve(tmp_path):
    for name in ("cosine_warmup", "one_cycle", "wsd"):  # one_cycle also draws beta1
        out = tmp_path / "sub" / f"{name}.png"
        plot_schedule_curve(build_schedule(name, 300), 3e-3, out)
        assert is_png(out)
    long_run = tmp_path / "long.png"  # drawn from a subsample of the steps
    plot_schedule_curve(build_schedule("cosine_warmup", 25_000, warmup=250), 1e-3, long_run)
    assert is_png(long_run)


def test_plot_schedules(tmp_path):
    out = tmp_path / "all.png"
    group = [build_schedule("wsd", n) for n in (100, 400)] + [build_schedule("step", 100)]
    plot_schedules(group, 1.0, out)
    assert is_png(out)
    with pytest.raises(ValueError):
        plot_schedules([], 1.0, out)


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
