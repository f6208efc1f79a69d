"""Using a fitted loss law (minigpt/studies/loss_law.py) on minigpt runs: read a run's curve, plan the
LRs of a config, draw fitted and predicted curves, and search for the schedule with the lowest
predicted final loss. `minigpt predict` (minigpt/tools/predict.py) is the command line on top of it.

Configs come in as train.py overrides; turning them into a validated Config is the caller's job
(Hydra's compose at the command-line edge), passed here as `compose(overrides) -> Config`.
"""

from __future__ import annotations

from pathlib import Path
import dataclasses
from typing import Callable

import numpy as np

from minigpt.studies import loss_law
from minigpt.errors import UserError
from minigpt.files import relative_name
from minigpt.run.metrics import read_metrics
from minigpt.run.keys import Key
from minigpt.schedules import WarmupParams

Composer = Callable[[list[str]], object]  # train.py overrides -> a validated minigpt.config.Config
# The longest run read or planned here: the laws take the LR of every update (8 bytes each, a few
# arrays of them), so 10^7 steps is a few hundred MB; a record claiming step 10^12 used to make
# read_run walk every step up to it.
MAX_STEPS = 10_000_000


# --- reading runs ---


def read_run(run_dir: Path, target: str = "val", smoothing: float = 0.9, every: int = 10) -> tuple[loss_law.Curve, list[str]]:
    """A run's curve (the LR of every update; the loss at the measured steps) and its train.py
    overrides. `target` "val": val/loss at the evaluation steps; "train": an exponential moving
    average of train/loss (bias-corrected), every `every` steps."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"'{run_dir}' is not a run directory; give the folder a run wrote (it holds metrics.jsonl)")
    records = read_metrics(run_dir)
    lr_of = {r["step"]: r[Key.LR] for r in records if "step" in r and r.get(Key.LR) is not None}
    for key, values in ((Key.LR, lr_of.items()),
                        (Key.VAL_LOSS, ((r["step"], r.get(Key.VAL_LOSS)) for r in records)),
                        (Key.LOSS, ((r["step"], r.get(Key.LOSS)) for r in records))):
        bad = next(((step, v) for step, v in values if v is not None and not _is_number(v)), None)
        if bad:
            raise UserError(f"'{run_dir}': {key} of step {bad[0]} in {run_dir / 'metrics.jsonl'} is {bad[1]!r}, not a "
                            "number; give a run directory that train.py wrote")
    if not lr_of:
        raise UserError(f"'{run_dir}' has no LR records (no train/lr in {run_dir / 'metrics.jsonl'}); "
                        "give a run directory of train.py whose metrics.jsonl holds per-step records")
    if min(lr_of) < 0:
        raise UserError(f"'{run_dir}': {run_dir / 'metrics.jsonl'} holds a record of step {min(lr_of)}; steps start "
                        "at 0: give a run directory that train.py wrote")
    total = max(lr_of) + 1
    if total > MAX_STEPS:  # checked before anything of that length is allocated
        raise UserError(f"'{run_dir}': its records reach step {total - 1:,}, past the {MAX_STEPS:,} steps a loss law "
                        "is fitted or predicted on here (MAX_STEPS); give a shorter run")
    if len(lr_of) < total:  # the steps are distinct keys: fewer of them than steps means gaps
        known = sorted(lr_of)
        first = next((i for i, s in enumerate(known) if s != i), len(known))
        raise UserError(f"'{run_dir}': train/lr is missing for {total - len(lr_of)} of steps 0..{total - 1} (first: "
                        f"{first}); the laws need the LR of every update")
    lrs = np.array([lr_of[s] for s in range(total)])
    if target == "val":
        points = sorted({r["step"]: r[Key.VAL_LOSS] for r in records
                         if r.get(Key.VAL_LOSS) is not None and r.get("step", -1) <= total}.items())
    else:
        # train/loss of step s is measured on the batch of update s, before it: the loss after s
        # updates, like val/loss of step s
        losses = sorted((r["step"], r[Key.LOSS]) for r in records if r.get(Key.LOSS) is not None)
        points, ema = [], 0.0
        for i, (step, loss) in enumerate(losses):
            ema = smoothing * ema + (1 - smoothing) * loss
            if step % every == 0:
                points.append((step, ema / (1 - smoothing ** (i + 1))))
    steps = np.array([s for s, _ in points], dtype=np.int64)
    losses = np.array([v for _, v in points], dtype=np.float64)
    return loss_law.Curve(lrs, steps, losses, label=run_dir.name), run_overrides(run_dir)


def run_overrides(run_dir: Path) -> list[str]:
    """The train.py overrides a run was started with (.hydra/overrides.yaml; [] without one)."""
    overrides_file = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not overrides_file.exists():
        return []
    import yaml

    try:
        overrides = yaml.safe_load(overrides_file.read_text()) or []
    except yaml.YAMLError as e:
        raise UserError(f"'{overrides_file}' is not readable YAML ({type(e).__name__}); it is Hydra's record of "
                        "the run's command line: restore it, or give another run") from None
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise UserError(f"'{overrides_file}' is not a list of key=value overrides; it is Hydra's record of the "
                        "run's command line: restore it, or give another run")
    return overrides


def comparable_overrides(run_dir: Path) -> list[str]:
    """The overrides that make a new run's result comparable with this run's: every override but
    the ones that only place or show it (folders, logging, threads, checkpoints), with the
    evaluation settings and the seed written out (from .hydra/config.yaml) even where the run
    took them from the defaults, so that a changed default cannot make the two differ."""
    overrides = [o for o in run_overrides(run_dir) if not any(key_of(o).startswith(k) for k in PLACEMENT_KEYS)]
    config_file = Path(run_dir) / ".hydra" / "config.yaml"
    if config_file.exists():
        import yaml

        config = yaml.safe_load(config_file.read_text()) or {}
        trainer = config.get("trainer", {})
        pinned = {"trainer.eval_interval": trainer.get("eval_interval"), "trainer.eval_iters": trainer.get("eval_iters"),
                  "seed": config.get("seed")}
        if trainer:  # a run from before trainer.eval_seed drew its validation windows with its own seed
            pinned["trainer.eval_seed"] = "null" if trainer.get("eval_seed") is None else trainer["eval_seed"]
        overrides = merge_overrides(overrides, [f"{k}={v}" for k, v in pinned.items() if v is not None])
    return overrides


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- overrides ---


def key_of(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def merge_overrides(base: list[str], extra: list[str]) -> list[str]:
    """`base` with the keys `extra` sets replaced; choosing a scheduler drops the base's scheduler.* keys."""
    extra_keys = {key_of(o) for o in extra}
    new_schedule = "scheduler" in extra_keys
    kept = [o for o in base if key_of(o) not in extra_keys and not (new_schedule and key_of(o).startswith("scheduler."))]
    return kept + list(extra)


