"""The arms of any sweep and what their seeds say about them.

An *arm* is the jobs that share every override but the seed (and the bookkeeping keys that do
not change what is trained). Per arm: the mean, standard deviation and number of its final
validation losses. Each arm is compared with a baseline arm (the lowest mean unless named):
the difference of the final losses, arm minus baseline, with a 95% confidence interval from
Student's t over seeds,

- *paired* over the seeds both arms ran (the same seed gives the same initialisation, batches
  and validation windows, so the seed-to-seed variation that both arms share cancels), or
- Welch's unpaired interval when fewer than two seeds are shared,

and a verdict: *better* (the interval lies below 0), *worse* (above 0) or *within noise* (it
straddles 0). Ranks show ties: the arms within noise of the best share its rank.

Runs are only compared where the comparison means something: jobs that differ in their data,
model size, evaluation settings or run length are split into separate *settings*, each ranked
on its own, and the report names the keys that differ (`split_settings`).

How many seeds a difference needs (`seeds_needed`): the n at which the interval's half-width
equals the difference d, n = (t sd / d)^2 for paired seeds (sd of the paired differences) and
n = 2 (t sd / d)^2 per arm unpaired (sd of one arm's seeds), t from Student's t at that n.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from scipy import stats

from minigpt.config import config_from_dict
from minigpt.errors import UserError
from minigpt.plan import RunPlan
from minigpt.studies.sweep.jobs import Job, number

CONFIDENCE = 0.95

# Overrides that do not change what is trained: they never make an arm of their own.
BOOKKEEPING = ("seed", "run_name", "data.cache_dir", "data.cache_key", "trainer.resume", "trainer.overwrite",
               "trainer.progress", "trainer.threads", "trainer.keep_checkpoints", "trainer.ckpt_interval",
               "trainer.flush_every", "trainer.sync_debug")
BOOKKEEPING_GROUPS = ("logger", "hydra")  # logger=..., logger.*, hydra/launcher=..., hydra.*

# What must be equal for final losses to compare (the rest of a difference is an arm).
MODEL_SIZE = ("model.n_layer", "model.n_head", "model.n_embd", "model.block_size")
EVALUATION = ("trainer.eval_iters", "trainer.micro_batch_size")  # the validation windows follow from these
EVAL_SEED = "trainer.eval_seed"  # and from this one (null: each run's seed)
RUN_LENGTH = "tokens trained"
DATA_NOT_SETTING = ("cache_dir", "cache_key")  # where the token cache lives, not what it holds

RESOLVE = (0.01, 0.02, 0.05, 0.1)  # nats: the differences the report says the seeds needed for


# --- the numbers ----------------------------------------------------------------------------------


def t_quantile(df: float) -> float:
    """The two-sided CONFIDENCE quantile of Student's t with df degrees of freedom."""
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, df))


@dataclass
class Difference:
    """arm minus baseline in final validation loss (nats): negative is lower, i.e. better."""

    mean: float | None
    low: float | None = None  # the CONFIDENCE interval; None when there is none
    high: float | None = None
    method: str = "none"  # "paired" | "Welch" | "none"
    n: int = 0  # paired: shared seeds; Welch: the smaller arm's seeds
    sd: float | None = None  # paired: sd of the per-seed differences; Welch: pooled sd of the two arms
    note: str = ""  # why there is no interval, or which seeds were left out
    eval_stderr: float | None = None  # the evaluation's own standard error of this difference

    @property
    def verdict(self) -> str:
        if self.low is None or self.high is None:
            return "no interval"
        if self.high < 0:
            return "better"
        if self.low > 0:
            return "worse"
        return "within noise"


def paired_difference(arm: Sequence[float], baseline: Sequence[float]) -> Difference:
    """Mean of arm[i] - baseline[i] over seeds, with Student's t interval (n - 1 degrees of freedom)."""
    diffs = [a - b for a, b in zip(arm, baseline, strict=True)]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else None
    if n < 2:
        return Difference(mean, method="none", n=n, note="one shared seed: no interval")
    sd = statistics.stdev(diffs)
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return Difference(mean, mean - half, mean + half, "paired", n, sd)


