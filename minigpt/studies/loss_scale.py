"""Where does each loss law hold? The scale study of docs/loss_prediction.md.

At each run length (600, 2,000 and 5,000 steps by default) it trains, on one small model:
- the fitted runs: a constant LR and a cosine (and, as the multi-power paper does, a two-stage
  run whose LR drops once, to 0.1x at 70%, for the three-run fits); the same fits again with the
  cosine decaying to 0 instead of 0.1x, so that no unseen schedule goes below the fitted LRs;
- five unseen schedules of the same length: WSD with a linear and with a 1-sqrt cooldown (20% to
  0.1x), a linear decay to 0, step decay (10x at 50% and 75%) and cosine with three restarts;
- one unseen cosine twice as long;
- two more seeds of the cosine, the WSD 1-sqrt and the linear-decay-to-0 runs: the seed spread
  each error is set beside, and for the last two the error against their mean over seeds.
It fits both laws by both procedures on each of the four sets of fitted runs (FIT_SETS), two
processes at a time, predicts every unseen run from its LRs, and writes one report (JSON and a
figure: error against run length, per law). With
`check_optimized`, it also runs the WSD schedule `optimize` picks against cosine on three seeds
and reports their paired difference with its 95% interval.

`scripts/loss_scale_study.py` is the one command that runs it (a finished run is not run again).

The model: 4 layers, 64 wide, 2 heads, context 64, a BPE of 1,024 tokens (0.26M parameters
without embeddings). It is the warmup study's 4-layer cut of the CPU model (its slow test's until 2026-12-07),
with a vocabulary larger than that test's 300 tokens (whose loss flattens early), and about 4x
cheaper per step than the default CPU model: about 0.08 s of CPU a step. The whole study on the
torch corpus (129,200 steps, the fits and the optimized check) took 1 h 43 min on an idle
2-core machine, two runs at a time (docs/loss_prediction.md).
"""

from __future__ import annotations

import importlib.util
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minigpt.studies import loss_law
from minigpt.studies import loss_prediction as lp
from minigpt.studies.run_queue import train_queue

# The runs at 600 and 2,000 steps were made with a 10% warmup and validation windows drawn with
# each run's seed, the defaults until 2026-12-07; every length keeps them, so the lengths compare.
PINNED = ["scheduler.warmup=0.1", "trainer.eval_seed=null"]
MODEL = ["model.n_layer=4", "model.n_embd=64", "model.n_head=2", "model.block_size=64", "data.vocab_size=1024"]
LENGTHS = (600, 2000, 5000)
# Which text the runs read. stdlib (the default corpus) holds 4.4M training tokens at this
# vocabulary: the 5,000-step runs see it 1.15 times and the 10,000-step run 2.3 times, and the
# laws assume every token is new. torch: the Python sources of the installed torch package
# (46M characters for torch 2.13, about 4x the stdlib), so even the 10,000-step run reads each
# training token at most once; pinned by the torch version, on every machine that runs minigpt.
CORPORA = ("stdlib", "torch")
SEEDS = (1337, 1, 2)  # 1337 is the default seed: every schedule runs with it
EVALUATIONS = 25  # per run: trainer.eval_interval is the length / 25 (24, 80 and 200 steps)
EVAL_ITERS = 20

FITTED = {
    "constant": ["scheduler=constant_warmup"],
    "cosine": ["scheduler=cosine_warmup"],
    "two_stage": ["scheduler=multistep", "scheduler.milestones=[0.7]"],  # the paper's third fitted run
    # The cosine to 0: with it the fitted runs reach every LR the unseen schedules do (the others
    # stop at 0.1x, while linear decay ends at 0 and step decay at 0.01x).
    "cosine_to_zero": ["scheduler=cosine_warmup", "scheduler.min_lr_ratio=0"],
}
UNSEEN = {
    "wsd_linear": ["scheduler=wsd", "scheduler.decay_shape=linear"],
    "wsd_sqrt": ["scheduler=wsd"],
    "linear_to_zero": ["scheduler=linear_warmup", "scheduler.min_lr_ratio=0"],
    "step_decay": ["scheduler=multistep"],
    "cyclic": ["scheduler=cosine_restarts"],
}
LONG = "cosine_2x"  # the cosine run at twice the length
SPREAD = ("cosine", "wsd_sqrt", "linear_to_zero")  # run with every seed of SEEDS
FIT_SETS = {"2 runs": ("constant", "cosine"), "3 runs": ("constant", "cosine", "two_stage"),
            "2 runs, floor 0": ("constant", "cosine_to_zero"),
            "3 runs, floor 0": ("constant", "cosine_to_zero", "two_stage")}