# Keys that place or show a run and change nothing it measures.
PLACEMENT_KEYS = ("hydra.", "trainer.resume", "trainer.progress", "trainer.threads", "data.cache_dir",
                  "trainer.ckpt_interval", "trainer.keep_checkpoints", "trainer.overwrite", "logger.")
RUN_ONLY_KEYS = ("hydra.", "trainer.resume", "trainer.progress", "trainer.threads", "data.cache_dir",
                 "trainer.eval_interval", "trainer.eval_iters", "trainer.eval_seed", "trainer.ckpt_interval", "seed",
                 "logger.")


def fit_overrides(record: dict, path) -> list[str]:
    """The train.py overrides a fit's JSON (load_fit's record) holds, to compose predictions from.

    A file is data: a `scheduler.module` in it would import (run) the code it names, so only
    minigpt's own modules (the table schedule that `optimize --family free` writes) are taken;
    any other is refused in one line, and the schedule of one's own module is given on the
    command line (`--scheduler custom scheduler.module=...`), where the user names the code."""
    overrides = list(record.get("overrides", []))
    for o in overrides:
        if key_of(o) == "scheduler.module":
            module = o.partition("=")[2].strip().strip("'\"")
            if module != "minigpt" and not module.startswith("minigpt."):
                raise UserError(f"'{path}' sets {o}, and composing it would import (run) that module's code; a fit "
                                "file is data, so predict and optimize import only minigpt's own modules from it: "
                                "remove that override from the file and give the schedule on the command line "
                                "(--scheduler custom scheduler.module=... scheduler.name=...)")
    return overrides


def schedule_overrides(overrides: list[str]) -> list[str]:
    """A run's overrides without those that leave its LRs alone (folders, logging, evaluation, seed)."""
    return [o for o in overrides if not any(key_of(o).startswith(k) for k in RUN_ONLY_KEYS)]


