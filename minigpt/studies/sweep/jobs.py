"""The jobs of a sweep, as read from the folders a multirun left behind.

A sweep directory is what `python train.py -m ...` leaves behind: one job directory per cell,
each with `.hydra/config.yaml` and `.hydra/overrides.yaml`, `metrics.jsonl` and
`summary.json`. A job that crashed may hold only `error.txt` (or a summary with status
`failed`); a job that was killed may have records but no summary. Every one of them still
gets a row: a broken cell is news, not a reason to stop reading.

No Hydra here: the YAML files Hydra wrote are read with PyYAML.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from minigpt.errors import UserError
from minigpt.run.metrics import METRICS_FILE, SUMMARY_FILE, read_metrics
from minigpt.run.keys import Key

ERROR_FILE = "error.txt"


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
        return [r for r in self.records if Key.LOSS in r]

    @property
    def val_records(self) -> list[dict]:
        return [r for r in self.records if Key.VAL_LOSS in r]

    @property
    def final_val_loss(self) -> float | None:
        """The validation loss at the end of a completed run; None for any other run."""
        if self.status != "completed":
            return None
        value = (self.summary or {}).get("final_val_loss")
        if value is None and self.val_records:
            value = self.val_records[-1][Key.VAL_LOSS]
        return finitenumber(value)

    @property
    def val_loss_stderr(self) -> float | None:
        """The standard error of the final validation loss over its batches (val/loss_stderr), for a completed run."""
        if self.final_val_loss is None:
            return None
        value = finitenumber((self.summary or {}).get("val_loss_stderr"))
        if value is None and self.val_records:
            value = finitenumber(self.val_records[-1].get(Key.VAL_LOSS_STDERR))
        return value

    @property
    def seed(self) -> str:
        """The job's seed as written in its config (or its overrides); '?' when neither says."""
        value = self.get("seed")
        if value is None:
            value = dict(o.split("=", 1) for o in self.overrides if "=" in o).get("seed")
        return "?" if value is None else str(value)

    @property
    def final_val_loss_ema(self) -> float | None:
        """The weight average's validation loss at the end of a completed run (optim.ema); else None."""
        if self.status != "completed":
            return None
        return finitenumber((self.summary or {}).get("final_val_loss_ema"))

    @property
    def best_val_loss(self) -> float | None:
        values = [finitenumber(r[Key.VAL_LOSS]) for r in self.val_records]
        values = [v for v in values if v is not None]
        if values:
            return min(values)
        return finitenumber((self.summary or {}).get("best_val_loss"))

    @property
    def initial_loss(self) -> float | None:
        """The validation loss before the first update (else the first training loss)."""
        value = finitenumber((self.summary or {}).get("initial_val_loss"))
        if value is not None:
            return value
        first_val = [r for r in self.val_records if r["step"] == 0]
        if first_val and finitenumber(first_val[0][Key.VAL_LOSS]) is not None:
            return float(first_val[0][Key.VAL_LOSS])
        train = self.train_records
        return finitenumber(train[0][Key.LOSS]) if train else None

    @property
    def spikes(self) -> tuple[int, int] | None:
        """(loss spikes, grad-norm spikes) flagged by the monitor."""
        s = self.summary or {}
        if "spikes/loss" in s:
            return int(s["spikes/loss"]), int(s.get("spikes/grad_norm", 0))
        train = self.train_records
        if not train or Key.SPIKE_LOSS not in train[0]:
            return None
        return sum(bool(r.get(Key.SPIKE_LOSS)) for r in train), sum(bool(r.get(Key.SPIKE_GRAD_NORM)) for r in train)

    @property
    def tok_per_s(self) -> float | None:
        value = (self.summary or {}).get("tok_per_s")
        if value is not None:
            return float(value)
        rates = [r[Key.TOK_PER_S] for r in self.train_records if Key.TOK_PER_S in r]
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
        return number(value)

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
        values = [r[Key.LOSS] for r in self.train_records if r["step"] < steps]
        if not values:
            return None
        return max(v if math.isfinite(v) else math.inf for v in values)

    @property
    def unigram_entropy(self) -> float | None:
        return finitenumber((self.summary or {}).get("unigram_entropy_val"))

    @property
    def stuck(self) -> bool:
        """Stopped by the monitor's stuck rule (still at the unigram level late in the run)."""
        return self.status == "diverged" and "stuck" in self.reason

    def val_loss_at(self, step: int) -> float | None:
        values = [finitenumber(r[Key.VAL_LOSS]) for r in self.val_records if r["step"] == step]
        return values[-1] if values else None

    def mean_train_loss(self, first: int, last: int) -> float | None:
        """Mean training loss over steps first..last-1 (inf if any was not finite); None without records."""
        values = [r[Key.LOSS] for r in self.train_records if first <= r["step"] < last]
        if not values:
            return None
        return statistics.fmean(values) if all(math.isfinite(v) for v in values) else math.inf

    def lr_exposure_step(self, exposure: float) -> int | None:
        """The first step after which the summed LR of the updates so far reaches `exposure`."""
        total = 0.0
        for r in self.train_records:
            total += r.get(Key.LR, 0.0)
            if total >= exposure * (1 - 1e-9):
                return r["step"] + 1
        return None

    def lr_exposure(self, steps: int) -> float:
        """Summed LR of the updates of steps 0..steps-1."""
        return sum(r.get(Key.LR, 0.0) for r in self.train_records if r["step"] < steps)

    def curve(self, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.records if key in r and r[key] is not None]
        return [r["step"] for r in rows], [r[key] for r in rows]


def finitenumber(value) -> float | None:
    value = number(value)
    return value if value is not None and math.isfinite(value) else None


def number(value) -> float | None:
    """A float, or None for what is no number."""
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


def find_jobs_in(folders: Sequence) -> list[Job]:
    """The jobs of one or more folders (sweeps or single runs). With several, each job is named
    by its folder as given (and its job directory inside a sweep): `outputs/run-a`, `multirun/x/3`."""
    if len(folders) == 1:
        return find_jobs(folders[0])
    jobs: list[Job] = []
    for folder in folders:
        prefix = str(folder).rstrip("/") or str(folder)
        for j in find_jobs(folder):
            j.name = prefix if j.path == Path(folder) else f"{prefix}/{j.name}"
            jobs.append(j)
    names = [j.name for j in jobs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"the folders hold the same job twice ({', '.join(repeated)}); give each folder once")
    return jobs


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

