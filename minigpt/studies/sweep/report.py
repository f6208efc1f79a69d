"""The sweep report: report.md with the arms ranked over their seeds, the table of every job,
the study tables and their figures."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from minigpt.errors import UserError
from minigpt.files import relative_name
from minigpt.studies.sweep.arms import (
    CONFIDENCE,
    RESOLVE,
    Comparison,
    compare_sweep,
    seeds_needed,
    setting_title,
)
from minigpt.run.keys import Key
from minigpt.studies.sweep.figures import (
    plot_predicted_curves,
    plot_study_early,
    plot_study_lr,
    plot_study_mechanism,
    plot_sweep_curves,
)
from minigpt.studies.sweep.jobs import Job, find_jobs_in, job_label, varying_overrides
from minigpt.studies.sweep.statistics import (
    AT_UNIGRAM,
    LASTING_GAP,
    TRAINS_WELL,
    Study,
    build_study,
    early_window,
    failed_to_train,
    lr_sensitivity,
    outcome,
    pick_high_lr,
    seed_pairs,
    sensitivity_per_seed,
    signatures,
    warmup_label,
)

# Wortsman et al. 2023 average the LR sensitivity over these peak LRs.
WORTSMAN_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)

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
    averaged = any(j.final_val_loss_ema is not None for j in jobs)  # a column only when some run has optim.ema
    rows = []
    for j in jobs:
        spikes = j.spikes
        status = j.status + (f" at step {j.diverged_step}" if j.diverged_step is not None else "")
        if j.status in ("failed", "diverged") and j.reason:
            status += f": {j.reason}"
        rows.append([
            j.name,
            job_label(j, keys) if keys else " ".join(j.overrides) or "–",
            status,
            _fmt(j.final_val_loss, 4),
            _fmt(j.val_loss_stderr, 4),
            _fmt(j.best_val_loss, 4),
            *([_fmt(j.final_val_loss_ema, 4)] if averaged else []),
            f"{spikes[0]} / {spikes[1]}" if spikes else "–",
            f"{j.tok_per_s:,.0f}" if j.tok_per_s else "–",
        ])
    return _table(["job", "overrides", "status", "final val loss", "eval s.e.", "best val loss",
                   *(["final val loss (EMA)"] if averaged else []), "spikes (loss / grad)", "tokens/s"], rows)


# --- the arms over their seeds -----------------------------------------------------------------


def _test(d) -> str:
    if d.method == "paired":
        return f"paired, {d.n} seeds" + (f" ({d.note})" if d.note else "")
    if d.method == "Welch":
        return f"Welch ({d.note.split(':')[0]})" if d.note else "Welch"
    return d.note or "–"


def _needed(d) -> str:
    if d.sd is None or d.mean is None or d.method == "none":
        return "–"
    n = seeds_needed(d.sd, d.mean, paired=d.method == "paired")
    return "–" if n is None else f"{n:,}"


def _by_rank(c: Comparison):
    def key(a):
        r = c.ranks.get(a.label, "–").strip("=?")
        return (0, int(r), a.mean) if r.isdigit() else (1, 0, 0.0)
    return sorted(c.arms, key=key)


def comparison_lines(c: Comparison) -> list[str]:
    """One setting's arms: the headline, the ranked table, the final loss seed by seed, and how
    many seeds a difference needs."""
    done = [a for a in c.arms if a.n]
    if not done:
        return ["No job of this setting completed: nothing to compare.", ""]
    level = f"{CONFIDENCE:.0%}"
    out = []
    if len(c.arms) == 1:
        a = c.arms[0]
        sd = f" +- {a.sd:.4f} (sd)" if a.sd is not None else ""
        out += [f"One arm ({a.label}): final val loss {a.mean:.4f}{sd} over {a.n} seed{'s' * (a.n != 1)}; "
                "nothing to compare it with.", ""]
    else:
        lowest = min(done, key=lambda a: a.mean)
        tied = [a for a in c.arms if c.ranks.get(a.label) == "=" + c.ranks[lowest.label].strip("?")]
        untested = any(r.endswith("?") for r in c.ranks.values())
        line = f"**Lowest mean: {lowest.label}** ({lowest.mean:.4f} over {lowest.n} seed{'s' * (lowest.n != 1)})."
        if tied:
            line += (f" Within noise of it ({level} interval of the difference includes 0), so sharing its rank: "
                     + ", ".join(a.label for a in tied) + ".")
        elif not untested:
            line += " Every other arm is worse beyond the seed noise."
        if untested:
            line += (" Arms with one seed (or one seed in common and one in an arm) have no interval: their order "
                     "is that of their means, not a finding (rank with ?); run seeds, e.g. `seed=1,2,3`.")
        out += [line, "",
                f"Differences are arm minus the baseline, **{c.baseline.label}** "
                f"({'--baseline' if c.baseline_named else 'the lowest mean'}): negative is a lower loss. "
                f"Verdict: *better* or *worse* when the {level} interval (Student's t over seeds) excludes 0, "
                "*within noise* when it includes 0. *paired*: over the seeds both arms ran; *Welch*: the "
                "seeds are not shared, an unpaired interval. *eval s.e.*: the final evaluation's standard error "
                "over its batches (mean over seeds; of the difference in the comparison). *seeds to resolve it*: "
                "per arm, for an interval of this difference to just exclude 0 (docs/sweeps.md).", ""]
    rows = []
    for a in _by_rank(c):
        d = c.differences.get(a.label)
        failed = a.unfinished()
        seeds = f"{a.n}" + (f" of {len(a.jobs)} ({', '.join(sorted({j.status for j in failed}))})" if failed else "")
        is_base = a is c.baseline
        rows.append([
            c.ranks.get(a.label, "–"), a.label + (" (baseline)" if is_base and len(c.arms) > 1 else ""), seeds,
            _fmt(a.mean, 4), _fmt(a.sd, 4), _fmt(a.eval_stderr, 4),
            "–" if d is None or d.mean is None else f"{d.mean:+.4f}",
            "–" if d is None or d.low is None else f"[{d.low:+.4f}, {d.high:+.4f}]",
            "baseline" if is_base else (d.verdict if d else "–"),
            "–" if d is None else _test(d) + (f", eval s.e. {d.eval_stderr:.4f}" if d.eval_stderr is not None else ""),
            "–" if d is None else _needed(d),
        ])
    out += _table(["rank", "arm", "seeds", "mean final val loss", "sd", "eval s.e.", "minus baseline",
                   f"{level} interval", "verdict", "test", "seeds to resolve it"], rows) + [""]
    seeds = sorted({j.seed for a in c.arms for j in a.jobs}, key=_seed_key)
    if 1 < len(seeds) <= 12:
        rows = []
        for a in _by_rank(c):
            by_seed = {j.seed: j for j in a.jobs}
            rows.append([a.label] + [_fmt(by_seed[s].final_val_loss, 4) if s in by_seed and by_seed[s].final_val_loss
                                     is not None else outcome(by_seed.get(s)) for s in seeds])
        out += ["Final validation loss seed by seed:", ""] + _table(["arm"] + [f"seed {s}" for s in seeds], rows) + [""]
    out += power_lines(c)
    return out


def _seed_key(seed: str):
    try:
        return (0, float(seed), "")
    except ValueError:
        return (1, 0.0, seed)


def power_lines(c: Comparison) -> list[str]:
    """Seeds needed to resolve a difference of X nats, from this setting's own seed spread."""
    seed_sd, paired_sd = c.seed_sd, c.paired_sd
    if seed_sd is None and paired_sd is None:
        return ["No arm has two completed seeds: no seed spread to say how many seeds a difference needs.", ""]
    spread = []
    if seed_sd is not None:
        spread.append(f"sd of the final loss over seeds within an arm {seed_sd:.4f} nats (pooled)")
    if paired_sd is not None:
        spread.append(f"sd of the per-seed difference between two arms {paired_sd:.4f} (pooled over the paired "
                      "comparisons)")
    out = ["Seed spread of this sweep: " + "; ".join(spread) + ". From it, the seeds per arm at which a "
           f"{CONFIDENCE:.0%} interval's half-width equals the difference (a real difference that size is then "
           "resolved about half the time; about twice as many seeds resolve it 8 times in 10):", ""]
    for x in RESOLVE:
        parts = []
        if paired_sd is not None:
            parts.append(f"{seeds_needed(paired_sd, x, paired=True):,} paired (the same seeds in both arms)")
        if seed_sd is not None:
            parts.append(f"{seeds_needed(seed_sd, x, paired=False):,} unpaired")
        out.append(f"- seeds needed to resolve a difference of {x:g} nats: " + ", ".join(parts))
    return out + [""]


