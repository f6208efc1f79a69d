"""What beats cosine? The CPU study of docs/beats_cosine.md: optimizers and schedules against an
AdamW cosine baseline, each at its own tuned peak LR, judged over seeds.

Every arm runs on `experiment=cpu_quick` (2 layers, 64 wide, context 64, 800 steps; the small
CPU config whose seeds land within about 0.05 nats of each other, below 0.66 x the unigram
entropy). The study goes in three stages, each decided from the finished runs alone, so that
running it again trains only what is missing and takes the same decisions:

1. LR sweep, one seed (SEEDS[0]): each arm's peak LR on a half-decade grid (factors of
   sqrt(10)) centred on its optimizer's default; when the lowest final loss sits at an edge of
   the grid, the grid grows one point that way (up to `extend` points per side).
2. Seeds: the chosen LR with every seed of SEEDS (the sweep's run is the first seed).
3. Equal wall-clock: an arm whose median step takes more than EQUAL_TIME_RATIO x the baseline's
   (Muon's Newton-Schulz iterations on a CPU) runs again at the chosen LR for the number of steps
   the baseline does in the same time; the step count is decided once and kept in
   `decisions.json`, since step times vary with the machine's load.

The statistics are those of every sweep (minigpt/studies/sweep/arms.py): the difference of each
arm's final validation loss to the baseline's, paired over seeds, with its 95% interval and a
verdict. The constant + EMA arm is judged at its weight average (val/loss_ema); the same runs
judged at their raw weights give the extra arm "constant (no average)".
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from minigpt.errors import UserError
from minigpt.files import relative_name
from minigpt.run.keys import Key
from minigpt.run.metrics import SUMMARY_FILE
from minigpt.studies.sweep.arms import Arm, Comparison, Difference, Setting, compare, rank_arms
from minigpt.studies.run_queue import train_queue
from minigpt.studies.sweep.jobs import Job, read_job

# What every run trains on (`extra` overrides come after it). The study's runs read validation
# windows drawn with each run's seed, the only kind until trainer.eval_seed (2026-12-07): pinned.
BASE = ["experiment=cpu_quick", "trainer.eval_seed=null"]
SEEDS = (1, 2, 3)  # cpu_quick's documented seeds; SEEDS[0] runs the LR sweep
GRID_POINTS = 3  # the LR sweep's starting grid: centre x 10^(k/2), k = -1, 0, 1
EXTEND = 2  # at most this many more points per side when the best LR sits at an edge
# An arm whose step costs more than this x the baseline's gets an equal-time run. Not lower: the step
# times are wall time on a shared machine, and a 30-step check measured an EMA arm at 1.17x (Muon: 1.5x-1.9x).
EQUAL_TIME_RATIO = 1.25
BASELINE = "cosine"
DECISIONS_FILE = "decisions.json"
FINISHED = ("completed", "diverged")  # a run that ended either way is not run again


@dataclass(frozen=True)
class ArmSpec:
    name: str  # folder and report key, e.g. "wsd"
    title: str  # what the report prints
    overrides: tuple[str, ...]  # train.py overrides on top of BASE (no optim.lr, no seed)
    centre_lr: float  # the LR grid's centre: the optimizer's default peak LR
    judged_at: str = "weights"  # "weights": final val/loss | "average": final val/loss_ema (optim.ema)


# The study ran with a 10% warmup, the default until 2026-12-07 (now 20%): the arms say it.
W10 = "scheduler.warmup=0.1"
MODDED_NANOGPT = ("scheduler=wsd", "scheduler.warmup=0", "scheduler.decay=0.6", "scheduler.decay_shape=linear",
                  "scheduler.min_lr_ratio=0.15")
ARMS = (
    ArmSpec("cosine", "AdamW, cosine to 0.1x, 10% warmup (baseline)", ("scheduler=cosine_warmup", W10), 5e-3),
    ArmSpec("wsd", "AdamW, WSD: 10% warmup, 20% 1-sqrt cooldown to 0",
            ("scheduler=wsd", W10, "scheduler.decay=0.2", "scheduler.decay_shape=1-sqrt", "scheduler.min_lr_ratio=0"), 5e-3),
    ArmSpec("linear_to_zero", "AdamW, linear decay to 0, 10% warmup",
            ("scheduler=linear_warmup", W10, "scheduler.min_lr_ratio=0"), 5e-3),
    ArmSpec("constant_ema", "AdamW, constant, 10% warmup, EMA half-life 10% (judged at the EMA)",
            ("scheduler=constant_warmup", W10, "optim.ema=10%"), 5e-3, judged_at="average"),
    ArmSpec("schedule_free", "schedule-free AdamW, 10% warmup", ("optim=schedule_free", "scheduler=constant_warmup", W10),
            5e-3),
    ArmSpec("muon", "Muon (AdamW at 0.25x on the rest), no warmup, linear cooldown over the last 60% to 0.15x",
            ("optim=muon", *MODDED_NANOGPT), 2e-2),
    ArmSpec("no_warmup_adamw", "AdamW, cosine to 0.1x, no warmup", ("scheduler=cosine_warmup", "scheduler.warmup=0"),
            5e-3),
    ArmSpec("no_warmup_gi_adam", "GI-Adam (optim.adam_init=grad), cosine to 0.1x, no warmup",
            ("scheduler=cosine_warmup", "scheduler.warmup=0", "optim.adam_init=grad"), 5e-3),
)
PAIR = ("no_warmup_gi_adam", "no_warmup_adamw")  # compared with each other too: does GI-Adam replace the warmup?
RAW_CONSTANT = "constant (no average)"  # the constant_ema runs judged at their weights


def arm_specs(names: Sequence[str] | None = None) -> list[ArmSpec]:
    """The arms to run, in ARMS order; the baseline always. An unknown name is a UserError listing the arms."""
    known = {a.name: a for a in ARMS}
    names = list(names or known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown arm {', '.join(map(repr, unknown))}; the arms: {', '.join(known)}")
    return [a for a in ARMS if a.name in names or a.name == BASELINE]


def grid_lr(centre: float, k: int) -> float:
    """The k-th half-decade point around `centre`, to 3 significant digits (the value train.py gets)."""
    return float(f"{centre * 10 ** (k / 2):.3g}")


def lr_text(lr: float) -> str:
    return f"{lr:.3g}"


@dataclass(frozen=True)
class Run:
    arm: str
    lr: float
    seed: int
    overrides: tuple[str, ...]
    steps: int | None = None  # set for an equal-time run: its max_steps

    @property
    def name(self) -> str:
        return f"lr{lr_text(self.lr)}_s{self.seed}" + (f"_{self.steps}steps" if self.steps else "")

    @property
    def group(self) -> str:
        return self.arm + ("_equal_time" if self.steps else "")

    def folder(self, root: Path) -> Path:
        return Path(root) / self.group / self.name


def make_run(spec: ArmSpec, lr: float, seed: int, extra: Sequence[str] = (), steps: int | None = None) -> Run:
    own = [*BASE, *spec.overrides, f"optim.lr={lr_text(lr)}", f"seed={seed}", *extra]
    if steps:
        own.append(f"trainer.max_steps={steps}")  # last: it wins over an `extra` run length
    return Run(spec.name, lr, seed, tuple(own), steps)


# --- reading what has run --------------------------------------------------------------------------


def read(run: Run, root: Path) -> Job | None:
    """The run's job, once it has a summary (completed, diverged or failed); None before."""
    folder = run.folder(root)
    if not (folder / SUMMARY_FILE).exists():
        return None
    return read_job(folder, Path(root))


