"""Read the jobs of a sweep and compare them: the sweep table and the warmup-divergence study.

A sweep directory is what `python train.py -m ...` leaves behind: one job directory per cell,
each with `.hydra/config.yaml` and `.hydra/overrides.yaml`, `metrics.jsonl` and
`summary.json`. A job that crashed may hold only `error.txt` (or a summary with status
`failed`); a job that was killed may have records but no summary. Every one of them still
gets a row: a broken cell is news, not a reason to stop reading.

The study part groups jobs into arms (architecture x warmup) and, for each arm, curves of
final loss against the peak LR, and computes the LR sensitivity of Wortsman et al. 2023
("Small-scale proxies for large-scale Transformer training instabilities"):

    sensitivity = mean over LRs of min(final loss, initial loss)  -  best final loss

A run that diverged has no final loss and counts as its initial loss, so an arm that only
trains in a narrow band of LRs has a large sensitivity. The best final loss is either the
arm's own (how much the LR matters to this arm) or the best of all arms (how much is lost
by picking this arm and an LR from the grid at random).

No Hydra here: the YAML files Hydra wrote are read with PyYAML.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from minigpt.errors import UserError
from minigpt.metrics import METRICS_FILE, SUMMARY_FILE, read_metrics

ERROR_FILE = "error.txt"


# --- one job ---------------------------------------------------------------------------------


@dataclass
class Job:
    path: Path
    name: str  # the job directory relative to the sweep directory, e.g. "7"
    overrides: list[str]  # the job's command-line overrides, "key=value"
    config: dict  # the composed config Hydra saved (interpolations left as written)
    summary: dict | None  # summary.json, None when the job never wrote one
    records: list[dict]  # metrics.jsonl
    error: str | None  # the last line of error.txt, or the failure reason of the summary

    @property
    def status(self) -> str:
        """completed | diverged | interrupted | failed | incomplete (no summary: killed or still running)."""
        if self.summary and self.summary.get("status"):
            return str(self.summary["status"])
        return "failed" if self.error else "incomplete"

    def get(self, dotted: str, default=None):
        """A value of the job's config by dotted key, e.g. "optim.lr"."""
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def train_records(self) -> list[dict]:
        return [r for r in self.records if "train/loss" in r]

    @property
    def val_records(self) -> list[dict]:
        return [r for r in self.records if "val/loss" in r]

    @property
    def final_val_loss(self) -> float | None:
        """The validation loss at the end of a completed run; None for any other run."""
        if self.status != "completed":
            return None
        value = (self.summary or {}).get("final_val_loss")
        if value is None and self.val_records:
            value = self.val_records[-1]["val/loss"]
        return _finite(value)

    @property
    def best_val_loss(self) -> float | None:
        values = [_finite(r["val/loss"]) for r in self.val_records]
        values = [v for v in values if v is not None]
        if values:
            return min(values)
        return _finite((self.summary or {}).get("best_val_loss"))

    @property
    def initial_loss(self) -> float | None:
        """The validation loss before the first update (else the first training loss)."""
        value = _finite((self.summary or {}).get("initial_val_loss"))
        if value is not None:
            return value
        first_val = [r for r in self.val_records if r["step"] == 0]
        if first_val and _finite(first_val[0]["val/loss"]) is not None:
            return float(first_val[0]["val/loss"])
        train = self.train_records
        return _finite(train[0]["train/loss"]) if train else None

    @property
    def spikes(self) -> tuple[int, int] | None:
        """(loss spikes, grad-norm spikes) flagged by the monitor."""
        s = self.summary or {}
        if "spikes/loss" in s:
            return int(s["spikes/loss"]), int(s.get("spikes/grad_norm", 0))
        train = self.train_records
        if not train or "spike/loss" not in train[0]:
            return None
        return sum(bool(r.get("spike/loss")) for r in train), sum(bool(r.get("spike/grad_norm")) for r in train)

    @property
    def tok_per_s(self) -> float | None:
        value = (self.summary or {}).get("tok_per_s")
        if value is not None:
            return float(value)
        rates = [r["perf/tok_per_s"] for r in self.train_records if "perf/tok_per_s" in r]
        return statistics.median(rates) if rates else None

    @property
    def diverged_step(self) -> int | None:
        if self.status != "diverged":
            return None
        step = (self.summary or {}).get("diverged_step")
        return int(step) if step is not None else None

    @property
    def peak_lr(self) -> float | None:
        value = (self.summary or {}).get("peak_lr")
        if value is None:
            value = self.get("optim.lr")
        return _number(value)

    @property
    def total_steps(self) -> int | None:
        value = (self.summary or {}).get("total_steps")
        if value is None:
            value = self.get("trainer.max_steps")
        return int(value) if isinstance(value, (int, float)) else None

    @property
    def reason(self) -> str:
        if self.status in ("diverged", "failed", "interrupted"):
            return (self.summary or {}).get("reason") or self.error or ""
        return ""

    def early_peak_loss(self, steps: int) -> float | None:
        """Highest training loss over the first `steps` updates (steps 0..steps-1); inf if it was not finite."""
        values = [r["train/loss"] for r in self.train_records if r["step"] < steps]
        if not values:
            return None
        return max(v if math.isfinite(v) else math.inf for v in values)

    def curve(self, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.records if key in r and r[key] is not None]
        return [r["step"] for r in rows], [r[key] for r in rows]


