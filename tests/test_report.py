"""`minigpt report` (minigpt/tools/report.py) and minigpt/studies/sweep/:
the sweep table, the study tables and the LR sensitivity."""

import json
import math
import re
import subprocess
import sys

import pytest
import yaml
from scipy import stats

from conftest import run_train, tiny_overrides
from minigpt.errors import UserError
from minigpt.studies.sweep.arms import (
    Arm, Difference, build_arms, compare_sweep, paired_difference, rank_arms, seeds_needed, t_quantile,
    welch_difference,
)
from minigpt.studies.sweep.figures import plot_sweep_curves
from minigpt.studies.sweep.jobs import find_jobs, find_jobs_in
from minigpt.studies.sweep.report import report_markdown, sweep_table, warmup_study_of, write_report
from minigpt.studies.sweep.statistics import build_study, clipped_loss, lr_sensitivity



def run_report(*args):
    return subprocess.run([sys.executable, "-m", "minigpt", "report", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


# --- the sensitivity, by hand -----------------------------------------------------------------


def test_clipped_loss_is_min_of_final_and_initial_and_initial_when_diverged():
    assert clipped_loss(3.0, 6.0) == 3.0
    assert clipped_loss(7.5, 6.0) == 6.0  # worse than never training: counts as the initial loss
    assert clipped_loss(None, 6.0) == 6.0  # diverged: no final loss
    assert clipped_loss(math.inf, 6.0) == 6.0 and clipped_loss(math.nan, 6.0) == 6.0


def test_lr_sensitivity_hand_computed():
    # Arm A trains at two LRs and diverges at the third (counted as its initial loss, 6.0).
    arm_a = {1e-3: 3.0, 1e-2: 2.5, 1e-1: 6.0}
    arm_b = {1e-3: 2.8, 1e-2: 2.6, 1e-1: 2.4}
    # mean(3.0, 2.5, 6.0) = 11.5 / 3 = 3.8333...; own best 2.5; best of both arms 2.4
    assert lr_sensitivity(arm_a) == pytest.approx(11.5 / 3 - 2.5)
    assert lr_sensitivity(arm_a, best=2.4) == pytest.approx(11.5 / 3 - 2.4)
    assert lr_sensitivity(arm_b) == pytest.approx(2.6 - 2.4)
    assert lr_sensitivity({1e-2: 4.0}) == 0.0
    with pytest.raises(ValueError):
        lr_sensitivity({})


# --- a synthetic sweep on disk: every kind of job a multirun can leave behind ------------------


def write_job(root, num, *, lr, warmup, seed, status="completed", final=None, initial=6.0, train=(),
              norm="pre", qk=False, diverged_step=None, summary=True, error=None, total=100):
    d = root / str(num)
    (d / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "model": {"norm_position": norm, "qk_layernorm": qk, "z_loss": 0.0, "block_size": 32},
              "optim": {"lr": lr}, "scheduler": {"name": "cosine_warmup", "warmup": warmup},
              "trainer": {"max_steps": total, "micro_batch_size": 4, "grad_accum": 1}}
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    arch = {("pre", False): "pre_ln", ("post", False): "post_ln", ("pre", True): "pre_ln_qk"}[(norm, qk)]
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        [f"optim.lr={lr}", f"scheduler.warmup={warmup}", f"arch={arch}", f"seed={seed}", "trainer.max_steps=100"]))
    records = [{"step": 0, "val/loss": initial}] if initial is not None else []
    records += [{"step": i, "train/loss": v, "train/lr": lr, "spike/loss": False, "spike/grad_norm": False}
                for i, v in enumerate(train)]
    if final is not None:
        records.append({"step": total, "val/loss": final})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary:
        s = {"status": status, "reason": "loss above 6 for 50 consecutive steps" if status == "diverged" else "",
             "diverged_step": diverged_step, "final_val_loss": final, "initial_val_loss": initial,
             "best_val_loss": final, "peak_lr": lr, "total_steps": total, "tok_per_s": 1000.0,
             "spikes/loss": 2 if status == "diverged" else 0, "spikes/grad_norm": 1}
        (d / "summary.json").write_text(json.dumps(s))
    if error:
        (d / "error.txt").write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")
    return d