def welch_difference(arm: Sequence[float], baseline: Sequence[float]) -> Difference:
    """Difference of the means with Welch's interval (unequal variances, Welch-Satterthwaite df)."""
    na, nb = len(arm), len(baseline)
    if na == 0 or nb == 0:
        return Difference(None, note="no completed seed")
    mean = statistics.fmean(arm) - statistics.fmean(baseline)
    if na < 2 or nb < 2:
        return Difference(mean, n=min(na, nb), note="one seed in an arm: no interval")
    va, vb = statistics.variance(arm) / na, statistics.variance(baseline) / nb
    se = math.sqrt(va + vb)
    pooled = math.sqrt(((na - 1) * statistics.variance(arm) + (nb - 1) * statistics.variance(baseline)) / (na + nb - 2))
    if se == 0:
        return Difference(mean, mean, mean, "Welch", min(na, nb), pooled)
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    half = t_quantile(df) * se
    return Difference(mean, mean - half, mean + half, "Welch", min(na, nb), pooled)


def seeds_needed(sd: float, difference: float, paired: bool) -> int | None:
    """Seeds (per arm) at which the CONFIDENCE interval's half-width equals `difference`: a true
    difference of that size then gives an interval clear of 0 about half the time (for 80%
    of the time, about twice as many). paired: sd is that of the per-seed differences, n = (t sd/d)^2;
    else sd is one arm's seed sd, n = 2 (t sd/d)^2. None for a difference of 0."""
    d = abs(difference)
    if d == 0 or not math.isfinite(d):
        return None
    if sd == 0:
        return 2
    factor = 1.0 if paired else 2.0
    z = float(stats.norm.ppf(0.5 + CONFIDENCE / 2))
    n = max(2, math.ceil(factor * (z * sd / d) ** 2))  # t > z: the answer is at least this
    while n < 10**7:
        df = n - 1 if paired else 2 * (n - 1)
        if t_quantile(df) * sd * math.sqrt(factor / n) <= d:
            return n
        n += 1 if n < 1000 else n // 100
    return n


def pooled_sd(groups: Sequence[Sequence[float]]) -> float | None:
    """sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) over the groups with at least 2 values."""
    dof = sum(len(g) - 1 for g in groups if len(g) >= 2)
    if dof == 0:
        return None
    return math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups if len(g) >= 2) / dof)


# --- arms -------------------------------------------------------------------------------------------


def _key(raw: str) -> str:
    return raw.lstrip("+~")


def is_bookkeeping(key: str) -> bool:
    return key in BOOKKEEPING or key.split(".")[0].split("/")[0] in BOOKKEEPING_GROUPS