def _finite(value) -> float | None:
    value = _number(value)
    return value if value is not None and math.isfinite(value) else None


def _number(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)  # YAML 1.1 reads 1e-3 as a string
    except (TypeError, ValueError):
        return None


def _read_yaml(path: Path):
    if not path.exists():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None


def read_job(path: Path, root: Path) -> Job:
    path = Path(path)
    config = _read_yaml(path / ".hydra" / "config.yaml") or {}
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml") or []
    summary = None
    if (path / SUMMARY_FILE).exists():
        try:
            summary = json.loads((path / SUMMARY_FILE).read_text())
        except ValueError:
            summary = None
    error = None
    if (path / ERROR_FILE).exists():
        lines = [line for line in (path / ERROR_FILE).read_text().splitlines() if line.strip()]
        error = lines[-1].strip() if lines else "error.txt is empty"
    if error is None and summary and summary.get("status") == "failed":
        error = summary.get("reason") or None
    name = str(path.relative_to(root)) if path != root else path.name
    return Job(path, name, [str(o) for o in overrides], config if isinstance(config, dict) else {}, summary,
               read_metrics(path), error)


def _is_job_dir(path: Path) -> bool:
    return any((path / f).exists() for f in (".hydra", SUMMARY_FILE, METRICS_FILE, ERROR_FILE))


def _sort_key(job: Job):
    parts = Path(job.name).parts
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts]


def find_jobs(sweep_dir) -> list[Job]:
    """Every job directory under a sweep directory (any depth), in job-number order."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise UserError(f"sweep directory '{sweep_dir}' does not exist or is not a folder; "
                        "give the folder a multirun wrote, e.g. multirun/2025-01-01_12-00-00")
    if _is_job_dir(root) and (root / ".hydra").exists() and not (root / "multirun.yaml").exists():
        dirs = [root]  # a single run directory: a sweep of one
    else:
        dirs = []
        stack = [root]
        while stack:
            d = stack.pop()
            for child in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if _is_job_dir(child):
                    dirs.append(child)
                else:
                    stack.append(child)
    if not dirs:
        raise UserError(f"no job directories under '{sweep_dir}' (a job directory holds .hydra/, summary.json, "
                        "metrics.jsonl or error.txt); give the folder `python train.py -m ...` wrote")
    return sorted((read_job(d, root) for d in dirs), key=_sort_key)


def varying_overrides(jobs: Sequence[Job]) -> tuple[list[str], dict[str, str]]:
    """(keys whose override differs between jobs, {key: value} of overrides every job shares)."""
    per_job = [dict(o.split("=", 1) if "=" in o else (o, "") for o in j.overrides) for j in jobs]
    keys: list[str] = []
    for d in per_job:
        keys.extend(k for k in d if k not in keys)
    varying = [k for k in keys if len({d.get(k) for d in per_job}) > 1]
    common = {k: per_job[0][k] for k in keys if k not in varying and per_job and k in per_job[0]}
    return varying, common


def job_label(job: Job, keys: Sequence[str]) -> str:
    d = dict(o.split("=", 1) if "=" in o else (o, "") for o in job.overrides)
    return " ".join(f"{k}={d[k]}" for k in keys if k in d) or job.name


def best_job(jobs: Iterable[Job]) -> Job | None:
    done = [j for j in jobs if j.final_val_loss is not None]
    return min(done, key=lambda j: j.final_val_loss) if done else None


# --- the LR sensitivity of Wortsman et al. 2023 -----------------------------------------------


def clipped_loss(final: float | None, initial: float) -> float:
    """min(final loss, initial loss); a run without a final loss (diverged) counts as its initial loss."""
    if final is None or not math.isfinite(final):
        return initial
    return min(final, initial)


def lr_sensitivity(curve: Mapping[float, float], best: float | None = None) -> float:
    """Mean over the LRs of the (clipped) final loss minus the best final loss.

    curve: peak LR -> min(final loss, initial loss), already averaged over seeds.
    best: the reference best loss; None takes the curve's own minimum.
    """
    if not curve:
        raise ValueError("lr_sensitivity needs at least one LR")
    values = list(curve.values())
    reference = min(values) if best is None else best
    return statistics.fmean(values) - reference


# --- the warmup-divergence study --------------------------------------------------------------


def architecture(job: Job) -> str:
    """A short name of the model's stability-relevant choices, e.g. 'pre-LN+QK-LN'."""
    norm = job.get("model.norm_position", "pre")
    name = f"{norm}-LN"
    if job.get("model.qk_layernorm"):
        name += "+QK-LN"
    z = _number(job.get("model.z_loss"))
    if z:
        name += f"+z-loss {z:g}"
    return name


