"""Plots of one run: its schedule, its LR range test, its records (sweeps: minigpt/studies/sweep/figures.py).

matplotlib is imported inside the functions, and only through its Agg canvas (no pyplot), so
importing minigpt stays cheap, plotting works on headless machines, and the global backend of
whoever imported us is left alone.
"""

import math
import os
from collections.abc import Sequence
from pathlib import Path

from minigpt.schedules import Schedule

_MAX_POINTS = 20_000  # longer runs are drawn from this many evenly spaced steps


def _steps(total_steps: int) -> list[int]:
    if total_steps <= _MAX_POINTS:
        return list(range(total_steps))
    last = total_steps - 1
    return sorted({round(i * last / (_MAX_POINTS - 1)) for i in range(_MAX_POINTS)})


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path, 110)


def _save(fig, path: Path, dpi: int) -> None:
    """Save a figure through a temporary created without following links, renamed over `path`
    (minigpt/files.py): a link planted as schedule.png is replaced, never written through."""
    from minigpt.files import open_new

    tmp = path.with_name(path.name + ".tmp")
    try:
        with open_new(tmp) as f:
            fig.savefig(f, dpi=dpi, format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    fig = new_figure(8, 4.5)
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
    save_figure(fig, path)


def plot_schedules(schedules: Sequence[Schedule], peak_lr: float, path) -> None:
    """Draw several schedules into one figure: one panel per schedule name, one line per length."""
    by_name: dict[str, list[Schedule]] = {}
    for s in schedules:
        by_name.setdefault(s.name, []).append(s)
    if not by_name:
        raise ValueError("plot_schedules needs at least one schedule")
    ncols = min(4, len(by_name))
    nrows = math.ceil(len(by_name) / ncols)
    fig = new_figure(3.6 * ncols, 2.6 * nrows)
    for i, (name, group) in enumerate(by_name.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for s in group:
            label = f"{s.total_steps} steps" if len(group) > 1 else None
            _draw(ax, s, peak_lr, label=label, boundaries=len(group) == 1)
        ax.set_title(name, fontsize=10)
        ax.set_xlim(0, max(max(s.total_steps for s in group) - 1, 1))
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7, which="both")
        ax.grid(alpha=0.3)
        if len(group) > 1:
            ax.legend(fontsize=7)
    fig.supxlabel("step", fontsize=9)
    fig.supylabel("learning rate" if peak_lr != 1.0 else "LR multiplier (of the peak LR)", fontsize=9)
    save_figure(fig, path)


def plot_lr_range_test(result, path: Path) -> Path:
    """Loss (raw and smoothed) against LR on a log axis, with the suggested LRs marked."""
    fig = new_figure(7, 4.2)
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
    _save(fig, Path(path), 120)
    return path


def _finite(values):
    """None, NaN and inf become NaN: matplotlib leaves a gap instead of breaking the axis."""
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else math.nan for v in values]


def _draw_sharpness(ax, records: Sequence[dict]) -> None:
    """train/sharpness (measured every N steps) and the Adam stability threshold of Cohen et al.
    2022, (2 + 2 beta1) / ((1 - beta1) lr), at each measured step's LR, on a log axis."""
    steps = [r["step"] for r in records]
    # The largest eigenvalue is negative only when the whole spectrum is: a gap on the log axis.
    values = [v if v > 0 else math.nan for v in _finite(r["train/sharpness"] for r in records)]
    ax.plot(steps, values, "o-", color="tab:brown", ms=2.5, lw=1.0, label="sharpness: largest eigenvalue of P^-1 H")
    if any("train/sharpness_threshold" in r for r in records):
        ax.plot(steps, _finite(r.get("train/sharpness_threshold") for r in records), color="0.3", ls="--", lw=1.0,
                label="Adam stability threshold (2 + 2 beta1) / ((1 - beta1) lr)")
    if any(v > 0 for v in values if not math.isnan(v)):
        ax.set_yscale("log")
    ax.set_ylabel("sharpness")
    ax.legend(fontsize=7, loc="best")