# The figure's panels: fits whose runs end at 0.1x, and fits with the cosine to 0.
PANELS = {"fitted runs end at 0.1x the peak LR": ("2 runs", "3 runs"),
          "the fitted cosine decays to 0": ("2 runs, floor 0", "3 runs, floor 0")}
TARGET = 0.03  # nats: the bar, near the seed noise


@dataclass
class Run:
    name: str  # e.g. "cosine" (seed 1337) or "cosine_s1"
    schedule: str  # the key of FITTED / UNSEEN, or LONG
    length: int  # steps of the study length this run belongs to (a cosine_2x run has 2x as many)
    seed: int
    overrides: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """"length/name": the run's key in the report's curves."""
        return f"{self.length}/{self.name}"

    def folder(self, root: Path) -> Path:
        return Path(root) / str(self.length) / self.name


def corpus_overrides(corpus: str) -> list[str]:
    """The train.py overrides that make the runs read `corpus` (one of CORPORA)."""
    if corpus == "stdlib":
        return []  # the default data config
    if corpus == "torch":
        spec = importlib.util.find_spec("torch")
        folder = Path(next(iter(spec.submodule_search_locations)))
        return ["data=files", f"data.paths=['{folder}']", "data.extensions=[.py]", "data.name=torch_source"]
    raise ValueError(f"unknown corpus {corpus!r}; valid: {', '.join(CORPORA)}")


def plan_runs(lengths=LENGTHS, seeds=SEEDS, extra: list[str] = (), corpus: str = "stdlib") -> list[Run]:
    """Every run of the study, with its train.py overrides (`extra` after the study's own)."""
    runs = []
    for length in lengths:
        common = [*MODEL, *corpus_overrides(corpus), *PINNED, f"trainer.eval_interval={max(1, length // EVALUATIONS)}",
                  f"trainer.eval_iters={EVAL_ITERS}"]
        for name, overrides in {**FITTED, **UNSEEN, LONG: FITTED["cosine"]}.items():
            steps = 2 * length if name == LONG else length
            for seed in (seeds if name in SPREAD else seeds[:1]):
                run_name = name if seed == seeds[0] else f"{name}_s{seed}"
                own = [*common, *overrides, f"trainer.max_steps={steps}", f"seed={seed}"]
                runs.append(Run(run_name, name, length, seed, lp.merge_overrides(own, list(extra))))
    return runs


def finished(folder: Path) -> bool:
    summary = Path(folder) / "summary.json"
    return summary.exists() and json.loads(summary.read_text()).get("status") == "completed"


def train_runs(runs: list[Run], root: Path, jobs: int = 2, python: str = sys.executable, log=print,
               known: dict | None = None) -> dict[str, float]:
    """Train the runs not finished yet and not in `known` (curves of an earlier report), `jobs` at a
    time (one torch thread each); returns the seconds each run took."""
    known = known or {}
    # Longest first: the run twice as long, started last, would finish alone with a core idle.
    left = sorted((r for r in runs if r.key not in known and not finished(r.folder(root))), key=lambda r: -steps_of(r))
    todo = [(r.key, r.folder(root), [*r.overrides, "trainer.threads=1"]) for r in left]
    return train_queue(todo, jobs, python, log=lambda label, command: log(f"run {label}: {lp.train_command(command[2:])}"))


def steps_of(run: Run) -> int:
    return 2 * run.length if run.schedule == LONG else run.length


def collect_curves(runs: list[Run], root: Path, known: dict | None = None) -> dict[str, dict]:
    """The fitted and predicted curves of every run: {"length/name": curve as JSON, with the seed};
    a run in `known` (curves of an earlier report) is taken from there."""
    out = {}
    for r in runs:
        if known and r.key in known:
            out[r.key] = known[r.key]
            continue
        curve, _ = lp.read_run(r.folder(root))
        out[r.key] = {**loss_law.curve_to_dict(curve), "seed": r.seed, "schedule": r.schedule}
    return out


