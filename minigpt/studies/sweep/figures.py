"""Figures of a sweep: every job's curves, and the two figures of the warmup-divergence study."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from minigpt.plots import new_figure, save_figure
from minigpt.studies.sweep.statistics import warmup_label
from minigpt.run.keys import Key

_LEGEND_MAX = 16  # more lines than this get no legend: it would hide the curves


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over `window` values; non-finite values pass through (a NaN loss stays visible)."""
    out, acc, buf = [], 0.0, []
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        buf.append(v)
        acc += v
        if len(buf) > window:
            acc -= buf.pop(0)
        out.append(acc / len(buf))
    return out


def _mean_curve(jobs, key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """(steps, mean, low, high) of a record key over the jobs, at every step any of them recorded;
    mean, min and max over the jobs' finite values there (NaN where none is finite)."""
    by_step: dict[int, list[float]] = {}
    for job in jobs:
        for step, value in zip(*job.curve(key)):
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    finite = [[v for v in by_step[s] if math.isfinite(v)] for s in steps]
    mean = [sum(v) / len(v) if v else math.nan for v in finite]
    return steps, mean, [min(v) if v else math.nan for v in finite], [max(v) if v else math.nan for v in finite]


def plot_sweep_curves(arms: Sequence[tuple[str, Sequence]], key: str, path) -> None:
    """One colour per arm (label, its jobs: the seeds): key="loss" draws the mean training loss
    over the seeds with a band from their lowest to their highest value, and the mean validation
    loss as dots; key="lr" the LR each step used (the arm's first job: seeds share it). Training
    curves of 200 steps or more are smoothed (a trailing mean over 1% of the steps), and the
    axis label says so only then. Returns the figure (after saving it to `path`)."""
    fig = new_figure(9, 5)
    ax = fig.add_subplot()
    all_jobs = [j for _, jobs in arms for j in jobs]
    smoothed = 1
    for color, (label, jobs) in zip(_colors(len(arms)), arms):
        seeds = len(jobs)
        unfinished = sum(j.status != "completed" for j in jobs)
        name = label + (f" ({seeds} seeds)" if seeds > 1 else "") + (f" [{unfinished} not completed]" if unfinished else "")
        if key == "lr":
            steps, values = jobs[0].curve(Key.LR) if jobs else ([], [])
            if steps:
                ax.plot(steps, values, lw=1.2, color=color, label=name)
            continue
        steps, mean, low, high = _mean_curve(jobs, Key.LOSS)
        if steps:
            window = max(1, len(steps) // 100)
            smoothed = max(smoothed, window)
            ax.plot(steps, _smooth(mean, window), lw=1.2, color=color, label=name, alpha=0.9)
            if seeds > 1:
                ax.fill_between(steps, _smooth(low, window), _smooth(high, window), color=color, alpha=0.15, lw=0)
        vsteps, vmean, _, _ = _mean_curve(jobs, Key.VAL_LOSS)
        if vsteps:
            ax.plot(vsteps, vmean, "o", ms=3, color=color)
        for job in jobs:
            values = job.curve(Key.LOSS)[1]
            finite = [v for v in values if math.isfinite(v)]
            if job.diverged_step is not None and finite:
                ax.plot([job.diverged_step], [finite[-1]], "x", ms=8, mew=2, color=color)
    ax.set_xlabel("step")
    if key == "lr":
        ax.set_ylabel("learning rate")
        ax.set_title("learning rate of every arm")
    else:
        training = f"training loss, mean over seeds, smoothed over {smoothed} steps" if smoothed > 1 else \
            "training loss, mean over seeds"
        ax.set_ylabel("loss")
        ax.set_title(f"loss of every arm\nlines: {training}; band: lowest to highest seed\n"
                     "dots: validation loss, mean over seeds; x: diverged", fontsize=9)
        _clip_loss_axis(ax, all_jobs)
    ax.grid(alpha=0.3)
    if 0 < len(arms) <= _LEGEND_MAX:
        ax.legend(fontsize=7)
    else:
        ax.set_title(ax.get_title() + f" ({len(arms)} arms; no legend above {_LEGEND_MAX})")
    save_figure(fig, path)
    return fig


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(1, n - 1)) for i in range(n)]


def _clip_loss_axis(ax, jobs) -> None:
    """Keep diverging runs from squashing the rest: top of the axis a little above the highest initial loss."""
    initial = [j.initial_loss for j in jobs if j.initial_loss is not None]
    lows = [min(v for v in j.curve(Key.LOSS)[1] if math.isfinite(v)) for j in jobs
            if any(math.isfinite(v) for v in j.curve(Key.LOSS)[1])]
    if initial and lows:
        top = max(initial)
        ax.set_ylim(min(lows) - 0.05 * (top - min(lows)), top + 0.25 * (top - min(lows)))


_WARMUP_COLORS = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:olive"]  # no warmup first: red