def arms_section(comparisons: Sequence[Comparison], differ: Sequence[str]) -> list[str]:
    out = ["## Arms", "",
           "An arm is the jobs that share every override but the seed. Its final validation losses over "
           "the seeds give its mean, standard deviation and n.", ""]
    if len(comparisons) > 1:
        values = {k: sorted({c.setting.values[k] for c in comparisons}) for k in differ}
        named = "; ".join(f"{k} ({', '.join(v)})" for k, v in values.items())
        out += [f"**Not one ranking**: these jobs differ in {named}. Final losses of different data, model sizes, "
                "evaluation settings or run lengths do not compare, so each setting is ranked on its own.", ""]
    for c in comparisons:
        if len(comparisons) > 1:
            out += [f"### {setting_title(c.setting)}", ""]
        out += comparison_lines(c)
    return out


def lr_range_note(lrs: Sequence[float]) -> str:
    """Which LRs the sensitivity averages over, against Wortsman et al.'s range."""
    ours = ", ".join(f"{lr:g}" for lr in lrs)
    theirs = ", ".join(f"{lr:g}" for lr in WORTSMAN_LRS)
    missing = [lr for lr in WORTSMAN_LRS if not any(math.isclose(lr, x, rel_tol=1e-6) for x in lrs)]
    extra = [lr for lr in lrs if not any(math.isclose(lr, x, rel_tol=1e-6) for x in WORTSMAN_LRS)]
    count = f"{len(lrs)} peak LR" + ("s" if len(lrs) != 1 else "")
    note = f"The sensitivity here averages over the {count} of this sweep ({ours}); Wortsman et al. average over {theirs}."
    if missing:
        note += (" This sweep lacks " + ", ".join(f"{lr:g}" for lr in missing) + ", so its values are not on their "
                 "scale: every LR left out where all arms fail would add the same clipped loss to every arm.")
    if extra:
        note += " It has " + ", ".join(f"{lr:g}" for lr in extra) + ", which they do not."
    return note