def final_loss(curve: loss_law.Curve) -> float:
    at_end = curve.losses[curve.steps == len(curve.lrs)]
    return float(at_end[0]) if len(at_end) else math.nan


def seed_finals(curves: dict, length: int, schedule: str) -> list[float]:
    """The final loss of every seed's run of `schedule` at `length`."""
    return [final_loss(loss_law.curve_from_dict(c)) for key, c in curves.items()
            if key.startswith(f"{length}/") and c["schedule"] == schedule]


def seed_spread(curves: dict, length: int) -> dict[str, float]:
    """The standard deviation over seeds of the final loss of each SPREAD schedule at `length`."""
    out = {}
    for schedule in SPREAD:
        finals = seed_finals(curves, length, schedule)
        if len(finals) >= 2:
            out[schedule] = float(np.std(finals, ddof=1))
    return out


def evaluate(curves: dict, lengths, laws=tuple(loss_law.LAWS), procedures=loss_law.PROCEDURES,
             restarts: int = 12, jobs: int = 1) -> list[dict]:
    """Every fit of the study and its errors on the unseen runs (seed 1337): one row per length, law,
    procedure and set of fitted runs, fitted `jobs` at a time (in as many processes)."""
    tasks = [(length, law, procedure, fit_set) for length in lengths for law in laws
             for procedure in procedures for fit_set in FIT_SETS]
    if jobs <= 1 or len(tasks) <= 1:
        return [fit_row(task, curves_of(curves, task[0]), restarts) for task in tasks]
    # The fits take seconds to minutes, the longest runs' the most: start those first, so that the
    # last few do not leave a core idle; the rows come back in the order of `tasks`.
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i][0])
    context = multiprocessing.get_context("spawn")  # the parent may hold OpenMP threads: fork is not safe
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_one_thread) as pool:
        futures = {i: pool.submit(fit_row, tasks[i], curves_of(curves, tasks[i][0]), restarts) for i in order}
        return [futures[i].result() for i in range(len(tasks))]


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # read when a fit first imports torch: one core per process


def curves_of(curves: dict, length: int) -> dict:
    """The curves a fit at `length` reads (what a fitting process is sent)."""
    return {key: c for key, c in curves.items() if key.startswith(f"{length}/")}


def fit_row(task: tuple, curves: dict, restarts: int) -> dict:
    """One fit of the study, (length, law, procedure, fit set), and its error on each unseen run."""
    length, law, procedure, fit_set = task

    def curve(name):
        return loss_law.curve_from_dict(curves[f"{length}/{name}"])

    names = FIT_SETS[fit_set]
    start = time.perf_counter()
    fitted_curves = [curve(n) for n in names]
    fitted = loss_law.fit(law, fitted_curves, procedure=procedure, restarts=restarts)
    seconds = time.perf_counter() - start
    errors, flags = {}, {}
    for name in [*UNSEEN, LONG]:
        c = curve(name)
        predicted = float(fitted.predict(c.lrs, [len(c.lrs)])[0])
        band = fitted.band(c.lrs, [len(c.lrs)])
        errors[name] = {"predicted": predicted, "measured": final_loss(c), "error": predicted - final_loss(c),
                        "band": None if band is None else float(band[0])}
        seeds = seed_finals(curves, length, name)
        if len(seeds) > 1:  # a SPREAD schedule: its error against the mean over seeds too
            errors[name].update(seed_mean=float(np.mean(seeds)), error_to_seed_mean=predicted - float(np.mean(seeds)))
        warning = fitted.range_warning(c.lrs, name)
        if warning:
            flags[name] = warning
    same_length = [abs(errors[n]["error"]) for n in UNSEEN]
    # How well the law fits the end of its own fitted runs: a miss there is the law's shape, not an
    # extrapolation, and bounds how well any unseen end can be predicted.
    fitted_end = {name: error for name, (_, _, error) in zip(names, fitted.end_errors(fitted_curves))}
    return {"length": length, "law": law, "procedure": procedure, "fit_set": fit_set, "fitted": list(names),
            "fit": fitted.to_dict(), "fit_seconds": seconds, "errors": errors, "fitted_end_errors": fitted_end,
            "outside_lr_range": flags,
            "mean_abs_error": float(np.mean(same_length)), "max_abs_error": float(np.max(same_length)),
            "long_abs_error": abs(errors[LONG]["error"]), "within_target": bool(max(same_length) <= TARGET)}