@pytest.fixture
def synthetic_sweep(tmp_path):
    """pre-LN, 2 LRs x 2 warmups x 2 seeds, with a diverged seed, a crashed seed and a killed one."""
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "multirun.yaml").write_text("hydra: {}\n")
    n = 0

    def job(**kw):
        nonlocal n
        write_job(root, n, **kw)
        n += 1

    # no warmup: LR 0.01 trains (3.0, 3.2); LR 0.1 diverges on seed 1, reaches 7.0 (> initial) on seed 2
    job(lr=0.01, warmup=0, seed=1, final=3.0, train=[6.0, 5.0, 4.0])
    job(lr=0.01, warmup=0, seed=2, final=3.2, train=[6.0, 5.5, 4.5])
    job(lr=0.1, warmup=0, seed=1, status="diverged", diverged_step=57, train=[6.0, 9.0, 8.0])
    job(lr=0.1, warmup=0, seed=2, final=7.0, train=[6.0, 8.5, 7.0])
    # 20% warmup: both LRs train
    job(lr=0.01, warmup=0.2, seed=1, final=3.1, train=[6.0, 5.9, 5.0])
    job(lr=0.01, warmup=0.2, seed=2, final=3.3, train=[6.0, 5.8, 5.2])
    job(lr=0.1, warmup=0.2, seed=1, final=2.8, train=[6.0, 5.9, 5.1])
    job(lr=0.1, warmup=0.2, seed=2, final=2.6, train=[6.0, 5.7, 5.3])
    # a job that crashed before writing anything but error.txt, and one killed mid-run
    job(lr=0.1, warmup=0.2, seed=3, initial=None, summary=False, error="RuntimeError: CUDA error: out of memory")
    job(lr=0.01, warmup=0.2, seed=3, summary=False, train=[6.0, 5.9])
    return root


def test_reads_every_kind_of_job(synthetic_sweep):
    jobs = find_jobs(synthetic_sweep)
    assert [j.name for j in jobs] == [str(i) for i in range(10)]
    assert [j.status for j in jobs] == ["completed"] * 2 + ["diverged"] + ["completed"] * 5 + ["failed", "incomplete"]
    assert jobs[8].error == "RuntimeError: CUDA error: out of memory"
    assert jobs[2].final_val_loss is None and jobs[2].diverged_step == 57
    assert jobs[0].early_peak_loss(2) == 6.0 and jobs[2].early_peak_loss(3) == 9.0


@pytest.mark.slow
def test_study_numbers_match_a_hand_computation(synthetic_sweep):
    jobs = find_jobs(synthetic_sweep)
    study = build_study(jobs, early_steps=3)
    assert study.archs == ["pre-LN"] and study.warmups == [0, 20] and study.lrs == [0.01, 0.1]
    # no warmup: LR 0.01 -> mean(3.0, 3.2) = 3.1; LR 0.1 -> mean(6.0 diverged, min(7.0, 6.0)) = 6.0
    assert study.curve("pre-LN", 0) == pytest.approx({0.01: 3.1, 0.1: 6.0})
    # warmup: LR 0.01 -> mean(3.1, 3.3) = 3.2 (the killed seed 3 is left out); LR 0.1 -> 2.7 (crash left out)
    assert study.curve("pre-LN", 20) == pytest.approx({0.01: 3.2, 0.1: 2.7})
    assert study.best_overall() == pytest.approx(2.7)
    # sensitivity: no warmup mean(3.1, 6.0) = 4.55 - own best 3.1 = 1.45, - best of all 2.7 = 1.85;
    # warmup mean(3.2, 2.7) = 2.95 - 2.7 = 0.25 either way
    paths = write_report(synthetic_sweep, synthetic_sweep / "out", early_steps=3)
    text = paths["report"].read_text()
    rows = {r[1]: r for r in _table_rows(text, "sensitivity (own best)")}
    assert rows["no warmup"][2:4] == ["1.450", "1.850"] and rows["no warmup"][6] == "1/4"
    assert rows["warmup 20 steps (20%)"][2:4] == ["0.250", "0.250"]
    assert rows["no warmup"][7] == "57"  # first divergence step
    # early peak loss over the first 3 steps: no warmup at LR 0.1: seeds 9.0 and 8.5
    early = {r[0]: r for r in _table_rows(text, "early peak loss", after="#### pre-LN, no warmup")}
    assert early["0.1"][6] == "8.75 (8.50–9.00)"