def plot_run(records: Sequence[dict], path, summary: dict | None = None, title: str | None = None):
    """Draw one run from its metrics.jsonl records: loss (train, its largest micro-batch, val),
    LR and gradient norm on a shared step axis, with spikes, skipped updates and the step of
    divergence marked, and, when the run measured it, the sharpness against Adam's stability
    threshold. Returns the figure (after saving it to `path`)."""
    train = [r for r in records if "train/loss" in r]
    if not train:
        raise ValueError("plot_run needs records with train/loss")
    val = [r for r in records if "val/loss" in r]
    steps = [r["step"] for r in train]
    loss = _finite(r["train/loss"] for r in train)

    sharp = [r for r in train if r.get("train/sharpness") is not None]
    if sharp:  # a fourth panel: the preconditioned sharpness against Adam's stability threshold
        fig = new_figure(9, 9.5)
        ax_loss, ax_lr, ax_gn, ax_sharp = fig.subplots(4, 1, sharex=True, height_ratios=[2.2, 1, 1.3, 1.3])
        _draw_sharpness(ax_sharp, sharp)
    else:
        fig = new_figure(9, 7.5)
        ax_loss, ax_lr, ax_gn = fig.subplots(3, 1, sharex=True, height_ratios=[2.2, 1, 1.3])
    axes = (ax_loss, ax_lr, ax_gn, ax_sharp) if sharp else (ax_loss, ax_lr, ax_gn)

    if any("train/loss_max" in r for r in train):
        ax_loss.plot(steps, _finite(r.get("train/loss_max") for r in train), color="tab:blue", alpha=0.25, lw=0.8,
                     label="largest micro-batch loss")
    ax_loss.plot(steps, loss, color="tab:blue", lw=1.0, label="train loss (mean of the step)")
    if val:
        ax_loss.plot([r["step"] for r in val], _finite(r["val/loss"] for r in val), "o-", color="tab:orange",
                     ms=3, lw=1.2, label="val loss")
    spikes = [(r["step"], v) for r, v in zip(train, loss) if r.get("spike/loss")]
    if spikes:
        ax_loss.plot(*zip(*spikes), "v", color="tab:red", ms=6, label=f"loss spike ({len(spikes)})")
    skipped = [(r["step"], v) for r, v in zip(train, loss) if r.get("train/skipped") or r.get("train/scaler_skipped")]
    if skipped:
        ax_loss.plot(*zip(*skipped), "x", color="0.3", ms=5, label=f"update skipped ({len(skipped)})")
    entropy = (summary or {}).get("unigram_entropy_val")
    if entropy:
        ax_loss.axhline(entropy, color="0.5", ls=":", lw=1, label=f"unigram entropy {entropy:.2f}")
    ax_loss.set_ylabel("loss (nats)")
    ax_loss.legend(fontsize=7, loc="upper right")

    ax_lr.plot(steps, _finite(r.get("train/lr") for r in train), color="tab:green", lw=1.2)
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    norms = _finite(r.get("train/grad_norm") for r in train)
    ax_gn.plot(steps, norms, color="tab:purple", lw=0.9, label="gradient norm (before clipping)")
    gn_spikes = [(r["step"], v) for r, v in zip(train, norms) if r.get("spike/grad_norm")]
    if gn_spikes:
        ax_gn.plot(*zip(*gn_spikes), "v", color="tab:red", ms=6, label=f"grad-norm spike ({len(gn_spikes)})")
    if any(v > 0 for v in norms if not math.isnan(v)):
        from matplotlib.ticker import FuncFormatter

        ax_gn.set_yscale("log")
        # 0.3, 1, 3 rather than 3 x 10^-1; minor ticks labelled at 2, 3 and 5 only
        ax_gn.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_gn.yaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 3, 5) else ""))
        ax_gn.margins(y=0.12)  # room for the spike markers above the highest value
    ax_gn.set_ylabel("gradient norm")
    axes[-1].set_xlabel("step (optimizer updates done)")
    ax_gn.legend(fontsize=7, loc="best")

    diverged = (summary or {}).get("diverged_step")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7, which="both")
        if diverged is not None:
            ax.axvline(diverged, color="tab:red", ls="--", lw=1)
    if diverged is not None:
        ax_loss.annotate(f"diverged at step {diverged} ", (diverged, 0.03), xycoords=("data", "axes fraction"),
                         ha="right", va="bottom", fontsize=8, color="tab:red")
    axes[-1].set_xlim(min(steps), max(max(steps), min(steps) + 1))
    if title is None and summary:
        title = f"{summary.get('status', '')}"
        if summary.get("final_val_loss") is not None:
            title += f", final val loss {summary['final_val_loss']:.3f}"
        title += f", {len(steps)} steps"
        if summary.get("status") == "diverged" and summary.get("reason"):
            title += f"\n{summary['reason']}"
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
    return fig
