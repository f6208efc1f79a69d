"""minigpt/studies/sweep/figures.py: the sweep's loss figure."""

import pytest

from helpers import arms_sweep
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