@pytest.mark.slow
def test_sweep_table_lists_every_job_and_the_arms_lowest_mean(synthetic_sweep):
    paths = write_report(synthetic_sweep, synthetic_sweep / "out")
    text = paths["report"].read_text()
    rows = _table_rows(text, "tokens/s")
    assert len(rows) == 10
    assert rows[7][0] == "7" and "Best job" not in text  # no single job is named best: arms are
    # the lowest mean is an arm (LR 0.1, 20% warmup: 2.8 and 2.6), not job 7 alone
    assert "**Lowest mean: optim.lr=0.1 scheduler.warmup=0.2** (2.7000 over 2 seeds)" in text
    assert rows[2][2].startswith("diverged at step 57: loss above 6")
    assert rows[8][2] == "failed: RuntimeError: CUDA error: out of memory"
    assert rows[9][2] == "incomplete"
    # only the overrides that vary are shown per row; the shared one is listed once
    assert rows[0][1] == "optim.lr=0.01 scheduler.warmup=0 seed=1"
    assert "`trainer.max_steps=100`" in text and "`arch=pre_ln`" in text
    for name in ("loss.png", "lr.png", "study_lr.png", "study_early.png"):
        assert (synthetic_sweep / "out" / name).stat().st_size > 5000, name


def test_sweep_table_has_the_weight_averages_loss_when_a_run_kept_one(tmp_path):
    root = tmp_path / "sweep"
    write_job(root, 0, lr=0.01, warmup=0.2, seed=1, final=3.0, train=[6.0, 5.0])
    write_job(root, 1, lr=0.01, warmup=0.2, seed=2, final=3.2, train=[6.0, 5.0])
    summary = json.loads((root / "1" / "summary.json").read_text())
    (root / "1" / "summary.json").write_text(json.dumps({**summary, "final_val_loss_ema": 2.95}))
    text = "\n".join(sweep_table(find_jobs(root)))
    header = [c.strip() for c in text.splitlines()[0].strip("|").split("|")]
    column = header.index("final val loss (EMA)")
    assert [r[column] for r in _table_rows(text, "final val loss (EMA)")] == ["–", "2.9500"]
    write_job(tmp_path / "plain", 0, lr=0.01, warmup=0.2, seed=1, final=3.0, train=[6.0, 5.0])
    assert "(EMA)" not in "\n".join(sweep_table(find_jobs(tmp_path / "plain")))


def test_not_a_study_without_an_lr_x_warmup_grid(tmp_path):
    root = tmp_path / "sweep"
    for i, lr in enumerate((0.01, 0.1)):
        write_job(root, i, lr=lr, warmup=0.2, seed=1, final=3.0 + i, train=[6.0, 5.0])
    assert build_study(find_jobs(root)) is None
    text = write_report(root)["report"].read_text()
    assert "Warmup-divergence study" not in text and "**Lowest mean: optim.lr=0.01** (3.0000 over 1 seed)" in text
    assert "have no interval" in text  # one seed per arm: an order of means, not a ranking
    assert (root / "report" / "loss.png").exists() and not (root / "report" / "study_lr.png").exists()


@pytest.mark.slow
def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_jobs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    proc = run_report(tmp_path / "empty")
    assert proc.returncode == 2 and proc.stderr.startswith("error: no job directories under")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def _table_rows(text, header_cell, after=None):
    """The body rows of the first markdown table whose header has `header_cell` (after a heading)."""
    lines = text.splitlines()
    start = lines.index(after) if after else 0
    for i in range(start, len(lines)):
        if lines[i].startswith("|") and header_cell in lines[i]:
            rows = []
            for line in lines[i + 2:]:
                if not line.startswith("|"):
                    break
                rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
            return rows
    raise AssertionError(f"no table with '{header_cell}'")


