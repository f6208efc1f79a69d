"""minigpt/studies/sweep/report.py (what `minigpt report` writes): the sweep table, the study
tables, the arms' section, the warmup study's signature tables and sensitivity per seed, on
synthetic sweeps and on a real multirun."""

import json

import pytest
import yaml

from helpers import (arms_text, run_report, run_train, study_jobs, table_rows, tiny_overrides, warmup_job, write_arm_job,
                     write_job)
from minigpt.errors import UserError
from minigpt.studies.sweep.arms import build_arms
from minigpt.studies.sweep.jobs import find_jobs, find_jobs_in
from minigpt.studies.sweep.report import (lr_range_note, report_markdown, signature_tables, sweep_table, warmup_study_of,
                                          write_report)
from minigpt.studies.sweep.statistics import (build_study, clipped_loss, lr_sensitivity, seed_pairs, sensitivity_per_seed,
                                              signatures)


# --- a synthetic sweep on disk: every kind of job a multirun can leave behind (conftest.py) ----


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
    rows = {r[1]: r for r in table_rows(text, "sensitivity (own best)")}
    assert rows["no warmup"][2:4] == ["1.450", "1.850"] and rows["no warmup"][6] == "1/4"
    assert rows["warmup 20 steps (20%)"][2:4] == ["0.250", "0.250"]
    assert rows["no warmup"][7] == "57"  # first divergence step
    # early peak loss over the first 3 steps: no warmup at LR 0.1: seeds 9.0 and 8.5
    early = {r[0]: r for r in table_rows(text, "early peak loss", after="#### pre-LN, no warmup")}
    assert early["0.1"][6] == "8.75 (8.50–9.00)"


@pytest.mark.slow
def test_sweep_table_lists_every_job_and_the_arms_lowest_mean(synthetic_sweep):
    paths = write_report(synthetic_sweep, synthetic_sweep / "out")
    text = paths["report"].read_text()
    rows = table_rows(text, "tokens/s")
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
    assert [r[column] for r in table_rows(text, "final val loss (EMA)")] == ["–", "2.9500"]
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
    rows = table_rows(text, "tokens/s")
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
    sens = {r[1]: r for r in table_rows(text, "sensitivity (own best)")}
    assert sens["no warmup"][2] == f"{lr_sensitivity(arms[0]):.3f}"
    assert sens["warmup 6 steps (50%)"][3] == f"{lr_sensitivity(arms[0.5], best_all):.3f}"
    for name in ("loss.png", "lr.png", "study_lr.png", "study_early.png"):
        assert (out / name).stat().st_size > 5000, name


# --- arms over seeds in the report -----------------------------------------------------------


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
    rows = {r[1]: r for r in table_rows(text, "seeds to resolve it")}
    assert rows["scheduler=cosine_warmup"][9].startswith("paired, 2 seeds")
    assert rows["scheduler=wsd (baseline)"][8] == "baseline"  # the lowest mean
    text = report_markdown(runs, jobs, None, {}, baseline="cosine_warmup")  # a bare value names an arm too
    assert "scheduler=cosine_warmup (baseline)" in {r[1] for r in table_rows(text, "seeds to resolve it")}
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
    assert "scheduler.warmup=0.2" in {r[1] for r in table_rows(arms_text(root), "seeds to resolve it")}
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


# --- the warmup study's signatures, seed by seed (helpers.study_jobs) -------------------------------


def test_signature_table_shows_each_seed_and_the_verdicts():
    text = "\n".join(signature_tables(build_study(study_jobs())))
    assert "| pre-LN | 0.01 | 2 | 5.100 | 4.600 | – | 10: +0.500 (lasting gap) |" in text
    assert "| post-LN | 0.001 | 1 | stuck | – | 4.700 | 50: n/a (lasting gap) |" in text
    assert "- rescue: post-LN at peak LR 0.001 with warmup 50 steps (50%) (3 seeds)" in text


def test_sensitivity_per_seed_and_the_lr_range_note():
    jobs = []
    for seed, losses in ((1, (5.0, 4.0, 6.0)), (2, (5.5, 4.5, 8.5))):
        for lr, final in zip((1e-3, 3e-3, 1e-2), losses):
            jobs += [warmup_job("pre", lr, 0, seed, final), warmup_job("pre", lr, 10, seed, final)]
    study = build_study(jobs)
    # seed 1: mean(5.0, 4.0, 6.0) - 4.0 = 1.0; seed 2: 8.5 is above the initial 8.0, so mean(5.5, 4.5, 8.0) - 4.5
    assert sensitivity_per_seed(study, "pre-LN", 0) == pytest.approx({"1": 1.0, "2": 18.0 / 3 - 4.5})
    note = lr_range_note(study.lrs)
    assert "0.001, 0.003, 0.01" in note and "0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3" in note
    assert "lacks 0.0003, 0.03, 0.1, 0.3" in note


def test_unfinished_runs_show_the_gap_so_far_and_count_for_no_signature():
    jobs = []
    for seed in (1, 2, 3):
        bare = warmup_job("pre", 0.01, 0, seed, status="interrupted")
        warm = warmup_job("pre", 0.01, 10, seed, status="interrupted")
        bare.records += [{"step": 100, "val/loss": 5.6}, {"step": 200, "val/loss": 5.4}]
        warm.records += [{"step": 100, "val/loss": 5.3}, {"step": 200, "val/loss": 5.0 + 0.01 * seed}]
        bare.records += [{"step": 300, "val/loss": 5.2}]  # the warmup twin has not reached step 300
        jobs += [bare, warm, warmup_job("pre", 0.1, 0, seed, 5.0), warmup_job("pre", 0.1, 10, seed, 5.0)]
    study = build_study(jobs)
    pairs = seed_pairs(study, "pre-LN", 0.01, 10)
    assert [(p.common_step, round(p.gap_so_far, 3)) for p in pairs] == [(200, 0.39), (200, 0.38), (200, 0.37)]
    assert all(p.gap is None and not p.lasting_gap for p in pairs)
    assert signatures(study)[0].holds == []  # a verdict needs finished runs
    text = "\n".join(signature_tables(study))
    assert ("| pre-LN | 0.01 | 1 | 5.200 at step 300, interrupted | 5.010 at step 200, interrupted "
            "| 10: +0.390 at step 200, not finished |") in text