def finished(run: Run, root: Path) -> bool:
    job = read(run, root)
    return job is not None and job.status in FINISHED


class AveragedJob(Job):
    """A run seen at its weight average: final_val_loss and the val/loss curve are the EMA's
    (val/loss_ema); the evaluation's standard error is not recorded for it."""

    @property
    def final_val_loss(self) -> float | None:
        return self.final_val_loss_ema

    @property
    def val_loss_stderr(self) -> float | None:
        return None

    def curve(self, key: str) -> tuple[list[int], list[float]]:
        return super().curve(Key.VAL_LOSS_EMA if key == Key.VAL_LOSS else key)


def judged(job: Job, spec: ArmSpec) -> Job:
    """The job as the arm is judged: at its weights, or at its average (an AveragedJob)."""
    if spec.judged_at != "average":
        return job
    return AveragedJob(job.path, job.name, job.overrides, job.config, job.summary, job.records, job.error)


def final_loss(job: Job | None, spec: ArmSpec) -> float:
    """The loss an LR is chosen by: the judged final val loss; inf for a diverged, failed or missing run."""
    if job is None:
        return math.inf
    value = judged(job, spec).final_val_loss
    return math.inf if value is None else value


# --- the stages: what to run next, from what has run ----------------------------------------------


def sweep_points(spec: ArmSpec, losses: Mapping[int, float], grid_points: int = GRID_POINTS,
                 extend: int = EXTEND) -> list[int]:
    """The grid indices k the LR sweep needs, given the final losses of the points run so far
    ({k: loss}): the starting grid, plus one more point beyond an edge that holds the lowest loss
    (while fewer than `extend` were added on that side). Pure: the same losses, the same points."""
    low = -((grid_points - 1) // 2)
    points = list(range(low, low + grid_points))
    while all(k in losses for k in points):
        finite = {k: losses[k] for k in points if math.isfinite(losses[k])}
        if not finite:
            # every point diverged: try lower LRs
            best = points[0]
        else:
            best = min(finite, key=lambda k: (finite[k], abs(k)))
        if best == points[0] and points[0] > low - extend:
            points.insert(0, points[0] - 1)
        elif best == points[-1] and finite and points[-1] < low + grid_points - 1 + extend:
            points.append(points[-1] + 1)
        else:
            break
    return points


@dataclass
class LRSweep:
    arm: str
    points: dict[float, float]  # lr -> final loss (inf: diverged), the points that finished
    chosen: float | None  # None until every needed point finished
    at_edge: bool  # the chosen LR is the sweep's lowest or highest (after the allowed extensions)
    pending: list[Run]


def lr_sweep(spec: ArmSpec, root: Path, extra: Sequence[str] = (), grid_points: int = GRID_POINTS,
             extend: int = EXTEND, seed: int = SEEDS[0]) -> LRSweep:
    """The arm's LR sweep (one seed) as far as the finished runs take it, and the runs it needs next."""
    losses: dict[int, float] = {}
    while True:
        needed = sweep_points(spec, losses, grid_points, extend)
        new = {k: make_run(spec, grid_lr(spec.centre_lr, k), seed, extra) for k in needed if k not in losses}
        done = {k: r for k, r in new.items() if finished(r, root)}
        if not done:
            pending = list(new.values())
            break
        for k, r in done.items():
            losses[k] = final_loss(read(r, root), spec)
    points = {grid_lr(spec.centre_lr, k): losses[k] for k in sorted(losses)}
    chosen, at_edge = None, False
    if not pending:
        finite = {lr: v for lr, v in points.items() if math.isfinite(v)}
        if finite:
            chosen = min(finite, key=finite.get)
            at_edge = chosen in (min(points), max(points))
    return LRSweep(spec.name, points, chosen, at_edge, pending)


def step_ms(jobs: Sequence[Job], skip: int = 10) -> float | None:
    """The median time of one optimizer step (perf/step_ms, evaluations excluded) over the jobs'
    steps after their first `skip`."""
    values = [r[Key.STEP_MS] for j in jobs for r in j.train_records if Key.STEP_MS in r and r["step"] >= skip]
    return statistics.median(values) if values else None


def equal_time_steps(steps: int, arm_ms: float, baseline_ms: float, ratio: float = EQUAL_TIME_RATIO) -> int | None:
    """The steps the arm runs in the baseline's wall-clock (steps x baseline / arm), when its step
    costs more than `ratio` x the baseline's; else None (no equal-time run)."""
    if arm_ms <= ratio * baseline_ms:
        return None
    return max(1, round(steps * baseline_ms / arm_ms))


def load_decisions(root: Path) -> dict:
    path = Path(root) / DECISIONS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def save_decisions(root: Path, decisions: dict) -> None:
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / DECISIONS_FILE).write_text(json.dumps(decisions, indent=1) + "\n")