def planned_lrs(config) -> np.ndarray:
    """The LR of each update of the run a (validated) Config describes, as the trainer applies it
    (minigpt/plan.py: the peak after the batch-size rule times the schedule at each update)."""
    from minigpt.plan import RunPlan

    if config.trainer.max_steps is None and config.trainer.max_tokens is None:
        raise UserError("trainer.epochs: the run length depends on the corpus; give trainer.max_steps=... "
                        "(or trainer.max_tokens) to predict it")
    plan = RunPlan.build(config)
    if plan.total_steps > MAX_STEPS:
        raise UserError(f"the run has {plan.total_steps:,} steps, more than the {MAX_STEPS:,} a loss law is predicted "
                        "on here (minigpt/studies/loss_prediction.py MAX_STEPS); give a shorter trainer.max_steps")
    if plan.schedule_unit == "steps":  # the schedule is read at the step itself: one walk of the formula
        return plan.peak_lr * np.asarray(plan.schedule.curve(range(plan.total_steps)))
    lrs, tokens = np.empty(plan.total_steps), 0
    for step in range(plan.total_steps):
        lrs[step] = plan.lr_at(step, tokens)[0]
        tokens += plan.batches.batch_at(tokens) * config.model.block_size
    return lrs


# --- searching schedules ---


def final_loss(fit: loss_law.Fit, lrs: np.ndarray) -> float:
    return float(fit.predict(lrs, [len(lrs)])[0])


WSD_SHAPES = ("linear", "cosine", "1-sqrt")
WSD_FRACTIONS = tuple(round(f, 2) for f in np.arange(0.05, 0.951, 0.05))  # up to all that follows a 5% warmup
WSD_FLOORS = (0.0, 0.01, 0.03, 0.1, 0.3, 0.5, 0.7)


@dataclasses.dataclass
class WSDResult:
    overrides: list[str]  # train.py overrides of the best schedule
    predicted: float  # its predicted final loss
    candidates: int  # how many schedules were tried
    edges: list[str]  # the best one's settings that sit on an edge of the grid (the optimum may lie beyond)


def search_wsd(fit: loss_law.Fit, compose: Composer, base: list[str]) -> WSDResult:
    """Grid search over warmup-stable-decay: the cooldown's length (5% to 95% of the run; the
    lengths the warmup leaves no room for are skipped), shape and floor (0 to 0.7 of the peak);
    the warmup, peak LR and run length stay those of `base`. Says which of the best schedule's
    settings sit on an edge of what was tried."""
    # The warmup is base's: merge_overrides drops a base's scheduler.* keys when the schedule
    # changes, and every *_warmup schedule shares these keys.
    base_schedule = compose(base).scheduler
    warmup = {f.name: base_schedule[f.name] for f in dataclasses.fields(WarmupParams) if f.name in base_schedule}
    config = compose(merge_overrides(base, ["scheduler=wsd"]))
    wsd_defaults = dict(config.scheduler)
    config = dataclasses.replace(config, scheduler={**config.scheduler, **warmup})
    tried = []
    for shape in WSD_SHAPES:
        for fraction in WSD_FRACTIONS:
            for floor in WSD_FLOORS:
                params = {"decay": float(fraction), "decay_shape": shape, "min_lr_ratio": floor}
                try:
                    lrs = planned_lrs(dataclasses.replace(config, scheduler={**config.scheduler, **params}))
                except UserError:
                    continue  # e.g. a cooldown longer than what follows the warmup
                tried.append((params, final_loss(fit, lrs)))
    if not tried:
        raise UserError("no warmup-stable-decay schedule fits this run (is the warmup longer than 95% of it?)")
    params, loss = min(tried, key=lambda t: t[1])
    fractions = [t[0]["decay"] for t in tried]
    edges = []
    for name, value, low, high in (("decay", params["decay"], min(fractions), max(fractions)),
                                   ("min_lr_ratio", params["min_lr_ratio"], WSD_FLOORS[0], WSD_FLOORS[-1])):
        if value in (low, high) and low != high:
            why = "the smallest tried" if value == low else "the largest tried"
            if name == "decay" and value == high and high < WSD_FRACTIONS[-1]:
                why += "; no longer cooldown fits after the warmup"
            edges.append(f"{name}={value:g} ({why})")
    # The base's warmup goes into the overrides where WSD's default differs: choosing a scheduler
    # drops the base's scheduler.* keys (merge_overrides), and the runs must be the searched ones.
    pinned = {k: v for k, v in warmup.items() if wsd_defaults.get(k) != v}
    overrides = ["scheduler=wsd", *(f"scheduler.{k}={'null' if v is None else v}" for k, v in pinned.items()),
                 *(f"scheduler.{k}={v}" for k, v in params.items())]
    return WSDResult(overrides, loss, len(tried), edges)