def warmup_steps(job: Job) -> int | None:
    """The job's warmup in steps as its trainer built it (0 for schedules without one).

    Read from the run plan in summary.json; a job that never wrote one (it failed before its
    start) gets the plan rebuilt from its config, on one rank, by the trainer's own code."""
    plan = (job.summary or {}).get("plan")
    if isinstance(plan, Mapping) and "warmup_steps" in plan:
        return int(plan["warmup_steps"])
    from minigpt.config import config_from_dict
    from minigpt.plan import RunPlan

    try:
        return RunPlan.build(config_from_dict(job.config)).warmup_steps
    except (UserError, TypeError, ValueError):
        return None


def warmup_label(steps: int | None, total: int | None) -> str:
    if steps is None:
        return "warmup ?"
    if steps == 0:
        return "no warmup"
    share = f" ({steps / total:.0%})" if total else ""
    return f"warmup {steps} steps{share}"


@dataclass
class Cell:
    """The seeds of one (architecture, warmup, LR) cell."""

    arch: str
    warmup: int | None
    lr: float
    jobs: list[Job] = field(default_factory=list)

    def usable(self) -> list[Job]:
        """Jobs that say something about the LR: they completed or diverged (not crashed, killed)."""
        return [j for j in self.jobs if j.status in ("completed", "diverged") and j.initial_loss is not None]

    def clipped(self) -> list[float]:
        return [clipped_loss(j.final_val_loss, j.initial_loss) for j in self.usable()]

    @property
    def n_diverged(self) -> int:
        return sum(j.status == "diverged" for j in self.jobs)


@dataclass
class Study:
    jobs: list[Job]
    cells: dict[tuple[str, int | None, float], Cell]
    archs: list[str]
    warmups: list[int | None]
    lrs: list[float]
    total_steps: int | None
    early_steps: int  # the early window: early peak loss over steps 0..early_steps-1

    def arm(self, arch: str, warmup) -> dict[float, Cell]:
        return {lr: self.cells[(arch, warmup, lr)] for lr in self.lrs if (arch, warmup, lr) in self.cells}

    def arms(self) -> list[tuple[str, int | None]]:
        return [(a, w) for a in self.archs for w in self.warmups if self.arm(a, w)]

    def curve(self, arch: str, warmup) -> dict[float, float]:
        """LR -> mean over seeds of min(final, initial), for the LRs with at least one usable seed."""
        return {lr: statistics.fmean(c.clipped()) for lr, c in self.arm(arch, warmup).items() if c.clipped()}

    def best_overall(self) -> float | None:
        values = [v for a, w in self.arms() for v in self.curve(a, w).values()]
        return min(values) if values else None


def build_study(jobs: Sequence[Job], early_steps: int | None = None) -> Study | None:
    """Group the jobs by architecture, warmup and peak LR; None unless both LR and warmup vary."""
    cells: dict = {}
    for j in jobs:
        lr = j.get("optim.lr")
        lr = _number(lr)
        if lr is None:
            continue
        key = (architecture(j), warmup_steps(j), lr)
        cells.setdefault(key, Cell(*key)).jobs.append(j)
    lrs = sorted({k[2] for k in cells})
    warmups = sorted({k[1] for k in cells}, key=lambda w: (w is None, w or 0))
    if len(lrs) < 2 or len(warmups) < 2:
        return None
    order = ["pre-LN", "post-LN", "pre-LN+QK-LN"]
    archs = sorted({k[0] for k in cells}, key=lambda a: (order.index(a) if a in order else len(order), a))
    totals = [j.total_steps for j in jobs if j.total_steps]
    total = max(totals) if totals else None
    if early_steps is None:
        # The window in which the arms' LRs differ on the way up: the longest warmup.
        longest = max((w for w in warmups if w), default=0)
        early_steps = longest if longest > 0 else (max(1, round(0.1 * total)) if total else 100)
    return Study(list(jobs), cells, archs, warmups, lrs, total, early_steps)