# --- training ------------------------------------------------------------------------------------------


def train_runs(runs: Sequence[Run], root: Path, jobs: int = 2, python: str = sys.executable,
               log: Callable[[str], None] = print) -> dict[str, float]:
    """Train the runs not finished yet, `jobs` at a time (one torch thread each, as cpu_quick sets);
    a diverged run is finished (train.py exits 3). Returns the wall seconds of each run trained."""
    todo = [(f"{r.group}/{r.name}", r.folder(root), list(r.overrides)) for r in runs if not finished(r, root)]
    return train_queue(todo, jobs, python, ok_status=(0, 3), poll_s=0.2, log=lambda label, command: log(f"run {label}"))


@dataclass
class Study:
    """One study: where its runs go, its arms and settings. Every decision is read from the runs."""

    root: Path
    specs: list[ArmSpec]
    extra: tuple[str, ...] = ()
    seeds: tuple[int, ...] = SEEDS
    grid_points: int = GRID_POINTS
    extend: int = EXTEND

    def spec(self, name: str) -> ArmSpec:
        return next(s for s in self.specs if s.name == name)

    def sweep(self, spec: ArmSpec) -> LRSweep:
        return lr_sweep(spec, self.root, self.extra, self.grid_points, self.extend, self.seeds[0])

    def chosen(self) -> dict[str, float | None]:
        return {s.name: self.sweep(s).chosen for s in self.specs}

    def seed_runs(self, spec: ArmSpec, lr: float, steps: int | None = None) -> list[Run]:
        return [make_run(spec, lr, s, self.extra, steps) for s in self.seeds]

    def jobs(self, runs: Sequence[Run]) -> list[Job]:
        """The runs' jobs that have a summary."""
        return [j for j in (read(r, self.root) for r in runs) if j is not None]

    def equal_time(self, spec: ArmSpec, lr: float) -> dict | None:
        """The arm's equal-time decision ({steps, of, step_ms, baseline_step_ms}; steps None: its step is
        not dearer than EQUAL_TIME_RATIO x the baseline's), made and kept in decisions.json once every seed
        of the arm and of the baseline finished; None before."""
        key = f"{spec.name}@{lr_text(lr)}"
        decisions = load_decisions(self.root)
        if key in decisions.get("equal_time_steps", {}):
            return decisions["equal_time_steps"][key]
        base_lr = self.sweep(self.spec(BASELINE)).chosen
        if spec.name == BASELINE or base_lr is None:
            return None
        arm_runs, base_runs = self.seed_runs(spec, lr), self.seed_runs(self.spec(BASELINE), base_lr)
        if not all(finished(r, self.root) for r in arm_runs + base_runs):
            return None
        arm, base = self.jobs(arm_runs), self.jobs(base_runs)
        arm_ms, base_ms, steps = step_ms(arm), step_ms(base), base[0].total_steps
        decision = {"steps": equal_time_steps(steps, arm_ms, base_ms) if steps and arm_ms and base_ms else None,
                    "of": steps, "step_ms": arm_ms, "baseline_step_ms": base_ms}
        decisions.setdefault("equal_time_steps", {})[key] = decision
        save_decisions(self.root, decisions)
        return decision

    def run(self, jobs: int = 2, log: Callable[[str], None] = print) -> dict[str, float]:
        """Every stage, training what is missing; returns the wall seconds of the runs trained now."""
        seconds: dict[str, float] = {}
        while True:  # stage 1: the arms' sweeps advance together, so `jobs` runs are in flight
            pending = [r for s in self.specs for r in self.sweep(s).pending]
            if not pending:
                break
            log(f"LR sweeps: {len(pending)} runs to train")
            seconds.update(train_runs(pending, self.root, jobs, log=log))
        chosen = self.chosen()
        for s in self.specs:
            if chosen[s.name] is None:
                log(f"{s.name}: every LR of its sweep diverged; no seeds run")
        log("chosen peak LRs: " + ", ".join(f"{n} {lr_text(lr) if lr else 'none'}" for n, lr in chosen.items()))
        seconds.update(train_runs([r for s in self.specs if chosen[s.name] for r in self.seed_runs(s, chosen[s.name])],
                                  self.root, jobs, log=log))
        later = []  # stage 3: equal wall-clock
        for s in self.specs:
            decision = self.equal_time(s, chosen[s.name]) if chosen[s.name] else None
            if decision and decision["steps"]:
                later += self.seed_runs(s, chosen[s.name], decision["steps"])
        seconds.update(train_runs(later, self.root, jobs, log=log))
        return seconds


