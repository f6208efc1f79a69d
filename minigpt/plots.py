"""Plots for the trainer and the scripts.

matplotlib is imported inside the functions, and only through its Agg canvas (no pyplot), so
importing minigpt stays cheap, plotting works on headless machines, and the global backend of
whoever imported us is left alone.
"""

import math
from collections.abc import Sequence
from pathlib import Path

from minigpt.schedules import Schedule

_MAX_POINTS = 20_000  # longer runs are drawn from this many evenly spaced steps


def _steps(total_steps: int) -> list[int]:
    if total_steps <= _MAX_POINTS:
        return list(range(total_steps))
    last = total_steps - 1
    return sorted({round(i * last / (_MAX_POINTS - 1)) for i in range(_MAX_POINTS)})


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _draw(ax, schedule: Schedule, peak_lr: float, label: str | None = None, boundaries: bool = True):
    steps = _steps(schedule.total_steps)
    lrs = [peak_lr * schedule(t) for t in steps]
    (line,) = ax.plot(steps, lrs, lw=1.4, label=label)
    if boundaries:
        for name, step in schedule.phases().items():
            if 0 < step < schedule.total_steps:
                ax.axvline(step, color="0.6", ls="--", lw=0.8)
                ax.annotate(
                    name, (step, 0.98), xycoords=("data", "axes fraction"), rotation=90,
                    ha="right", va="top", fontsize=7, color="0.35",
                )
    if schedule.beta1(0) is not None:
        twin = ax.twinx()
        twin.plot(steps, [schedule.beta1(t) for t in steps], color="tab:orange", ls=":", lw=1.2)
        twin.set_ylabel("beta1", color="tab:orange", fontsize=8)
        twin.tick_params(labelsize=7, colors="tab:orange")
    return line


def plot_schedule_curve(schedule: Schedule, peak_lr: float, path) -> None:
    """Draw the planned LR of one run, with its phase boundaries, peak and floor marked."""
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    _draw(ax, schedule, peak_lr)
    d = schedule.describe()
    ax.plot([d["peak_step"]], [peak_lr * d["peak"]], "o", color="tab:red", ms=4, label=f"peak (step {d['peak_step']})")
    ax.plot([d["floor_step"]], [peak_lr * d["floor"]], "s", color="tab:green", ms=4, label=f"floor (step {d['floor_step']})")
    ax.set_xlim(0, max(schedule.total_steps - 1, 1))
    ax.set_xlabel("step (optimizer updates done)")
    ax.set_ylabel("learning rate")
    ax.set_title(schedule.summary_line(peak_lr), fontsize=8, wrap=True)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_schedules(schedules: Sequence[Schedule], peak_lr: float, path) -> None:
    """Draw several schedules into one figure: one panel per schedule name, one line per length."""
    by_name: dict[str, list[Schedule]] = {}
    for s in schedules:
        by_name.setdefault(s.name, []).append(s)
    if not by_name:
        raise ValueError("plot_schedules needs at least one schedule")
    ncols = min(4, len(by_name))
    nrows = math.ceil(len(by_name) / ncols)
    fig = _figure(3.6 * ncols, 2.6 * nrows)
    for i, (name, group) in enumerate(by_name.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for s in group:
            label = f"{s.total_steps} steps" if len(group) > 1 else None
            _draw(ax, s, peak_lr, label=label, boundaries=len(group) == 1)
        ax.set_title(name, fontsize=10)
        ax.set_xlim(0, max(max(s.total_steps for s in group) - 1, 1))
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(group) > 1:
            ax.legend(fontsize=7)
    fig.supxlabel("step", fontsize=9)
    fig.supylabel("learning rate" if peak_lr != 1.0 else "LR multiplier (of the peak LR)", fontsize=9)
    _save(fig, path)


def plot_lr_range_test(result, path: Path) -> Path:
    """Loss (raw and smoothed) against LR on a log axis, with the suggested LRs marked."""
    fig = _figure(7, 4.2)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="0.75", lw=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", lw=1.8, label="smoothed loss")
    for lr, label, color in ((result.steepest_lr, "steepest descent", "C2"),
                             (result.suggested_lr, "minimum / 10", "C3"),
                             (result.min_lr, "minimum", "0.4")):
        if lr is not None:
            ax.axvline(lr, color=color, ls="--", lw=1, label=f"{label}: {lr:.3g}")
    raw = [v for v in result.losses if math.isfinite(v)]
    if raw:  # from the lowest loss to a little above the first: the blow-up must not flatten the rest
        low, high = min(raw), max(result.smoothed[0], result.losses[0])
        ax.set_ylim(low - 0.05 * (high - low), high + 0.15 * (high - low))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test: {result.stop_reason}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.savefig(path, dpi=120)
    return path