def plot_study_lr(study, path) -> None:
    """Figure 1 of the warmup-divergence study: final val loss against peak LR (log axis), one
    panel per architecture, one line per warmup. The line is the mean over seeds of
    min(final, initial loss), the band its min-max over seeds; each diverged seed is an x."""
    n = len(study.archs)
    fig = new_figure(max(6.0, 4.2 * n), 4.0)
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    initial = [j.initial_loss for j in study.jobs if j.initial_loss is not None]
    finals = [j.final_val_loss for j in study.jobs if j.final_val_loss is not None]
    for ax, arch in zip(axes, study.archs):
        for color, w in zip(_WARMUP_COLORS * 4, study.warmups):
            cells = study.arm(arch, w)
            lrs = [lr for lr, c in cells.items() if c.clipped()]
            if not lrs:
                continue
            means = [sum(cells[lr].clipped()) / len(cells[lr].clipped()) for lr in lrs]
            lo = [min(cells[lr].clipped()) for lr in lrs]
            hi = [max(cells[lr].clipped()) for lr in lrs]
            ax.plot(lrs, means, "o-", color=color, lw=1.6, ms=4, label=warmup_label(w, study.total_steps))
            ax.fill_between(lrs, lo, hi, color=color, alpha=0.15, lw=0)
            for lr, cell in cells.items():
                for j in cell.jobs:
                    if j.status == "diverged" and j.initial_loss is not None:
                        ax.plot([lr], [j.initial_loss], "x", color=color, ms=8, mew=2)
        if initial:
            ax.axhline(sum(initial) / len(initial), color="0.5", ls=":", lw=1,
                       label="initial loss" if arch == study.archs[0] else None)
        ax.set_xscale("log")
        ax.set_title(arch, fontsize=10)
        ax.set_xlabel("peak learning rate")
        ax.grid(alpha=0.3, which="both")
        if initial and finals:
            top, bottom = max(initial), min(finals)
            ax.set_ylim(bottom - 0.05 * (top - bottom), top + 0.08 * (top - bottom))
    axes[0].set_ylabel("final val loss (diverged: initial loss, x)")
    axes[0].legend(fontsize=8)
    seeds = max((len(c.jobs) for c in study.cells.values()), default=0)
    fig.suptitle(f"final validation loss against peak LR: mean of {seeds} seed(s), band = min-max over seeds",
                 fontsize=10)
    save_figure(fig, path)


def plot_study_early(study, lr, path) -> None:
    """Figure 2: training loss (top) and LR (bottom) of the first steps (twice the study's early
    window) at one peak LR per architecture (`lr`: one LR, or arch -> LR), one panel per
    architecture, one colour per warmup, one line per seed."""
    lrs = lr if isinstance(lr, Mapping) else {a: lr for a in study.archs}
    n = len(study.archs)
    fig = new_figure(max(6.0, 4.2 * n), 5.6)
    grid = fig.add_gridspec(2, n, height_ratios=[3, 1])
    steps_shown = 2 * study.early_steps  # the early window and as much again after it
    if study.total_steps:
        steps_shown = min(steps_shown, study.total_steps)
    for i, arch in enumerate(study.archs):
        lr = lrs.get(arch)
        ax = fig.add_subplot(grid[0, i])
        ax_lr = fig.add_subplot(grid[1, i], sharex=ax)
        tops = []
        for color, w in zip(_WARMUP_COLORS * 4, study.warmups):
            cell = study.cells.get((arch, w, lr))
            if cell is None:
                continue
            for k, job in enumerate(cell.jobs):
                steps, values = job.curve(Key.LOSS)
                keep = [(s, v) for s, v in zip(steps, values) if s < steps_shown]
                if not keep:
                    continue
                label = warmup_label(w, study.total_steps) if k == 0 else None
                ax.plot([s for s, _ in keep], [v for _, v in keep], color=color, lw=0.9, alpha=0.8, label=label)
                tops += [v for _, v in keep if math.isfinite(v)]
                if job.diverged_step is not None and job.diverged_step < steps_shown:
                    ax.plot([keep[-1][0]], [keep[-1][1]], "x", color=color, ms=8, mew=2)
                if k == 0:  # every seed has the same LR curve
                    lr_rows = [(s, v) for s, v in zip(*job.curve(Key.LR)) if s < steps_shown]
                    ax_lr.plot([s for s, _ in lr_rows], [v for _, v in lr_rows], color=color, lw=1.2)
        initial = [j.initial_loss for w in study.warmups for j in getattr(study.cells.get((arch, w, lr)), "jobs", [])
                   if j.initial_loss is not None]
        if initial:
            ax.axhline(sum(initial) / len(initial), color="0.5", ls=":", lw=1, label="initial loss" if i == 0 else None)
        ax.set_title(f"{arch}, peak LR {lr:g}" if lr is not None else arch, fontsize=10)
        ax.grid(alpha=0.3)
        ax.tick_params(labelbottom=False)
        ax_lr.set_xlabel("step")
        ax_lr.grid(alpha=0.3)
        ax_lr.tick_params(labelsize=7)
        if i == 0:
            ax.set_ylabel("training loss (x: diverged)")
            ax_lr.set_ylabel("LR")
            ax.legend(fontsize=8)
    shown = {v for v in lrs.values() if v is not None}
    at = f"peak LR {next(iter(shown)):g}" if len(shown) == 1 else "the peak LR in each panel's title"
    fig.suptitle(f"the first {steps_shown} steps at {at}, with and without warmup (one line per seed)", fontsize=10)
    save_figure(fig, path)