# --- the report ------------------------------------------------------------------------------------------


def _difference(d: Difference | None) -> dict | None:
    if d is None:
        return None
    return {"mean": d.mean, "low": d.low, "high": d.high, "method": d.method, "n": d.n, "sd": d.sd,
            "verdict": d.verdict, "note": d.note, "eval_stderr": d.eval_stderr}


def _arm_row(arm: Arm, title: str, lr: float, jobs: Sequence[Job], entropy: float | None) -> dict:
    wall = [j.summary.get("wall_time_s") for j in jobs if j.summary and j.summary.get("wall_time_s") is not None]
    return {"name": arm.label, "title": title, "lr": lr, "finals": arm.finals(), "n": arm.n, "mean": arm.mean,
            "sd": arm.sd, "eval_stderr": arm.eval_stderr,
            "over_unigram": arm.mean / entropy if arm.mean is not None and entropy else None,
            "statuses": {j.seed: j.status for j in jobs}, "steps": jobs[0].total_steps if jobs else None,
            "step_ms": step_ms(jobs), "run_wall_s": statistics.fmean(wall) if wall else None}


def comparison(arms: Sequence[Arm], baseline: Arm) -> Comparison:
    """The arms against the named baseline, ranked (minigpt/studies/sweep/arms.py)."""
    jobs = [j for a in arms for j in a.jobs]
    return Comparison(Setting({}, jobs), list(arms), baseline, True,
                      {a.label: compare(a, baseline) for a in arms if a is not baseline}, rank_arms(arms))