def search_free(fit: loss_law.Fit, compose: Composer, base: list[str], knots: int = 24) -> tuple[list[str], float]:
    """A free monotone schedule (a coarse form of the multi-power paper's search, which frees the
    LR drop of every step): after the warmup, the multiplier at `knots` evenly spaced steps,
    each at most the one before (a running product of factors in [0, 1]), linear in between;
    minimised by L-BFGS-B from a few starting shapes. The warmup, peak LR and run length stay
    those of `base`. Written as the `table` schedule (minigpt/studies/lr_table.py) with knots as fractions
    of the run; returns its overrides and the predicted final loss of what train.py will run."""
    from scipy.optimize import minimize

    reference = planned_lrs(compose(base))
    total, peak = len(reference), float(reference.max())
    warmup_end = loss_law.warmup_length(reference)  # the first update at the peak
    warmup = reference[:warmup_end] / peak
    if warmup_end > 2 and not np.allclose(np.linspace(warmup[0], warmup[-1], warmup_end), warmup, rtol=1e-6):
        raise UserError("--family free keeps the runs' warmup as two knots of a table, so it must be linear; "
                        "use --family wsd for this warmup shape")
    positions = np.unique(np.linspace(warmup_end, total - 1, knots + 1).round().astype(int))
    after = np.arange(warmup_end, total)

    def lrs_of(factors):
        values = np.concatenate([[1.0], np.cumprod(factors)])
        return peak * np.concatenate([warmup, np.interp(after, positions, values)])

    n = len(positions) - 1
    best = None
    for start in (np.full(n, 0.97), np.full(n, 0.9), np.r_[np.ones(n // 2), np.full(n - n // 2, 0.7)]):
        res = minimize(lambda f: final_loss(fit, lrs_of(f)), start, method="L-BFGS-B", bounds=[(0.0, 1.0)] * n)
        if best is None or res.fun < best.fun:
            best = res
    values = np.concatenate([[1.0], np.cumprod(best.x)])
    steps = ([0, warmup_end - 1] if warmup_end > 1 else [0] if warmup_end else []) + positions.tolist()
    head = [float(warmup[0]), float(warmup[-1])] if warmup_end > 1 else [float(warmup[0])] if warmup_end else []
    overrides = ["scheduler=custom", "scheduler.module=minigpt.studies.lr_table", "scheduler.name=table",
                 "+scheduler.knots=[" + ",".join(f"{s / total:.6g}" for s in steps) + "]",
                 "+scheduler.values=[" + ",".join(f"{v:.5g}" for v in head + values.tolist()) + "]"]
    return overrides, final_loss(fit, planned_lrs(compose(merge_overrides(base, overrides))))


# --- what a prediction may be trusted with ---


def describe_fit(fit: loss_law.Fit) -> str:
    """One line of the fitted parameters, each with its standard error, the flagged ones marked."""
    parts = []
    for name, value in fit.params.items():
        text = f"{name}={value:.4g} (+-{fit.stderr.get(name, float('nan')):.2g})"
        if name in fit.at_bound:
            text += " [at a bound]"
        elif name in fit.unidentified:
            text += " [not identified]"
        parts.append(text)
    return f"{fit.law} ({fit.procedure} fit): " + ", ".join(parts)


def relative_path(path) -> str:
    """A path as the JSON records it: relative to the working directory (also outside it, as
    ../..), like every file the project writes (minigpt.files.relative_name)."""
    return relative_name(path)


def train_command(overrides: list[str]) -> str:
    """The train.py command line for these overrides, quoted for any POSIX shell (bash, zsh, dash:
    `[...]` lists and spaces survive)."""
    import shlex

    return shlex.join(["python", "train.py", *overrides])


def warnings_for(fit: loss_law.Fit, schedules: list[tuple[str, np.ndarray]]) -> list[str]:
    """One line per reason not to trust the predictions: the fit's unidentified or bound-hitting
    parameters, and each schedule whose LRs leave the fitted runs' range."""
    lines = [fit.warning()] + [fit.range_warning(lrs, label) for label, lrs in schedules]
    return [line for line in lines if line]


@dataclasses.dataclass
class PairedDifference:
    """Per seed, one schedule's final loss minus another's, and their mean with a 95% interval."""
    seeds: list
    differences: list[float]
    mean: float
    low: float  # the 95% interval of the mean difference (Student's t over the seeds)
    high: float

    def line(self, a: str, b: str) -> str:
        verdict = ("beyond seed noise: " + (f"{a} better" if self.high < 0 else f"{b} better")
                   if self.low > 0 or self.high < 0 else "within seed noise (the interval holds 0)")
        return (f"{a} minus {b}: {self.mean:+.4f} nats, 95% interval [{self.low:+.4f}, {self.high:+.4f}] over "
                f"{len(self.seeds)} seeds; {verdict}")


def paired_difference(a: dict, b: dict) -> PairedDifference:
    """The paired difference of two schedules' final losses over the seeds both have ({seed: loss}):
    the mean with a two-sided 95% Student's t interval (n - 1 degrees of freedom)."""
    from scipy import stats

    seeds = sorted(set(a) & set(b), key=str)
    if len(seeds) < 2:
        raise UserError(f"a paired difference needs at least 2 seeds run with both schedules; got {len(seeds)}")
    d = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    mean, half = float(d.mean()), float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return PairedDifference(seeds, d.tolist(), mean, mean - half, mean + half)


# --- figures ---


def curve_steps(total: int, points: int = 200) -> np.ndarray:
    """Steps at which a predicted curve is drawn: evenly spread, the last step included."""
    return np.unique(np.linspace(1, total, min(points, total)).round().astype(np.int64))


def legend_title(fit: loss_law.Fit, note: str = "") -> str | None:
    """The figure legend's title: the fit's procedure and its flagged parameters, then `note`."""
    lines = [f"{fit.procedure} fit"] if fit.procedure else []
    if fit.at_bound:
        lines.append("at a bound: " + ", ".join(fit.at_bound))
    if fit.unidentified:
        lines.append("not identified: " + ", ".join(fit.unidentified))
    if fit.covariance is not None:
        lines.append("bands: 95%, from the fit's covariance")
    if note:
        lines.append(note)
    return "\n".join(lines) or None


def plot_curves(path: Path, title: str, fit: loss_law.Fit, curves: list[tuple[str, np.ndarray, loss_law.Curve | None]],
                points: int = 200, note: str = "") -> list[dict]:
    """Predicted curves (one per (label, lrs, measured or None)) on one figure, measured points
    beside them; returns per curve the label, steps, predicted final loss, measured final loss
    (nan when not measured at the last step) and the predicted curve."""
    from minigpt.plots import new_figure, save_figure

    fig = new_figure(8, 7)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax_loss.set_title(title, fontsize=10)
    ax_loss.set_ylabel("validation loss (nats)")
    ax_lr.set_ylabel("LR")
    ax_lr.set_xlabel("step (optimizer updates)")
    results, shown = [], []
    for i, (label, lrs, measured) in enumerate(curves):
        lrs = loss_law.as_sequence(lrs)  # computed once for the prediction, its band and the range check
        steps = curve_steps(len(lrs), points)
        predicted, band = fit.predict_with_band(lrs, steps)
        result = {"label": label, "steps": int(len(lrs)), "final_loss": float(predicted[-1]),
                  "curve": {"step": steps.tolist(), "loss": [round(float(v), 5) for v in predicted]}}
        color = f"C{i % 10}"
        text = f"{label}: predicted {predicted[-1]:.3f}"
        if band is not None:
            result["band"] = float(band[-1])  # half-width of the 95% band at the end
            result["curve"]["band"] = [round(float(v), 5) for v in band]
            text += f" +- {band[-1]:.3g}"
            finite = np.isfinite(band)
            ax_loss.fill_between(steps[finite], (predicted - band)[finite], (predicted + band)[finite], color=color,
                                 alpha=0.15, lw=0)
        outside = fit.range_warning(lrs, label)
        if outside:
            result["warning"] = outside
            text += " (outside the fitted LR range)"
        if measured is not None:
            at_end = measured.losses[measured.steps == len(lrs)]
            result["measured_final_loss"] = float(at_end[0]) if len(at_end) else float("nan")
            keep = measured.steps >= max(1, len(lrs) // 10)
            ax_loss.plot(measured.steps[keep], measured.losses[keep], "o", ms=3, color=color)
            shown.extend(measured.losses[keep])
            text += f", measured {result['measured_final_loss']:.3f}"
        ax_loss.plot(steps, predicted, "-", color=color, label=text)
        shown.extend(predicted[steps >= max(1, len(lrs) // 10)])
        ax_lr.plot(np.arange(len(lrs)), lrs.lrs, color=color)
        results.append(result)
    low, high = float(np.min(shown)), float(np.max(shown))
    ax_loss.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    ax_loss.legend(fontsize=8, title=legend_title(fit, note), title_fontsize=8)
    ax_loss.grid(alpha=0.3)
    save_figure(fig, path)
    return results