def _canonical(value) -> str:
    """One spelling per value: 1e-3 and 0.001 are the same LR."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "(not set)"
    text = str(value)
    x = number(text)
    if x is None or text.strip().lower() in ("nan", "inf", "-inf", "infinity"):
        return text
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:g}"


def overrides_of(job: Job) -> dict[str, str]:
    return {_key(k): v for k, v in (o.split("=", 1) if "=" in o else (o, "") for o in job.overrides)}


def override_value(job: Job, key: str) -> str:
    """The job's value of an override key; a job not given it has its config's value (a group's name)."""
    given = overrides_of(job)
    if key in given:
        return _canonical(given[key])
    value = job.get(key)
    if isinstance(value, Mapping):
        value = value.get("name")
    return _canonical(value)


@dataclass
class Arm:
    label: str  # "scheduler=wsd optim.lr=0.003": the overrides that set it apart
    values: dict[str, str]
    jobs: list[Job] = field(default_factory=list)

    def finals(self) -> dict[str, float]:
        """seed -> final validation loss of the completed jobs (the mean where a seed repeats)."""
        by_seed: dict[str, list[float]] = {}
        for j in self.jobs:
            if j.final_val_loss is not None:
                by_seed.setdefault(_seed_of(j), []).append(j.final_val_loss)
        return {s: statistics.fmean(v) for s, v in sorted(by_seed.items(), key=lambda kv: _seed_order(kv[0]))}

    def stderrs(self) -> dict[str, float]:
        """seed -> the final evaluation's standard error (val/loss_stderr), where it was recorded."""
        out = {}
        for j in self.jobs:
            if j.final_val_loss is not None and j.val_loss_stderr is not None:
                out.setdefault(_seed_of(j), j.val_loss_stderr)
        return out

    @property
    def n(self) -> int:
        return len(self.finals())

    @property
    def mean(self) -> float | None:
        v = list(self.finals().values())
        return statistics.fmean(v) if v else None

    @property
    def sd(self) -> float | None:
        v = list(self.finals().values())
        return statistics.stdev(v) if len(v) >= 2 else None

    @property
    def eval_stderr(self) -> float | None:
        """The mean over seeds of the final evaluation's standard error."""
        v = list(self.stderrs().values())
        return statistics.fmean(v) if v else None

    def unfinished(self) -> list[Job]:
        return [j for j in self.jobs if j.final_val_loss is None]


def _seed_of(job: Job) -> str:
    """The seed that pairs runs; a job whose folder does not say its seed pairs with no other."""
    return job.seed if job.seed != "?" else f"? ({job.name})"


def _seed_order(seed: str):
    x = number(seed)
    return (0, x, "") if x is not None else (1, 0.0, str(seed))


def build_arms(jobs: Sequence[Job]) -> list[Arm]:
    """Group the jobs by every override but the seed and the bookkeeping keys, in job order."""
    keys: list[str] = []
    for j in jobs:
        keys.extend(k for k in overrides_of(j) if k not in keys and not is_bookkeeping(k))
    varying = [k for k in keys if len({override_value(j, k) for j in jobs}) > 1]
    arms: dict[tuple, Arm] = {}
    for j in jobs:
        values = {k: override_value(j, k) for k in varying}
        key = tuple(values.values())
        if key not in arms:
            label = " ".join(f"{k}={v}" for k, v in values.items())
            arms[key] = Arm(label, values)
        arms[key].jobs.append(j)
    if len(arms) == 1 and not varying:
        arm = next(iter(arms.values()))
        shared = [f"{k}={v}" for k, v in overrides_of(jobs[0]).items() if not is_bookkeeping(k)] if jobs else []
        arm.label = " ".join(shared) or "the default config"
    return list(arms.values())


def match_arm(arms: Sequence[Arm], spec: str) -> Arm | None:
    """The arm a --baseline names: every `key=value` of it must match (a bare value matches any key's).
    None when no arm matches; a UserError when several do."""
    tokens = spec.split()
    found = []
    for arm in arms:
        ok = True
        for t in tokens:
            if "=" in t:
                k, v = t.split("=", 1)
                ok &= arm.values.get(_key(k)) == _canonical(v)
            else:
                ok &= _canonical(t) in arm.values.values() or t == arm.label
        if ok and tokens:
            found.append(arm)
    if len(found) > 1:
        raise UserError(f"--baseline '{spec}' matches {len(found)} arms ("
                        + "; ".join(a.label for a in found) + "); name more of its overrides")
    return found[0] if found else None


# --- comparing the arms of one setting ----------------------------------------------------------------


def compare(arm: Arm, baseline: Arm) -> Difference:
    """arm minus baseline: paired over the shared seeds when at least 2 are shared, else Welch."""
    a, b = arm.finals(), baseline.finals()
    shared = [s for s in a if s in b]
    if len(shared) >= 2:
        d = paired_difference([a[s] for s in shared], [b[s] for s in shared])
        left = [s for s in a if s not in b] + [s for s in b if s not in a]
        if left:
            d.note = f"seed{'s' if len(left) > 1 else ''} {', '.join(sorted(set(left), key=_seed_order))} not in both: left out"
        sa, sb = arm.stderrs(), baseline.stderrs()
        if all(s in sa and s in sb for s in shared):
            d.eval_stderr = math.sqrt(sum(sa[s] ** 2 + sb[s] ** 2 for s in shared)) / len(shared)
        return d
    d = welch_difference(list(a.values()), list(b.values()))
    if d.mean is not None:
        why = "seeds not shared" if not shared else f"only seed {shared[0]} shared"
        d.note = why + (": Welch's unpaired interval" if d.method == "Welch" else f"; {d.note}" if d.note else "")
    sa, sb = arm.stderrs(), baseline.stderrs()
    if sa and sb and len(sa) == len(a) and len(sb) == len(b):
        d.eval_stderr = math.sqrt(statistics.fmean(v**2 for v in sa.values()) / len(sa)
                                  + statistics.fmean(v**2 for v in sb.values()) / len(sb))
    return d


def rank_arms(arms: Sequence[Arm], diff: Callable[[Arm, Arm], Difference] = compare) -> dict[str, str]:
    """label -> rank, by mean. The lowest mean leads; every arm within noise of it shares its rank
    ('=1'); of the arms left, the lowest leads the next tier, and so on. Ranks are positions in
    the order of the means, so ties show as gaps (1, =1, 3). An arm without an interval against
    its tier's leader (one seed) is ranked by its mean alone ('3?', and the leader '1?'). Arms
    with no completed seed get no rank ('–')."""
    order = sorted((a for a in arms if a.n), key=lambda a: a.mean)
    position = {a.label: i + 1 for i, a in enumerate(order)}
    ranks = {a.label: "–" for a in arms if not a.n}
    remaining = order
    while remaining:
        leader, left = remaining[0], []
        ranks[leader.label] = str(position[leader.label])
        for a in remaining[1:]:
            verdict = diff(a, leader).verdict
            if verdict == "within noise":
                ranks[a.label] = f"={position[leader.label]}"
            elif verdict == "no interval":
                ranks[a.label] = f"{position[a.label]}?"
                ranks[leader.label] = f"{position[leader.label]}?"
            else:
                left.append(a)
        remaining = left
    return ranks


# --- settings: what must be equal for final losses to compare -----------------------------------------


def run_tokens(job: Job) -> str:
    """The run's length in training tokens, from its plan (summary.json), else rebuilt from its config."""
    plan = (job.summary or {}).get("plan")
    tokens = plan.get("total_tokens") if isinstance(plan, Mapping) else None
    if tokens is None:
        try:
            tokens = RunPlan.build(config_from_dict(job.config)).total_tokens
        except (UserError, TypeError, ValueError, KeyError, AttributeError):
            tokens = None
    if tokens is not None:
        return f"{int(tokens):,}"
    return " ".join(f"{k}={job.get(k)}" for k in ("trainer.max_steps", "trainer.max_tokens", "trainer.epochs"))


def setting_of(job: Job) -> dict[str, str]:
    """The values that must be equal for two jobs' final losses to compare (those the job's
    folder tells: a job without .hydra/config.yaml has only its run length, if any)."""
    out = {}
    data = job.config.get("data") if isinstance(job.config.get("data"), Mapping) else {}
    for k in sorted(data):
        if k not in DATA_NOT_SETTING:
            out[f"data.{k}"] = str(data[k]) if isinstance(data[k], (list, dict)) else _canonical(data[k])
    for k in MODEL_SIZE + EVALUATION:
        if job.get(k) is not None:
            out[k] = _canonical(job.get(k))
    trainer = job.config.get("trainer") if isinstance(job.config.get("trainer"), Mapping) else None
    if trainer is not None:
        # null, or a run from before the key existed: the windows follow each run's own seed
        seed = trainer.get("eval_seed")
        out[EVAL_SEED] = "the run's seed" if seed is None else _canonical(seed)
    if job.config or (job.summary or {}).get("plan"):
        out[RUN_LENGTH] = run_tokens(job)
    return out


@dataclass
class Setting:
    """Jobs whose final losses compare: same data, model size, evaluation and run length."""

    values: dict[str, str]  # the setting's values of the keys that differ between settings
    jobs: list[Job]


def split_settings(jobs: Sequence[Job]) -> tuple[list[Setting], list[str]]:
    """(the jobs split into settings, in job order; the keys that differ between them). A job
    that does not tell a key's value joins the first setting its known values agree with."""
    per_job = [setting_of(j) for j in jobs]
    keys: list[str] = []
    for s in per_job:
        keys.extend(k for k in s if k not in keys)
    differ = [k for k in keys if len({s[k] for s in per_job if k in s}) > 1]
    groups: list[Setting] = []
    for j, s in sorted(zip(jobs, per_job), key=lambda js: -sum(k in js[1] for k in differ)):
        for g in groups:
            if all(k not in s or g.values.get(k) in (None, s[k]) for k in differ):
                g.values.update({k: s[k] for k in differ if k in s})
                g.jobs.append(j)
                break
        else:
            groups.append(Setting({k: s[k] for k in differ if k in s}, [j]))
    order = {id(j): i for i, j in enumerate(jobs)}
    for g in groups:
        g.jobs.sort(key=lambda j: order[id(j)])
        g.values = {k: g.values.get(k, "(not set)") for k in differ}
    return sorted(groups, key=lambda g: order[id(g.jobs[0])]), differ


def setting_title(setting: Setting) -> str:
    return ", ".join(f"{k} {v}" if k == RUN_LENGTH else f"{k}={v}" for k, v in setting.values.items())


@dataclass
class Comparison:
    """The arms of one setting compared with its baseline."""

    setting: Setting
    arms: list[Arm]
    baseline: Arm | None
    baseline_named: bool  # --baseline picked it (else: the lowest mean)
    differences: dict[str, Difference]  # arm label -> arm minus baseline
    ranks: dict[str, str]

    @property
    def seed_sd(self) -> float | None:
        """Pooled standard deviation of the final loss over seeds, within arms."""
        return pooled_sd([list(a.finals().values()) for a in self.arms])

    @property
    def paired_sd(self) -> float | None:
        """Pooled standard deviation of the per-seed differences of the paired comparisons."""
        paired = [d for d in self.differences.values() if d.method == "paired" and d.sd is not None]
        dof = sum(d.n - 1 for d in paired)
        return math.sqrt(sum((d.n - 1) * d.sd**2 for d in paired) / dof) if dof else None


def compare_setting(setting: Setting, baseline: str | None = None) -> Comparison:
    arms = build_arms(setting.jobs)
    named = match_arm(arms, baseline) if baseline else None
    done = [a for a in arms if a.n]
    base = named or (min(done, key=lambda a: a.mean) if done else None)
    diffs = {a.label: compare(a, base) for a in arms if base is not None and a is not base}
    return Comparison(setting, arms, base, named is not None, diffs, rank_arms(arms))


def compare_sweep(jobs: Sequence[Job], baseline: str | None = None) -> tuple[list[Comparison], list[str]]:
    """Every setting's comparison, and the keys the settings differ in. A --baseline that names no
    arm of any setting is a UserError listing the arms."""
    settings, differ = split_settings(jobs)
    comparisons = [compare_setting(s, baseline) for s in settings]
    if baseline and not any(c.baseline_named for c in comparisons):
        labels = [a.label for c in comparisons for a in c.arms]
        raise UserError(f"--baseline '{baseline}' names no arm of this sweep; its arms: " + "; ".join(labels))
    return comparisons, differ