@dataclass
class Report:
    data: dict  # report.json
    main: Comparison | None  # every arm at its chosen LR against the baseline
    equal_time: Comparison | None  # the equal-time arms against the baseline
    curves: list[tuple[str, list[Job]]]  # (arm, its seeds' jobs as judged) for the figures
    equal_time_curves: list[tuple[str, list[Job]]]


def build_report(study: Study) -> Report:
    """The study's results from its run folders (a missing run is reported missing, not run)."""
    sweeps = {s.name: study.sweep(s) for s in study.specs}
    arms, rows, curves = [], [], []
    entropy = None
    for s in study.specs:
        lr = sweeps[s.name].chosen
        if lr is None:
            continue
        raw = study.jobs(study.seed_runs(s, lr))
        jobs = [judged(j, s) for j in raw]
        entropy = entropy or next((j.unigram_entropy for j in raw if j.unigram_entropy), None)
        arm = Arm(s.name, {"arm": s.name}, jobs)
        arms.append(arm)
        rows.append(_arm_row(arm, s.title, lr, raw, entropy))
        curves.append((s.name, jobs))
        if s.judged_at == "average":
            plain = Arm(RAW_CONSTANT, {"arm": RAW_CONSTANT}, raw)
            arms.append(plain)
            rows.append(_arm_row(plain, s.title.split(", EMA")[0] + ", judged at its weights (no average)", lr, raw,
                                 entropy))
            curves.append((RAW_CONSTANT, raw))
    baseline = next((a for a in arms if a.label == BASELINE and a.n), None)
    main = comparison(arms, baseline) if baseline and len(arms) > 1 else None
    for row in rows:
        row["rank"] = main.ranks.get(row["name"]) if main else None
        row["minus_baseline"] = _difference(main.differences.get(row["name"])) if main else None
    by_name = {a.label: a for a in arms}
    pair = None
    if all(n in by_name and by_name[n].n for n in PAIR):
        pair = {"arm": PAIR[0], "baseline": PAIR[1], **_difference(compare(by_name[PAIR[0]], by_name[PAIR[1]]))}

    decisions, et_arms, et_rows, et_curves = {}, [], [], []
    for s in study.specs:
        lr = sweeps[s.name].chosen
        decision = study.equal_time(s, lr) if lr is not None and s.name != BASELINE else None
        if decision is None:
            continue
        decisions[s.name] = {"lr": lr, **decision}
        if decision["steps"]:
            raw = study.jobs(study.seed_runs(s, lr, decision["steps"]))
            jobs = [judged(j, s) for j in raw]
            label = f"{s.name} at equal time"
            arm = Arm(label, {"arm": label}, jobs)
            et_arms.append(arm)
            et_rows.append(_arm_row(arm, f"{s.title}, {decision['steps']} steps (the baseline's wall-clock)", lr, raw,
                                    entropy))
            et_curves.append((label, jobs))
    equal = comparison([baseline, *et_arms], baseline) if baseline and et_arms else None
    for row in et_rows:
        row["minus_baseline"] = _difference(equal.differences.get(row["name"])) if equal else None

    data = {
        "title": "what beats cosine?", "runs": relative_name(study.root),
        "base": BASE, "extra": list(study.extra), "seeds": list(study.seeds),
        "grid_points": study.grid_points, "extend": study.extend, "baseline": BASELINE,
        "unigram_entropy": entropy,
        "lr_sweep": {n: {"points": {lr_text(lr): (v if math.isfinite(v) else None) for lr, v in sw.points.items()},
                         "chosen": sw.chosen, "at_edge": sw.at_edge, "missing": len(sw.pending)}
                     for n, sw in sweeps.items()},
        "arms": rows, "pair": pair,
        "equal_time": {"ratio": EQUAL_TIME_RATIO, "decisions": decisions, "arms": et_rows},
    }
    return Report(data, main, equal, curves, et_curves)