# --- a real multirun --------------------------------------------------------------------------


@pytest.mark.slow
def test_report_on_a_real_multirun_with_a_diverged_job(cache_dir, tmp_path):
    """4 tiny jobs: LR 1e-3 and 30 (diverges) x warmup 0 and 50%; then the report command."""
    sweep = tmp_path / "sweep"
    args = ["-m"] + [f"{k}={v}" for k, v in tiny_overrides(cache_dir).items() if k != "scheduler.name"]
    args += ["optim.lr=1e-3,30", "scheduler.warmup=0,0.5", "monitor.patience=2", "trainer.threads=1",
             f"hydra.sweep.dir={sweep}"]
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert sorted(name.split("_")[0] for name in summaries) == ["0", "1", "2", "3"]  # 0_optim.lr=...,...
    statuses = sorted(s["status"] for s in summaries.values())
    assert "completed" in statuses and "diverged" in statuses, summaries

    out = tmp_path / "report"
    proc = run_report(sweep, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "report.md").read_text()
    rows = _table_rows(text, "tokens/s")
    assert len(rows) == 4
    for row in rows:
        s = summaries[row[0].split()[0]]
        assert row[2].startswith(s["status"])
        if s["status"] == "completed":
            assert row[3] == f"{s['final_val_loss']:.4f}"
    for row in rows:  # every evaluation records its standard error; the report shows the final one
        s = summaries[row[0].split()[0]]
        if s["status"] == "completed":
            assert s["val_loss_stderr"] > 0 and row[4] == f"{s['val_loss_stderr']:.4f}"
    best = min((s["final_val_loss"], n) for n, s in summaries.items() if s["status"] == "completed")
    given = dict(o.split("=", 1) for o in yaml.safe_load((sweep / best[1] / ".hydra" / "overrides.yaml").read_text()))
    best_arm = f"optim.lr={float(given['optim.lr']):g} scheduler.warmup={float(given['scheduler.warmup']):g}"
    assert f"**Lowest mean: {best_arm}** ({best[0]:.4f} over 1 seed)" in text
    # the study: one architecture, 2 warmups x 2 LRs; sensitivity recomputed here from the summaries
    assert "Warmup-divergence study" in text
    jobs = {j.name: j for j in find_jobs(sweep)}
    arms = {}
    for name, s in summaries.items():
        w = jobs[name].get("scheduler.warmup")
        clipped = clipped_loss(s["final_val_loss"] if s["status"] == "completed" else None, s["initial_val_loss"])
        arms.setdefault(w, {})[s["configured_lr"]] = clipped
    best_all = min(v for arm in arms.values() for v in arm.values())
    sens = {r[1]: r for r in _table_rows(text, "sensitivity (own best)")}
    assert sens["no warmup"][2] == f"{lr_sensitivity(arms[0]):.3f}"
    assert sens["warmup 6 steps (50%)"][3] == f"{lr_sensitivity(arms[0.5], best_all):.3f}"
    for name in ("loss.png", "lr.png", "study_lr.png", "study_early.png"):
        assert (out / name).stat().st_size > 5000, name


# --- arms over seeds: the statistics against scipy, and sweeps whose answer is known ----------------


def arms_text(sweep, baseline=None):
    """report.md's text without its figures (drawing them is what takes the time)."""
    return report_markdown(sweep, find_jobs(sweep), None, {}, baseline=baseline)


