"""minigpt/studies/sweep/figures.py: the sweep's loss figure and the warmup study's mechanism figure."""

import pytest

from helpers import arms_sweep, warmup_job
from minigpt.studies.sweep.arms import build_arms
from minigpt.studies.sweep.figures import plot_sweep_curves
from minigpt.studies.sweep.jobs import find_jobs


def test_loss_figure_has_one_colour_per_arm_and_says_smoothed_only_when_smoothed(tmp_path):
    short = arms_sweep(tmp_path / "short", {"cosine_warmup": {1: 4.2, 2: 4.3}, "wsd": {1: 4.1, 2: 4.2}}, steps=50)
    long = arms_sweep(tmp_path / "long", {"cosine_warmup": {1: 4.2, 2: 4.3}}, steps=300)
    for sweep, smoothed in ((short, False), (long, True)):
        arms = build_arms(find_jobs(sweep))
        fig = plot_sweep_curves([(a.label, a.jobs) for a in arms], "loss", tmp_path / f"{sweep.name}.png")
        ax = fig.axes[0]
        labels = ax.get_legend_handles_labels()[1]
        assert labels == [f"{a.label} (2 seeds)" for a in arms]  # one line per arm, not per job
        assert ("smoothed" in ax.get_title()) == smoothed, ax.get_title()
        assert len(ax.collections) == len(arms)  # one band over the seeds per arm
    line = ax.get_lines()[0]  # the long arm's mean over its two seeds (before smoothing: their average)
    assert line.get_ydata()[0] == pytest.approx(6.0)


# --- the warmup study's signatures, seed by seed (helpers.study_jobs) -------------------------------


def test_mechanism_figure_draws_each_instrument_and_masks_negative_eigenvalues(tmp_path):
    import math

    from minigpt.studies.sweep.figures import plot_study_mechanism

    runs = {}
    for label, lr in (("no warmup", 0.01), ("warmup", 0.001)):
        j = warmup_job("pre", 0.01, 0, 1, 5.0, lrs=[lr] * 20)
        for r in j.records:
            if "train/loss" in r:
                r["train/max_attn_logit"] = 2.0 * r["step"]
                if r["step"] % 5 == 0:
                    r["train/sharpness"] = -3.0 if r["step"] == 5 else 100.0 + r["step"]
                    r["train/sharpness_threshold"] = 38 / lr
        runs[label] = [j]
    fig_path = tmp_path / "mechanism.png"
    fig = plot_study_mechanism(runs, 12, "test", fig_path)
    assert fig_path.stat().st_size > 5000
    loss_ax, lr_ax, sharp_ax, logit_ax = fig.axes
    sharp = [ln for ln in sharp_ax.get_lines() if ln.get_label() == "no warmup"][0]
    assert list(sharp.get_xdata()) == [0, 5, 10]  # steps before 12 only
    y = list(sharp.get_ydata())
    assert y[0] == 100.0 and math.isnan(y[1]) and y[2] == 110.0
    thresholds = [ln for ln in sharp_ax.get_lines() if ln.get_label().startswith("Adam threshold")]
    assert sorted(round(ln.get_ydata()[0]) for ln in thresholds) == [3800, 38000]
    assert sharp_ax.get_yscale() == "log"
    logits = [ln for ln in logit_ax.get_lines() if ln.get_label() == "warmup"][0]
    assert list(logits.get_ydata()) == [2.0 * s for s in range(12)]