def _f(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def markdown(report: Report) -> list[str]:
    """report.md: the arms, the per-seed table and the differences to cosine (the sweep report's
    own table), the LR sweeps, the step times and the equal-time comparison."""
    from minigpt.studies.sweep.report import comparison_lines

    d = report.data
    out = [f"# {d['title']}", "",
           f"Every run: `{' '.join(d['base'] + d['extra'])}`; seeds {', '.join(map(str, d['seeds']))}; the LR chosen "
           f"on seed {d['seeds'][0]} from a half-decade grid. Unigram entropy of the validation tokens: "
           f"{_f(d['unigram_entropy'])} nats.", "", "## The arms", ""]
    out += _table(["arm", "what it runs", "peak LR", "steps", "mean final val loss", "x unigram entropy"],
                  [[r["name"], r["title"], lr_text(r["lr"]), r["steps"] or "–", _f(r["mean"]), _f(r["over_unigram"], 3)]
                   for r in d["arms"]])
    out += ["", "## Against cosine", ""]
    out += comparison_lines(report.main) if report.main else ["The baseline has no completed seed: nothing compared.", ""]
    if d["pair"]:
        p = d["pair"]
        interval = f"[{p['low']:+.4f}, {p['high']:+.4f}]" if p["low"] is not None else "(no interval)"
        out += [f"No-warmup pair: {p['arm']} minus {p['baseline']} = {p['mean']:+.4f} nats, 95% interval {interval}: "
                f"**{p['verdict']}** ({p['method']}, {p['n']} seeds).", ""]
    out += ["## LR sweeps", "", f"Final validation loss on seed {d['seeds'][0]} at each peak LR (inf: diverged); "
            "**bold**: chosen. *at the edge*: the best LR is the highest or lowest tried after the allowed extensions, "
            "so a better one may lie beyond.", ""]
    for name, sw in d["lr_sweep"].items():
        points = ", ".join((f"**{lr}: {_f(v)}**" if sw["chosen"] is not None and lr == lr_text(sw["chosen"])
                            else f"{lr}: {_f(v) if v is not None else 'inf'}") for lr, v in sw["points"].items())
        notes = (" (at the edge)" if sw["at_edge"] else "") + (f" ({sw['missing']} runs missing)" if sw["missing"] else "")
        out.append(f"- {name}: {points}{notes}")
    base_ms = next((r["step_ms"] for r in d["arms"] if r["name"] == BASELINE), None)
    out += ["", "## Step times", "", "Median wall time of one optimizer step over the seeds' runs (evaluations "
            "excluded; two runs at a time, one thread each, on a machine shared with other work), and the mean wall "
            "time of a whole run (start-up and evaluations included).", ""]
    out += _table(["arm", "step (ms)", "x baseline", "run (s, trainer)"],
                  [[r["name"], _f(r["step_ms"], 1), _f(r["step_ms"] / base_ms, 2) if r["step_ms"] and base_ms else "–",
                    _f(r["run_wall_s"], 0)] for r in d["arms"] + d["equal_time"]["arms"]])
    out += ["", "## At equal wall-clock", ""]
    et = d["equal_time"]
    if report.equal_time:
        out += [f"An arm whose step costs more than {et['ratio']}x the baseline's runs again at its chosen LR for the "
                "steps the baseline does in the same time (its schedule compressed to that length, LR not re-tuned).", ""]
        out += comparison_lines(report.equal_time)
    else:
        dear = [n for n, x in et["decisions"].items() if x["steps"]]
        if not et["decisions"]:
            out += ["Not decided yet: the seeds of the baseline and of the other arms have not all finished.", ""]
        elif not dear:
            out += [f"No arm's step cost more than {et['ratio']}x the baseline's: the comparison above is also "
                    "the one at equal wall-clock.", ""]
        else:
            out += ["The equal-time runs of " + ", ".join(dear) + " have not finished.", ""]
    return out


def draw_lr_sweeps(data: dict, path: Path) -> None:
    """Final loss against peak LR, one line per arm; the chosen LR circled."""
    from minigpt.plots import new_figure, save_figure

    fig = new_figure(8, 5)
    ax = fig.add_subplot()
    for i, (name, sw) in enumerate(data["lr_sweep"].items()):
        pts = [(float(lr), v) for lr, v in sw["points"].items()]
        finite = [(x, y) for x, y in pts if y is not None]
        color = f"C{i % 10}"
        if finite:
            ax.plot(*zip(*finite), "-o", ms=4, color=color, label=name)
        for x, y in pts:
            if y is None:
                ax.plot([x], [max((y for _, y in finite), default=0)], "x", color=color, ms=8, mew=2)
        if sw["chosen"] is not None:
            ax.plot([sw["chosen"]], [sw["points"][lr_text(sw["chosen"])]], "o", ms=11, mfc="none", color=color)
    ax.set_xscale("log")
    ax.set_xlabel("peak LR")
    ax.set_ylabel(f"final validation loss, seed {data['seeds'][0]}")
    ax.set_title("LR sweeps (circled: chosen; x: diverged)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def draw_wall_clock(curves: Sequence[tuple[str, Sequence[Job]]], path: Path) -> None:
    """Training loss (mean over seeds, a trailing mean over 1% of the steps) against the summed
    time of the steps so far (perf/step_ms, the seeds' mean): what each arm reached in what time."""
    from minigpt.plots import new_figure, save_figure

    fig = new_figure(9, 5)
    ax = fig.add_subplot()
    for i, (label, jobs) in enumerate(curves):
        per_job = []
        for j in jobs:
            rows = [r for r in j.train_records if Key.STEP_MS in r and Key.LOSS in r]
            if rows:
                t, clock = [], 0.0
                for r in rows:
                    clock += r[Key.STEP_MS] / 1000
                    t.append(clock)
                per_job.append((t, [r[Key.LOSS] for r in rows]))
        if not per_job:
            continue
        n = min(len(t) for t, _ in per_job)
        t = [statistics.fmean(p[0][k] for p in per_job) for k in range(n)]
        loss = [statistics.fmean(p[1][k] for p in per_job) for k in range(n)]
        window = max(1, n // 100)
        smooth = [statistics.fmean(loss[max(0, k - window + 1):k + 1]) for k in range(n)]
        ax.plot(t, smooth, lw=1.2, color=f"C{i % 10}", ls="--" if "equal time" in label else "-", label=label)
    ax.set_xlabel("seconds of optimizer steps (mean over seeds; evaluations excluded)")
    ax.set_ylabel("training loss (at the weights), mean over seeds")
    ax.set_title("loss against wall-clock (dashed: runs cut to the baseline's time)", fontsize=10)
    lows = [min(line.get_ydata()) for line in ax.get_lines()]
    highs = [line.get_ydata()[len(line.get_ydata()) // 10] for line in ax.get_lines()]  # past the first drop
    if lows:
        ax.set_ylim(min(lows) - 0.1, max(highs))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def write_report(report: Report, out: Path) -> list[Path]:
    """report.json, report.md, curves.png, lr_sweep.png and wall_clock.png in `out`."""
    from minigpt.studies.sweep.figures import plot_sweep_curves

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md", out / "curves.png", out / "lr_sweep.png", out / "wall_clock.png"]
    paths[0].write_text(json.dumps(report.data, indent=1) + "\n")
    paths[1].write_text("\n".join(markdown(report)) + "\n")
    plot_sweep_curves(report.curves, "loss", paths[2])
    draw_lr_sweeps(report.data, paths[3])
    same_runs = {RAW_CONSTANT}  # constant_ema's runs: the training loss of both is the weights'
    draw_wall_clock([c for c in report.curves if c[0] not in same_runs] + report.equal_time_curves, paths[4])
    return paths