def test_paired_and_welch_intervals_are_scipys():
    a = [4.21, 4.25, 4.19, 4.30, 4.23]
    b = [4.25, 4.31, 4.22, 4.33, 4.29]
    d = paired_difference(a, b)
    ref = stats.ttest_rel(a, b)
    low, high = ref.confidence_interval(0.95)
    diffs = [x - y for x, y in zip(a, b)]
    assert d.method == "paired" and d.n == 5
    assert d.mean == pytest.approx(sum(diffs) / 5) and d.sd == pytest.approx(stats.tstd(diffs))
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))
    assert (d.low, d.high) == pytest.approx(stats.t.interval(0.95, 4, loc=d.mean, scale=stats.sem(diffs)))
    assert d.verdict == "better" and high < 0  # every seed lower: the interval is clear of 0
    w = welch_difference(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert w.method == "Welch" and (w.low, w.high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert w.verdict == "within noise"  # the same numbers unpaired: the seed spread swamps 0.04 nats
    assert paired_difference([4.2], [4.3]).verdict == "no interval"
    assert t_quantile(4) == pytest.approx(stats.t.ppf(0.975, 4))


def test_seeds_needed_is_where_the_half_width_reaches_the_difference():
    def half_width(k, sd, paired):  # of the 95% interval with k seeds per arm
        return stats.t.ppf(0.975, k - 1 if paired else 2 * (k - 1)) * sd * math.sqrt((1 if paired else 2) / k)

    for sd, d, paired in ((0.02, 0.01, True), (0.02, 0.01, False), (0.047, 0.012, False), (0.005, 0.05, True)):
        n = seeds_needed(sd, d, paired)
        assert half_width(n, sd, paired) <= d and (n == 2 or half_width(n - 1, sd, paired) > d), (sd, d, paired, n)
    assert seeds_needed(0.02, 0.01, True) == 18  # (t sd / d)^2 with t(17) = 2.11: 17.8
    assert seeds_needed(0.02, 0.01, False) == 32  # 2 (t sd / d)^2 with t(62) = 1.999: 31.97
    assert seeds_needed(0.02, 0.0, True) is None and seeds_needed(0.0, 0.01, False) == 2


def write_arm_job(root, name, overrides, seed, final, *, stderr=0.004, status="completed", steps=20,
                  model=None, data=None, max_steps=100, hydra=True):
    """A job folder as a multirun leaves it: .hydra/{config,overrides}.yaml, metrics.jsonl, summary.json."""
    d = root / name
    d.mkdir(parents=True)
    config = {"seed": seed, "model": {"n_layer": 2, "n_embd": 32, "block_size": 32, **(model or {})},
              "data": {"name": "stdlib", "vocab_size": 300, "cache_dir": f"/tmp/cache{seed}", **(data or {})},
              "optim": {"lr": 0.01}, "scheduler": {"name": "cosine_warmup"},
              "trainer": {"max_steps": max_steps, "micro_batch_size": 4, "eval_iters": 5}}
    if hydra:
        (d / ".hydra").mkdir()
        (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
            [f"{k}={v}" for k, v in overrides.items()] + [f"seed={seed}", f"data.cache_dir=/tmp/cache{seed}"]))
    records = [{"step": i, "train/loss": 6.0 - (6.0 - final) * i / steps, "train/lr": 0.01} for i in range(steps)]
    records.append({"step": steps, "val/loss": final, "val/loss_stderr": stderr})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "summary.json").write_text(json.dumps({
        "status": status, "final_val_loss": final if status == "completed" else None, "val_loss_stderr": stderr,
        "initial_val_loss": 6.0, "total_steps": max_steps, "diverged_step": 10 if status == "diverged" else None}))
    return d