def study_tables(study: Study) -> list[str]:
    best_all = study.best_overall()
    out = ["### LR sensitivity per arm", "",
           "Sensitivity (Wortsman et al. 2023) = mean over the peak LRs of min(final val loss, initial loss) "
           "minus the best final loss: of the arm itself, and of all arms "
           f"({_fmt(best_all, 4)}). Seeds are averaged first; a diverged run (stuck ones included) counts as its "
           "initial loss. An arm that lacks some of the sweep's LRs gets no sensitivity. "
           f"Early peak loss: the highest training loss over the first {study.early_steps} steps.", "",
           lr_range_note(study.lrs), ""]
    rows = []
    for arch, w in study.arms():
        curve = study.curve(arch, w)
        if len(curve) < len(study.lrs) or len(study.lrs) < 2:
            curve = {}  # over some of the LRs it would not compare with the others'; over one it is 0
        curve_all = study.curve(arch, w)
        cells = study.arm(arch, w)
        jobs = [j for c in cells.values() for j in c.jobs]
        diverged = [j for j in jobs if j.status == "diverged"]
        first_div = min((j.diverged_step for j in diverged if j.diverged_step is not None), default=None)
        spikes = [j.spikes[0] + j.spikes[1] for j in jobs if j.spikes]
        best_lr = min(curve_all, key=curve_all.get) if curve_all else None
        rows.append([
            arch, warmup_label(w, study.total_steps),
            _fmt(lr_sensitivity(curve), 3) if curve else "–",
            _fmt(lr_sensitivity(curve, best_all), 3) if curve and best_all is not None else "–",
            f"{best_lr:g}" if best_lr is not None else "–",
            _fmt(curve_all[best_lr], 4) if best_lr is not None else "–",
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


def signature_tables(study: Study) -> list[str]:
    """Seed by seed: each run without warmup beside its twins with warmup, the verdicts, the
    early window compared two ways, and the sensitivity per seed."""
    out = ["### Seed by seed: without warmup against with it", "",
           f"Final validation loss of each seed (stuck: stopped by the monitor at the unigram level). A run "
           f"*trains well* when it completes at or below {TRAINS_WELL:.2f} x the unigram entropy of the validation "
           f"tokens; it *fails* when it diverges, sticks, or ends within {AT_UNIGRAM} nats of the unigram entropy. "
           f"*Lasting gap*: warmup trains well and no warmup ends at least {LASTING_GAP} nats worse or fails. "
           "*Rescue*: warmup trains well where no warmup fails.", ""]
    warmups = [w for w in study.warmups if w]
    rows = []
    for arch in study.archs:
        for lr in study.lrs:
            pairs = {w: {p.seed: p for p in seed_pairs(study, arch, lr, w)} for w in warmups}
            seeds = sorted({seed for by_seed in pairs.values() for seed in by_seed})
            for seed in seeds:
                first = next(by_seed[seed] for by_seed in pairs.values() if seed in by_seed)
                row = [arch, f"{lr:g}", seed, outcome(first.no_warmup)]
                verdicts = []
                for w in warmups:
                    p = pairs[w].get(seed)
                    row.append(outcome(p.with_warmup) if p else "–")
                    if p:
                        gap = f"{p.gap:+.3f}" if p.gap is not None else "n/a"
                        if p.gap is None and p.gap_so_far is not None and not (
                                failed_to_train(p.no_warmup) or failed_to_train(p.with_warmup)):
                            gap = f"{p.gap_so_far:+.3f} at step {p.common_step}, not finished"
                        tag = "lasting gap" if p.lasting_gap else ("rescue" if p.rescued else "")
                        verdicts.append(f"{w}: {gap}" + (f" ({tag})" if tag else ""))
                rows.append(row + ["; ".join(verdicts) or "–"])
    if not rows:
        return []
    out += _table(["architecture", "peak LR", "seed", "no warmup"] + [warmup_label(w, study.total_steps) for w in warmups]
                  + ["no warmup minus warmup, by warmup steps"], rows)
    out += ["", "Where a signature holds on every seed (at least 3):", ""]
    for sig in signatures(study):
        where = "; ".join(f"{a} at peak LR {lr:g} with {warmup_label(w, study.total_steps)} ({n} seeds)"
                          for a, lr, w, n in sig.holds)
        out.append(f"- {sig.name}: {where or 'nowhere in this sweep'}")

    out += ["", "### The first updates, compared two ways", "",
            "A warmup gives less LR over the same steps, so the two arms cannot be matched on both. *Same steps*: "
            "mean training loss over the last 10 steps of the warmup, with and without it (without warmup the run "
            "has summed about twice the LR by then). *Same LR exposure*: the run without warmup over the 10 steps "
            "before the step where its summed LR reaches what the warmup run summed over its whole warmup.", ""]
    rows = []
    for arch in study.archs:
        for lr in study.lrs:
            for w in warmups:
                for p in seed_pairs(study, arch, lr, w):
                    e = early_window(p)
                    rows.append([arch, f"{lr:g}", warmup_label(w, study.total_steps), p.seed,
                                 _fmt(e["warmup_loss"], 3), _fmt(e["no_warmup_same_steps"], 3),
                                 _fmt(e["matched_step"]), _fmt(e["no_warmup_same_exposure"], 3)])
    out += _table(["architecture", "peak LR", "warmup", "seed", "warmup: loss at its end",
                   "no warmup: same steps", "no warmup: step of equal LR exposure", "no warmup: same exposure"], rows)

    sens_rows = []
    for arch in study.archs:
        for w in study.warmups:
            per_seed = sensitivity_per_seed(study, arch, w)
            if per_seed:
                sens_rows.append([arch, warmup_label(w, study.total_steps)]
                                 + [" / ".join(f"{v:.3f}" for v in per_seed.values()) + f" (seeds {', '.join(per_seed)})"])
    if sens_rows:
        out += ["", "### LR sensitivity seed by seed (each seed's own best)", "", lr_range_note(study.lrs), ""]
        out += _table(["architecture", "warmup", "sensitivity per seed"], sens_rows)
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


def prediction_table(rows: Sequence[tuple[str, float, float | None]], law: str) -> list[str]:
    out = []
    for name, predicted, measured in rows:
        error = None if measured is None else predicted - measured
        out.append([name, _fmt(measured, 4), _fmt(predicted, 4), "–" if error is None else f"{error:+.4f}"])
    return _table(["job", "final val loss", f"predicted ({law} law)", "predicted - measured"], out)


def _shown(value):
    """An override's value as the report writes it: a path from the root (data.cache_dir=/tmp/x)
    relative to where the report ran, as every file the project writes names its inputs."""
    return relative_name(value) if isinstance(value, str) and os.path.isabs(value) else value


def report_markdown(sweep_dir, jobs: Sequence[Job], study: Study | None, figures: Mapping[str, str],
                    predictions: tuple[str, Sequence] | None = None, baseline: str | None = None) -> str:
    _, common = varying_overrides(jobs)
    comparisons, differ = compare_sweep(jobs, baseline)
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    folders = sweep_dir if isinstance(sweep_dir, (list, tuple)) else [sweep_dir]
    title = ", ".join(relative_name(f) for f in folders)  # relative to where the report ran
    lines = [f"# Sweep report: {title}", "",
             f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".", ""]
    if common:
        lines += ["Overrides shared by every job: " + " ".join(f"`{k}={_shown(v)}`" for k, v in common.items()), ""]
    lines += arms_section(comparisons, differ)
    lines += ["## Every job", ""]
    lines += sweep_table(jobs) + [""]
    for key in ("loss", "lr"):
        if key in figures:
            lines += [f"![{key} of every arm against step]({figures[key]})", ""]
    if predictions is not None:
        law, rows = predictions
        lines += [f"## Measured against predicted ({law} law)", "",
                  "Each job's curve as the fitted law predicts it from the job's LRs alone "
                  "(minigpt predict, docs/loss_prediction.md).", ""]
        if "predicted" in figures:
            lines += [f"![measured against predicted]({figures['predicted']})", ""]
        lines += prediction_table(rows, law) + [""]
    if study is not None:
        lines += ["## Warmup-divergence study", ""]
        for key, alt in (("study_lr", "final loss against peak LR"), ("study_early", "early loss curves")):
            if key in figures:
                lines += [f"![{alt}]({figures[key]})", ""]
        if "study_mechanism" in figures:
            lines += [f"![the first steps: loss, LR, sharpness, attention logits]({figures['study_mechanism']})", ""]
        lines += study_tables(study) + [""] + signature_tables(study)
        lines += ["", "### Every run", ""] + per_seed_table(study) + [""]
    return "\n".join(lines)


def early_lrs(study: Study) -> dict[str, float]:
    """The LR each architecture is shown at in the early figures: the highest LR at which a
    signature (lasting gap, rescue) holds for it, else the highest LR of the sweep at which it
    has runs with and without warmup, else the study's high LR."""
    held = {}
    for sig in signatures(study):
        for arch, lr, _, _ in sig.holds:
            held[arch] = max(lr, held.get(arch, 0.0))
    fallback = pick_high_lr(study)
    out = {}
    for arch in study.archs:
        both = [lr for lr in study.lrs if (arch, 0, lr) in study.cells
                and any((arch, w, lr) in study.cells for w in study.warmups if w)]
        out[arch] = held.get(arch) or (fallback if fallback in both else (max(both) if both else fallback))
    return out


def warmup_study_of(jobs: Sequence[Job], early_steps: int | None = None, asked: bool = False) -> Study | None:
    """The warmup-divergence study of the jobs when they vary both the peak LR and the warmup, or
    when asked (--warmup-study: then the warmup must vary); else None (the arms alone compare them)."""
    study = build_study(jobs, early_steps)
    if asked and study is None:
        raise UserError("--warmup-study: these jobs do not vary the warmup (the study compares at least two "
                        "warmups, e.g. scheduler.warmup=0,0.1)")
    if study is not None and len(study.lrs) < 2 and not asked:
        return None  # one peak LR: a comparison of arms, not the study
    return study


def write_report(sweep_dir, out_dir=None, early_steps: int | None = None, high_lr: float | None = None,
                 fit=None, baseline: str | None = None, warmup_study: bool = False) -> dict:
    """Read a sweep (a folder, or a list of folders: sweeps or single runs), write report.md and
    its figures into out_dir (default <sweep>/report; for several folders, report/ beside them);
    return the paths. With `fit` (a minigpt.studies.loss_law.Fit) each job's measured curve is
    drawn against the predicted one. baseline: the arm the others are compared with (default:
    the lowest mean). The warmup-divergence study's sections come when the jobs vary both the
    peak LR and the warmup, or with warmup_study (then the warmup must vary)."""
    folders = list(sweep_dir) if isinstance(sweep_dir, (list, tuple)) else [sweep_dir]
    jobs = find_jobs_in(folders)
    if out_dir is not None:
        out = Path(out_dir)
    elif len(folders) == 1:
        out = Path(folders[0]) / "report"
    else:
        out = Path(os.path.commonpath([str(Path(f).resolve()) for f in folders])) / "report"
    comparisons, _ = compare_sweep(jobs, baseline)  # a bad --baseline stops here, before anything is written
    study = warmup_study_of(jobs, early_steps, warmup_study)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    if any(j.train_records for j in jobs):
        several = len(comparisons) > 1
        arms = [((setting_title(c.setting) + ": " if several else "") + a.label, a.jobs)
                for c in comparisons for a in c.arms]
        plot_sweep_curves(arms, "loss", out / "loss.png")
        plot_sweep_curves(arms, "lr", out / "lr.png")
        figures.update(loss="loss.png", lr="lr.png")
    if study is not None:
        if high_lr is not None and high_lr not in study.lrs:
            raise UserError(f"--lr {high_lr:g} is not a peak LR of this sweep; accepted: "
                            + ", ".join(f"{lr:g}" for lr in study.lrs))
        lrs = {a: high_lr for a in study.archs} if high_lr is not None else early_lrs(study)
        plot_study_lr(study, out / "study_lr.png")
        plot_study_early(study, lrs, out / "study_early.png")
        figures.update(study_lr="study_lr.png", study_early="study_early.png")
        if any(Key.SHARPNESS in r or Key.MAX_ATTN_LOGIT in r for j in jobs for r in j.train_records):
            arch = study.archs[0]
            lr = lrs[arch]
            by_warmup = {warmup_label(w, study.total_steps): study.cells[(arch, w, lr)].jobs
                         for w in study.warmups if (arch, w, lr) in study.cells}
            plot_study_mechanism(by_warmup, 2 * study.early_steps,
                                 f"{arch} at peak LR {lr:g}: the first {2 * study.early_steps} steps (one line per seed)",
                                 out / "study_mechanism.png")
            figures["study_mechanism"] = "study_mechanism.png"
    predictions = None
    if fit is not None:
        keys, _ = varying_overrides(jobs)
        labels = {j.name: job_label(j, keys) for j in jobs}
        rows = plot_predicted_curves(jobs, labels, fit, out / "predicted.png")
        figures.update(predicted="predicted.png")
        predictions = (fit.law, rows)
    title = folders if len(folders) > 1 else folders[0]
    (out / "report.md").write_text(report_markdown(title, jobs, study, figures, predictions, baseline))
    return {"report": out / "report.md", **{k: out / v for k, v in figures.items()}}