def plot_study_mechanism(jobs_by_warmup: Mapping[str, Sequence], steps_shown: int, title: str, path):
    """The first steps with and without warmup, as the instruments saw them: training loss, LR,
    the preconditioned sharpness against Adam's stability threshold (Cohen et al. 2022), and the
    largest attention logit. jobs_by_warmup: label -> runs (one line per run), no warmup first.
    Returns the figure (after saving it to `path`)."""
    keys = [(Key.LOSS, "training loss"), (Key.LR, "LR"), (Key.SHARPNESS, "sharpness (log)"),
            (Key.MAX_ATTN_LOGIT, "max attention logit")]
    fig = new_figure(7.5, 9.0)
    axes = fig.subplots(len(keys), 1, sharex=True)
    for color, (label, jobs) in zip(_WARMUP_COLORS, jobs_by_warmup.items()):
        for k, job in enumerate(jobs):
            for ax, (key, _) in zip(axes, keys):
                steps, values = job.curve(key)
                keep = [(st, v) for st, v in zip(steps, values) if st < steps_shown]
                if not keep:
                    continue
                if key == Key.SHARPNESS:  # negative only when the whole spectrum is: a gap on the log axis
                    keep = [(st, v if v > 0 else math.nan) for st, v in keep]
                style = "o-" if key == Key.SHARPNESS else "-"
                ax.plot([st for st, _ in keep], [v for _, v in keep], style, color=color, lw=0.9, ms=2.5, alpha=0.85,
                        label=label if k == 0 else None)
                if key == Key.SHARPNESS and k == 0:
                    t_steps, t_values = job.curve(Key.SHARPNESS_THRESHOLD)
                    t_keep = [(st, v) for st, v in zip(t_steps, t_values) if st < steps_shown]
                    ax.plot([st for st, _ in t_keep], [v for _, v in t_keep], "--", color=color, lw=1.0,
                            label=f"Adam threshold (2 + 2 beta1) / ((1 - beta1) lr), {label}")
    for ax, (key, name) in zip(axes, keys):
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if key == Key.SHARPNESS and ax.get_lines():
            ax.set_yscale("log")
        if ax.get_lines():
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, f"not recorded ({key})", transform=ax.transAxes, ha="center", fontsize=8, color="0.4")
    axes[-1].set_xlabel("step")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    return fig


def job_lrs(job):
    """The LR of every update of a job, or None when its records skip a step (an unfinished run)."""
    steps, lrs = job.curve(Key.LR)
    if not steps or list(steps) != list(range(len(steps))):
        return None
    return lrs


def plot_predicted_curves(jobs, labels: dict, fit, path) -> list[tuple[str, float, float | None]]:
    """Each job's validation loss (dots) against the loss curve a fitted law (minigpt/studies/loss_law.py)
    predicts from the job's LRs alone (lines). Returns (job, predicted final, measured final)."""
    import numpy as np

    fig = new_figure(9, 5)
    ax = fig.add_subplot()
    rows, shown = [], []
    for color, job in zip(_colors(len(jobs)), jobs):
        lrs = job_lrs(job)
        if lrs is None:
            continue
        steps = np.unique(np.linspace(1, len(lrs), min(200, len(lrs))).round().astype(int))
        predicted = fit.predict(lrs, steps)
        ax.plot(steps, predicted, "-", lw=1.2, color=color, label=labels.get(job.name, job.name))
        vsteps, vvalues = job.curve(Key.VAL_LOSS)
        late = [(s, v) for s, v in zip(vsteps, vvalues) if s >= len(lrs) // 10 and math.isfinite(v)]
        if late:
            ax.plot(*zip(*late), "o", ms=3, color=color)
        shown += [v for _, v in late] + list(predicted[steps >= len(lrs) // 10])
        rows.append((job.name, float(predicted[-1]), job.final_val_loss))
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (dots: measured; lines: predicted)")
    ax.set_title(f"measured against predicted by the {fit.law} law")
    if shown:
        low, high = min(shown), max(shown)
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    ax.grid(alpha=0.3)
    if 0 < len(rows) <= _LEGEND_MAX:
        ax.legend(fontsize=7)
    save_figure(fig, path)
    return rows