def arms_sweep(root, finals: dict[str, dict[int, float]], **kw):
    """scheduler -> {seed: final val loss}, one job folder each."""
    (root / "multirun.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    n = 0
    for sched, by_seed in finals.items():
        for seed, final in by_seed.items():
            write_arm_job(root, f"{n}_scheduler={sched},seed={seed}", {"scheduler": sched}, seed, final, **kw)
            n += 1
    return root


# A seed effect shared by every arm (the same seed: the same initialisation, batches and validation
# windows), much larger than the differences between arms.
SEED_EFFECT = {1: 0.00, 2: 0.047, 3: -0.021, 4: 0.030}


def test_a_clear_winner_is_better_and_a_noise_level_difference_is_within_noise(tmp_path):
    noise = {1: 0.004, 2: -0.003, 3: 0.001, 4: -0.002}  # 0.000 on average: linear is cosine, give or take
    sweep = arms_sweep(tmp_path / "sweep", {
        "cosine_warmup": {s: 4.20 + e for s, e in SEED_EFFECT.items()},
        "wsd": {s: 4.15 + e + 0.5 * noise[s] for s, e in SEED_EFFECT.items()},  # 0.05 lower on every seed
        "linear": {s: 4.20 + e + noise[s] for s, e in SEED_EFFECT.items()},
    })
    comparisons, differ = compare_sweep(find_jobs(sweep), baseline="scheduler=cosine_warmup")
    (c,) = comparisons
    assert differ == [] and c.baseline.label == "scheduler=cosine_warmup" and c.baseline_named
    wsd, linear = c.differences["scheduler=wsd"], c.differences["scheduler=linear"]
    assert wsd.method == "paired" and wsd.n == 4 and wsd.verdict == "better" and wsd.high < 0
    assert wsd.mean == pytest.approx(-0.05, abs=0.002)
    assert linear.verdict == "within noise" and linear.low < 0 < linear.high
    # the arms' own numbers
    arms = {a.label: a for a in c.arms}
    cos = list(arms["scheduler=cosine_warmup"].finals().values())
    assert arms["scheduler=cosine_warmup"].n == 4 and arms["scheduler=cosine_warmup"].mean == pytest.approx(
        sum(cos) / 4) and arms["scheduler=cosine_warmup"].sd == pytest.approx(stats.tstd(cos))
    # wsd alone on top; cosine and linear tie (linear's interval against cosine includes 0)
    assert c.ranks["scheduler=wsd"] == "1" and {c.ranks["scheduler=cosine_warmup"], c.ranks["scheduler=linear"]} == {
        "2", "=2"}
    # the seeds are shared, so pairing removes the seed effect: unpaired, wsd would not be resolved
    assert welch_difference(list(arms["scheduler=wsd"].finals().values()), cos).verdict == "within noise"

    text = arms_text(sweep, baseline="scheduler=cosine_warmup")
    rows = {r[1]: r for r in _table_rows(text, "seeds to resolve it")}
    assert rows["scheduler=wsd"][0] == "1" and rows["scheduler=wsd"][8] == "better"
    assert rows["scheduler=linear"][8] == "within noise" and rows["scheduler=linear"][0].startswith("=")
    assert rows["scheduler=cosine_warmup (baseline)"][8] == "baseline"
    assert rows["scheduler=wsd"][7] == f"[{wsd.low:+.4f}, {wsd.high:+.4f}]"
    assert rows["scheduler=wsd"][9].startswith("paired, 4 seeds")
    assert rows["scheduler=wsd"][5] == "0.0040"  # eval s.e.: the final evaluations' standard error
    assert "eval s.e. 0.0028" in rows["scheduler=wsd"][9]  # sqrt(4 x 2 x 0.004^2) / 4
    assert "- seeds needed to resolve a difference of 0.01 nats:" in text


def test_the_issues_sweep_three_schedules_two_seeds_is_a_tie(tmp_path):
    """3 schedules x 2 seeds: cosine's seeds 0.047 apart, the means within 0.012: no difference."""
    sweep = arms_sweep(tmp_path / "sweep", {"constant_warmup": {1: 4.232, 2: 4.262}, "cosine_warmup": {1: 4.215, 2: 4.262},
                                            "wsd": {1: 4.226, 2: 4.259}})
    text = arms_text(sweep)
    rows = {r[1]: r for r in _table_rows(text, "seeds to resolve it")}
    assert rows["scheduler=cosine_warmup (baseline)"][0] == "1"
    assert rows["scheduler=wsd"][0] == rows["scheduler=constant_warmup"][0] == "=1"
    assert all(r[8] == "within noise" for k, r in rows.items() if "baseline" not in k)
    assert "Within noise of it" in text and "sharing its rank: constant_warmup" not in text
    assert "sharing its rank: scheduler=constant_warmup, scheduler=wsd." in text


def test_seeds_not_shared_fall_back_to_welch(tmp_path):
    sweep = arms_sweep(tmp_path / "sweep", {"cosine_warmup": {1: 4.20, 2: 4.25, 3: 4.22},
                                            "wsd": {4: 4.10, 5: 4.12, 6: 4.09}})
    (c,), _ = compare_sweep(find_jobs(sweep))
    d = c.differences["scheduler=cosine_warmup"]
    ref = stats.ttest_ind([4.20, 4.25, 4.22], [4.10, 4.12, 4.09], equal_var=False).confidence_interval(0.95)
    assert d.method == "Welch" and (d.low, d.high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert d.verdict == "worse" and "seeds not shared" in d.note
    text = arms_text(sweep)
    row = {r[1]: r for r in _table_rows(text, "seeds to resolve it")}["scheduler=cosine_warmup"]
    assert row[9].startswith("Welch (seeds not shared)") and row[8] == "worse"


def test_runs_that_do_not_compare_are_split_naming_the_keys(tmp_path):
    root = tmp_path / "sweep"
    for i, (sched, width, steps) in enumerate([("cosine_warmup", 32, 100), ("wsd", 32, 100), ("cosine_warmup", 64, 100),
                                               ("wsd", 64, 100), ("wsd", 32, 200)]):
        for seed in (1, 2):
            write_arm_job(root, f"{i}_{seed}", {"scheduler": sched, "model.n_embd": width, "trainer.max_steps": steps},
                          seed, 4.0 + 0.01 * i + 0.02 * seed, model={"n_embd": width}, max_steps=steps)
    comparisons, differ = compare_sweep(find_jobs(root))
    assert differ == ["model.n_embd", "tokens trained"]
    assert [c.setting.values for c in comparisons] == [
        {"model.n_embd": "32", "tokens trained": "12,800"}, {"model.n_embd": "64", "tokens trained": "12,800"},
        {"model.n_embd": "32", "tokens trained": "25,600"}]
    assert [[a.label for a in c.arms] for c in comparisons] == [["scheduler=cosine_warmup", "scheduler=wsd"]] * 2 + [
        ["scheduler=wsd model.n_embd=32 trainer.max_steps=200"]]  # one arm: named by all its overrides
    text = arms_text(root)
    assert "**Not one ranking**: these jobs differ in model.n_embd (32, 64); tokens trained (12,800, 25,600)" in text
    assert "### model.n_embd=64, tokens trained 12,800" in text
    assert text.count("**Lowest mean:") == 2  # the third setting has one arm: nothing to rank
    # the data too: another corpus is another setting
    other = tmp_path / "data"
    write_arm_job(other, "a", {"scheduler": "wsd"}, 1, 4.0)
    write_arm_job(other, "b", {"scheduler": "wsd", "data.name": "mine"}, 1, 3.0, data={"name": "mine"})
    assert compare_sweep(find_jobs(other))[1] == ["data.name"]


def test_single_runs_compare_as_arms_and_a_bad_baseline_is_one_line(tmp_path, capsys):
    runs = []
    for name, sched, seed, final in (("a1", "cosine_warmup", 1, 4.30), ("a2", "cosine_warmup", 2, 4.33),
                                     ("b1", "wsd", 1, 4.20), ("b2", "wsd", 2, 4.22)):
        runs.append(write_arm_job(tmp_path / "outputs", name, {"scheduler": sched}, seed, final))
    jobs = find_jobs_in(runs)
    assert [j.name for j in jobs] == [str(r) for r in runs]
    arms = build_arms(jobs)
    assert [(a.label, a.n) for a in arms] == [("scheduler=cosine_warmup", 2), ("scheduler=wsd", 2)]
    # through the script's main(), in process: several folders, the default output beside them
    main = _report_main()
    assert main([str(r) for r in runs]) == 0
    text = (tmp_path / "outputs" / "report" / "report.md").read_text()
    rows = {r[1]: r for r in _table_rows(text, "seeds to resolve it")}
    assert rows["scheduler=cosine_warmup"][9].startswith("paired, 2 seeds")
    assert rows["scheduler=wsd (baseline)"][8] == "baseline"  # the lowest mean
    text = report_markdown(runs, jobs, None, {}, baseline="cosine_warmup")  # a bare value names an arm too
    assert "scheduler=cosine_warmup (baseline)" in {r[1] for r in _table_rows(text, "seeds to resolve it")}
    capsys.readouterr()
    assert main([str(r) for r in runs] + ["--baseline", "scheduler=linear", "--out", str(tmp_path / "r3")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --baseline 'scheduler=linear' names no arm of this sweep; its arms: "
                          "scheduler=cosine_warmup; scheduler=wsd") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r3").exists()  # refused before anything was written


def _report_main():
    from minigpt.tools.report import main

    return main


def test_warmup_study_only_when_lr_and_warmup_vary_or_asked(tmp_path):
    root = tmp_path / "one_lr"
    for i, w in enumerate((0, 0.2)):
        for seed in (1, 2):
            write_job(root, f"{i}{seed}", lr=0.01, warmup=w, seed=seed, final=3.0 + i + 0.1 * seed, train=[6.0, 5.0])
    jobs = find_jobs(root)
    assert warmup_study_of(jobs) is None  # one peak LR: the warmups are arms
    assert "scheduler.warmup=0.2" in {r[1] for r in _table_rows(arms_text(root), "seeds to resolve it")}
    assert warmup_study_of(jobs, asked=True).warmups == [0, 20]  # --warmup-study
    two_lrs = tmp_path / "two_lrs"
    for i, (lr, w) in enumerate([(0.01, 0), (0.01, 0.2), (0.1, 0), (0.1, 0.2)]):
        write_job(two_lrs, i, lr=lr, warmup=w, seed=1, final=3.0, train=[6.0, 5.0])
    assert warmup_study_of(find_jobs(two_lrs)).lrs == [0.01, 0.1]
    flat = tmp_path / "flat"
    for i, lr in enumerate((0.01, 0.1)):
        write_job(flat, i, lr=lr, warmup=0.2, seed=1, final=3.0, train=[6.0, 5.0])
    with pytest.raises(UserError, match="--warmup-study: these jobs do not vary the warmup"):
        warmup_study_of(find_jobs(flat), asked=True)


def test_loss_figure_has_one_colour_per_arm_and_says_smoothed_only_when_smoothed(tmp_path):
    short = arms_sweep(tmp_path / "short", {"cosine_warmup": {1: 4.2, 2: 4.3}, "wsd": {1: 4.1, 2: 4.2}}, steps=50)
    long = arms_sweep(tmp_path / "long", {"cosine_warmup": {1: 4.2, 2: 4.3}}, steps=300)
    for sweep, smoothed in ((short, False), (long, True)):
        arms = build_arms(find_jobs(sweep))
        fig = plot_sweep_curves([(a.label, a.jobs) for a in arms], "loss", tmp_path / f"{sweep.name}.png")
        ax = fig.axes[0]
        labels = ax.get_legend_handles_labels()[1]
        assert labels == [f"{a.label} (2 seeds)" for a in arms]  # one line per arm, not per job
        assert ("smoothed" in ax.get_title()) == smoothed, ax.get_title()
        assert len(ax.collections) == len(arms)  # one band over the seeds per arm
    line = ax.get_lines()[0]  # the long arm's mean over its two seeds (before smoothing: their average)
    assert line.get_ydata()[0] == pytest.approx(6.0)


def test_ranking_shows_ties_tier_by_tier():
    arms = [Arm(x, {}, []) for x in "abcd"]
    means = {"a": 1.0, "b": 1.1, "c": 1.5, "d": 1.6}
    within = {("b", "a"), ("d", "c")}
    for arm in arms:
        arm.finals = lambda arm=arm: {"1": means[arm.label], "2": means[arm.label]}

    def diff(arm, leader):
        noise = (arm.label, leader.label) in within
        return Difference(0.1, -0.1 if noise else 0.05, 0.2, "paired", 2)

    assert rank_arms(arms, diff) == {"a": "1", "b": "=1", "c": "3", "d": "=3"}
    untested = lambda arm, leader: Difference(0.1, method="none")  # noqa: E731
    assert rank_arms(arms, untested) == {"a": "1?", "b": "2?", "c": "3?", "d": "4?"}