def pick_high_lr(study: Study) -> float:
    """The LR of the early-curves figure: the highest LR at which the longest warmup trained on
    every seed of every architecture (where warmup visibly helps); else the middle LR."""
    longest = study.warmups[-1]
    for lr in reversed(study.lrs):
        cells = [study.cells.get((a, longest, lr)) for a in study.archs]
        cells = [c for c in cells if c is not None and c.jobs]
        if cells and all(j.status == "completed" for c in cells for j in c.jobs):
            return lr
    return study.lrs[len(study.lrs) // 2]


# --- markdown ---------------------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def _spread(values: Sequence[float], digits: int = 3) -> str:
    """'mean (min–max)' of a few seeds, or the single value."""
    if not values:
        return "–"
    if len(values) == 1:
        return _fmt(values[0], digits)
    return f"{_fmt(statistics.fmean(values), digits)} ({_fmt(min(values), digits)}–{_fmt(max(values), digits)})"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def sweep_table(jobs: Sequence[Job]) -> list[str]:
    keys, _ = varying_overrides(jobs)
    best = best_job(jobs)
    rows = []
    for j in jobs:
        spikes = j.spikes
        status = j.status + (f" at step {j.diverged_step}" if j.diverged_step is not None else "")
        if j.status in ("failed", "diverged") and j.reason:
            status += f": {j.reason}"
        rows.append([
            j.name + (" **best**" if j is best else ""),
            job_label(j, keys) if keys else " ".join(j.overrides) or "–",
            status,
            _fmt(j.final_val_loss, 4),
            _fmt(j.best_val_loss, 4),
            f"{spikes[0]} / {spikes[1]}" if spikes else "–",
            f"{j.tok_per_s:,.0f}" if j.tok_per_s else "–",
        ])
    return _table(["job", "overrides", "status", "final val loss", "best val loss", "spikes (loss / grad)",
                   "tokens/s"], rows)


def study_tables(study: Study) -> list[str]:
    best_all = study.best_overall()
    out = ["### LR sensitivity per arm", "",
           "Sensitivity (Wortsman et al. 2023) = mean over the peak LRs of min(final val loss, initial loss) "
           "minus the best final loss: of the arm itself, and of all arms "
           f"({_fmt(best_all, 4)}). Seeds are averaged first; a diverged run counts as its initial loss. "
           f"Early peak loss: the highest training loss over the first {study.early_steps} steps.", ""]
    rows = []
    for arch, w in study.arms():
        curve = study.curve(arch, w)
        cells = study.arm(arch, w)
        jobs = [j for c in cells.values() for j in c.jobs]
        diverged = [j for j in jobs if j.status == "diverged"]
        first_div = min((j.diverged_step for j in diverged if j.diverged_step is not None), default=None)
        spikes = [j.spikes[0] + j.spikes[1] for j in jobs if j.spikes]
        best_lr = min(curve, key=curve.get) if curve else None
        rows.append([
            arch, warmup_label(w, study.total_steps),
            _fmt(lr_sensitivity(curve), 3) if curve else "–",
            _fmt(lr_sensitivity(curve, best_all), 3) if curve and best_all is not None else "–",
            f"{best_lr:g}" if best_lr is not None else "–",
            _fmt(curve[best_lr], 4) if best_lr is not None else "–",
            f"{len(diverged)}/{len(jobs)}",
            _fmt(first_div),
            f"{sum(spikes)}" if spikes else "–",
        ])
    out += _table(["architecture", "warmup", "sensitivity (own best)", "sensitivity (best of all)", "best LR",
                   "best final loss", "diverged", "first divergence step", "spikes, all runs (loss+grad)"], rows)
    for arch, w in study.arms():
        out += ["", f"#### {arch}, {warmup_label(w, study.total_steps)}", ""]
        rows = []
        for lr, cell in study.arm(arch, w).items():
            finals = [j.final_val_loss for j in cell.jobs if j.final_val_loss is not None]
            peaks = [p for p in (j.early_peak_loss(study.early_steps) for j in cell.jobs) if p is not None]
            div_steps = [j.diverged_step for j in cell.jobs if j.diverged_step is not None]
            spikes = [j.spikes for j in cell.jobs if j.spikes]
            failed = [j for j in cell.jobs if j.status not in ("completed", "diverged")]
            rows.append([
                f"{lr:g}",
                _spread(finals, 3),
                _spread(cell.clipped(), 3),
                f"{cell.n_diverged}/{len(cell.jobs)}" + (f" ({len(failed)} failed or unfinished)" if failed else ""),
                ", ".join(str(s) for s in sorted(div_steps)) or "–",
                " ".join(f"{a}/{b}" for a, b in spikes) or "–",
                _spread(peaks, 2),
            ])
        out += _table(["peak LR", "final val loss, completed seeds", "min(final, initial)", "diverged",
                       "divergence steps", "spikes per seed (loss/grad)", "early peak loss"], rows)
    return out


def per_seed_table(study: Study) -> list[str]:
    """One row per job of the study: what each seed measured."""
    rows = []
    for (arch, w, lr), cell in sorted(study.cells.items(), key=lambda kv: (study.archs.index(kv[0][0]),
                                                                        study.warmups.index(kv[0][1]), kv[0][2])):
        for j in sorted(cell.jobs, key=lambda j: str(j.get("seed"))):
            rows.append([arch, warmup_label(w, study.total_steps), f"{lr:g}", str(j.get("seed", "–")), j.status,
                         _fmt(j.final_val_loss, 4), _fmt(j.early_peak_loss(study.early_steps), 3),
                         _fmt(j.diverged_step)])
    return _table(["architecture", "warmup", "peak LR", "seed", "status", "final val loss", "early peak loss",
                   "divergence step"], rows)


def report_markdown(sweep_dir, jobs: Sequence[Job], study: Study | None, figures: Mapping[str, str]) -> str:
    keys, common = varying_overrides(jobs)
    best = best_job(jobs)
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    lines = [f"# Sweep report: {sweep_dir}", "",
             f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".", ""]
    if common:
        lines += ["Overrides shared by every job: " + " ".join(f"`{k}={v}`" for k, v in common.items()), ""]
    if best is not None:
        lines += [f"**Best job: {best.name}** ({job_label(best, keys)}): final val loss {best.final_val_loss:.4f}.", ""]
    else:
        lines += ["**No job completed**, so there is no best job.", ""]
    lines += sweep_table(jobs) + [""]
    for key in ("loss", "lr"):
        if key in figures:
            lines += [f"![{key} against step]({figures[key]})", ""]
    if study is not None:
        lines += ["## Warmup-divergence study", ""]
        for key, alt in (("study_lr", "final loss against peak LR"), ("study_early", "early loss curves")):
            if key in figures:
                lines += [f"![{alt}]({figures[key]})", ""]
        lines += study_tables(study) + ["", "### Every run", ""] + per_seed_table(study) + [""]
    return "\n".join(lines)


def write_report(sweep_dir, out_dir=None, early_steps: int | None = None, high_lr: float | None = None) -> dict:
    """Read a sweep, write report.md and its figures into out_dir (default <sweep>/report); return the paths."""
    from minigpt import plots

    jobs = find_jobs(sweep_dir)
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    keys, _ = varying_overrides(jobs)
    labels = {j.name: job_label(j, keys) for j in jobs}
    figures: dict[str, str] = {}
    if any(j.train_records for j in jobs):
        plots.plot_sweep_curves(jobs, labels, "loss", out / "loss.png")
        plots.plot_sweep_curves(jobs, labels, "lr", out / "lr.png")
        figures.update(loss="loss.png", lr="lr.png")
    study = build_study(jobs, early_steps)
    if study is not None:
        if high_lr is not None and high_lr not in study.lrs:
            raise UserError(f"--lr {high_lr:g} is not a peak LR of this sweep; accepted: "
                            + ", ".join(f"{lr:g}" for lr in study.lrs))
        lr = high_lr if high_lr is not None else pick_high_lr(study)
        plots.plot_study_lr(study, out / "study_lr.png")
        plots.plot_study_early(study, lr, out / "study_early.png")
        figures.update(study_lr="study_lr.png", study_early="study_early.png")
    (out / "report.md").write_text(report_markdown(sweep_dir, jobs, study, figures))
    return {"report": out / "report.md", **{k: out / v for k, v in figures.items()}}