def check_optimized(curves: dict, optimized: dict, length: int) -> dict:
    """The optimized schedule against cosine at `length`, paired by seed: {seed: final loss} each."""
    cosine = {c["seed"]: final_loss(loss_law.curve_from_dict(c)) for key, c in curves.items()
              if key.startswith(f"{length}/") and c["schedule"] == "cosine"}
    diff = lp.paired_difference(optimized, cosine)
    return {"length": length, "optimized": optimized, "cosine": {s: cosine[s] for s in diff.seeds},
            "differences": diff.differences, "mean": diff.mean, "interval_95": [diff.low, diff.high],
            "line": diff.line("optimized", "cosine")}


def draw(report: dict, path: Path) -> None:
    """Error against run length, one panel per floor of the fitted runs: each law and procedure
    (2-run fits solid, 3-run fits dashed), the seed spread in grey and the 0.03-nat target."""
    from minigpt.plots import new_figure, save_figure

    rows = report["fits"]
    panels = {title: sets for title, sets in PANELS.items() if any(r["fit_set"] in sets for r in rows)}
    fig = new_figure(6 * len(panels), 5)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    colors = {(law, proc): f"C{i}" for i, (law, proc) in
              enumerate((law, proc) for law in loss_law.LAWS for proc in loss_law.PROCEDURES)}
    spread = sorted((int(length), float(np.mean(list(s.values())))) for length, s in report["seed_spread"].items() if s)
    for ax, (title, fit_sets) in zip(axes, panels.items()):
        for (law, proc), color in colors.items():
            for fit_set, style in zip(fit_sets, ("-", "--")):
                pts = sorted((r["length"], r["mean_abs_error"]) for r in rows
                             if r["law"] == law and r["procedure"] == proc and r["fit_set"] == fit_set)
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=color, label=f"{law}, {proc}, fit on {fit_set}")
        if spread:
            ax.plot(*zip(*spread), ":", marker="s", color="grey", label="seed spread (std of the final loss)")
        ax.axhline(TARGET, color="k", lw=0.8, ls=":", label=f"target {TARGET} nats")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("run length (steps)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    axes[0].set_ylabel("mean |predicted - measured| final loss,\nfive unseen schedules (nats)")
    fig.suptitle(report.get("title", "where each loss law holds"), fontsize=10)
    save_figure(fig, path)


def fitted_end_text(row: dict) -> str:
    """The largest miss on a fitted run's own end, for the summary (rows from before the key: none)."""
    ends = row.get("fitted_end_errors")
    if not ends:
        return ""
    name = max(ends, key=lambda n: abs(ends[n]))
    return f", fitted ends within {abs(ends[name]):.4f} ({name} {ends[name]:+.4f})"


def summary_lines(report: dict) -> list[str]:
    """The report as text: per length, each fit's mean and largest error and the seed spread."""
    lines = []
    for row in report["fits"]:
        spread = report["seed_spread"].get(str(row["length"]), {})
        noise = f"{np.mean(list(spread.values())):.4f}" if spread else "n/a"
        flags = row["fit"]["unidentified"] + [f"{n} (bound)" for n in row["fit"]["at_bound"]]
        lines.append(f"{row['length']:>6} {row['law']:<11} {row['procedure']:<9} {row['fit_set']}: mean error "
                     f"{row['mean_abs_error']:.4f}, largest {row['max_abs_error']:.4f}, 2x-long "
                     f"{row['long_abs_error']:.4f} (seed spread {noise}){fitted_end_text(row)}; flagged: "
                     f"{', '.join(flags) or 'none'}")
    if report.get("optimized_check"):
        lines.append(report["optimized_check"]["line"])
    return lines
