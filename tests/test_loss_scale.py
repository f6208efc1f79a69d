"""The scale study (minigpt/studies/loss_scale.py): its runs, its evaluation on curves a law drew,
the optimized-schedule check and the report's figure; in process, without training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from minigpt.studies import loss_law
from minigpt.studies import loss_scale as study

TRUE = {"L0": 3.0, "A": 1.6, "alpha": 0.5, "C": 40.0, "lam": 0.95}


def test_the_study_runs_every_schedule_at_every_length_with_its_seeds_and_eval_settings():
    runs = study.plan_runs((600, 2000), extra=["trainer.eval_iters=5"])
    per_length = len(study.FITTED) + len(study.UNSEEN) + 1 + (len(study.SEEDS) - 1) * len(study.SPREAD)
    assert len(runs) == 2 * per_length
    by_name = {(r.length, r.name): r for r in runs}
    long = by_name[(2000, "cosine_2x")]
    assert "trainer.max_steps=4000" in long.overrides and "scheduler=cosine_warmup" in long.overrides
    seeded = by_name[(600, "wsd_sqrt_s2")]
    assert seeded.seed == 2 and "seed=2" in seeded.overrides
    assert "trainer.eval_interval=24" in seeded.overrides and "trainer.eval_interval=80" in long.overrides
    # --extra replaces the study's own value instead of repeating the key (Hydra refuses duplicates)
    assert [o for o in seeded.overrides if o.startswith("trainer.eval_iters=")] == ["trainer.eval_iters=5"]
    assert all(study.MODEL[0] in r.overrides for r in runs)


def test_the_torch_corpus_reads_the_installed_torch_sources_and_the_default_reads_the_stdlib():
    import torch

    from minigpt.launch.compose import compose

    (torch_run,) = [r for r in study.plan_runs((600,), corpus="torch") if r.name == "cosine"]
    data = compose(torch_run.overrides).data
    assert (data.source, data.name, list(data.extensions)) == ("files", "torch_source", [".py"])
    assert [Path(p) for p in data.paths] == [Path(torch.__file__).parent]
    (default_run,) = [r for r in study.plan_runs((600,)) if r.name == "cosine"]
    assert compose(default_run.overrides).data.source == "stdlib"
    with pytest.raises(ValueError, match="unknown corpus 'wiki'; valid: stdlib, torch"):
        study.plan_runs((600,), corpus="wiki")


def test_runs_train_longest_first_and_an_earlier_reports_curves_are_not_trained_again(tmp_path, monkeypatch):
    runs = study.plan_runs((600, 2000))
    queued = []
    monkeypatch.setattr(study, "train_queue", lambda todo, jobs, python, log: queued.extend(todo) or {})
    known = {"600/constant": {"seed": 1337}, "2000/cosine_s1": {"seed": 1}}
    study.train_runs(runs, tmp_path, known=known)
    labels = [label for label, _, _ in queued]
    assert labels[0] == "2000/cosine_2x" and labels[1:3] == ["2000/constant", "2000/cosine"]  # 4,000, then 2,000 steps
    assert len(labels) == len(runs) - 2 and not set(known) & set(labels)
    assert labels.index("600/cosine_2x") < labels.index("600/cosine")  # 1,200 steps before 600
    assert study.collect_curves(runs[:1], tmp_path, known=known) == {"600/constant": {"seed": 1337}}


def test_reuse_curves_takes_only_this_studys_runs_and_refuses_an_unreadable_file_in_one_line(tmp_path):
    import json

    from helpers import load_script
    from minigpt.errors import UserError

    script = load_script("loss_scale_study")
    runs = study.plan_runs((600,))
    earlier = tmp_path / "curves.json"
    earlier.write_text(json.dumps({"600/constant": {"seed": 1337}, "80/constant": {"seed": 1337}}))
    assert script.load_known(str(earlier), runs) == {"600/constant": {"seed": 1337}}  # not a length of this study
    assert script.load_known(None, runs) == {}
    earlier.write_text("{not json")
    with pytest.raises(UserError, match="--reuse-curves .*curves.json: cannot read it") as e:
        script.load_known(str(earlier), runs)
    assert "\n" not in str(e.value)


def law_curves(length: int) -> dict:
    """The study's curves at `length` as the momentum law draws them, every run's seed 1337."""
    from test_loss_law import schedule

    shapes = {"constant": "constant", "cosine": "cosine", "two_stage": "step", "cosine_to_zero": "cosine",
              "wsd_linear": "wsd",
              "wsd_sqrt": "wsd", "linear_to_zero": "cosine", "step_decay": "step", "cyclic": "cosine",
              study.LONG: "cosine"}
    out = {}
    for name, shape in shapes.items():
        total = 2 * length if name == study.LONG else length
        lrs = schedule(shape, total=total, warmup=total // 10)
        steps = np.arange(0, total + 1, total // 20)
        losses = loss_law.momentum_loss(lrs, np.maximum(steps, 1), **TRUE)
        out[f"{length}/{name}"] = {**loss_law.curve_to_dict(loss_law.Curve(lrs, steps, losses, name)), "seed": 1337,
                                   "schedule": name}
    return out


def test_a_rerun_keeps_the_earlier_time_of_every_run_it_does_not_train_again(tmp_path, monkeypatch):
    import json

    from helpers import load_script

    script = load_script("loss_scale_study")
    monkeypatch.chdir(tmp_path)
    runs, report = Path("runs"), Path("report")
    for key in ("2000/cosine", "2000/optimized"):  # finished runs
        (runs / key).mkdir(parents=True)
        (runs / key / "summary.json").write_text(json.dumps({"status": "completed"}))
    (runs / "2000/cyclic").mkdir(parents=True)  # begun again, not finished: its old time no longer holds
    report.mkdir()
    earlier = {"runs": "runs", "run_seconds": {"2000/cosine": 101.0, "2000/optimized": 180.6, "2000/cyclic": 99.0}}
    (report / "report.json").write_text(json.dumps(earlier))
    assert script.earlier_seconds(report, runs) == {"2000/cosine": 101.0, "2000/optimized": 180.6}
    assert script.earlier_seconds(report, Path("other_runs")) == {}  # a report of other runs: none of its times
    # Curves taken from another report (--reuse-curves): those runs' times come from the report beside them.
    old = Path("old")
    old.mkdir()
    (old / "report.json").write_text(json.dumps({"runs": "gone", "run_seconds": {"600/constant": 31.0,
                                                                                  "600/cosine": 32.0}}))
    assert script.earlier_seconds(Path("nowhere"), runs, str(old / "curves.json"), {"600/constant": {}}) == {
        "600/constant": 31.0}
    (report / "report.json").write_text("{not json")
    assert script.earlier_seconds(report, runs) == {}
    assert script.earlier_seconds(Path("nowhere"), runs) == {}


def test_the_evaluation_predicts_each_unseen_run_and_reports_its_error_beside_the_seed_spread(tmp_path, monkeypatch):
    fitted_on = []

    def exact_fit(law, curves, procedure, restarts):  # fitting is tested in test_loss_law.py: here, the bookkeeping
        fitted_on.append([c.label for c in curves])
        return loss_law.Fit(law, dict(TRUE), {}, 0.0, 0.0, 0, restarts, procedure=procedure,
                            runs=[{"label": c.label, "lr_min": float(min(c.lrs[50:])), "lr_max": float(max(c.lrs))}
                                  for c in curves])

    monkeypatch.setattr(study.loss_law, "fit", exact_fit)
    curves = law_curves(400)
    for seed, shift in ((1, 0.01), (2, -0.01)):  # two more seeds of the cosine run: the spread
        extra = dict(curves["400/cosine"])
        extra.update(seed=seed, losses=[v + shift for v in extra["losses"]])
        curves[f"400/cosine_s{seed}"] = extra
    extra = dict(curves["400/wsd_sqrt"])  # one more seed of an unseen schedule, 0.02 higher at the end
    extra.update(seed=1, losses=[*extra["losses"][:-1], extra["losses"][-1] + 0.02])
    curves["400/wsd_sqrt_s1"] = extra
    two_stage = curves["400/two_stage"]  # a fitted run whose end the law misses by 0.02
    two_stage["losses"] = [*two_stage["losses"][:-1], two_stage["losses"][-1] + 0.02]
    rows = study.evaluate(curves, [400], laws=("momentum",), procedures=("bounded",), restarts=2)
    assert [(r["fit_set"], r["fitted"]) for r in rows] == [(k, list(v)) for k, v in study.FIT_SETS.items()]
    assert fitted_on == [list(v) for v in study.FIT_SETS.values()]
    for row in rows:  # the law's own parameters on its own curves: every end exact (to the LRs stored at 7 digits)
        assert set(row["errors"]) == {*study.UNSEEN, study.LONG}
        assert row["max_abs_error"] < 1e-6 and row["within_target"] and row["long_abs_error"] < 1e-6
        assert row["errors"]["cyclic"]["measured"] == curves["400/cyclic"]["losses"][-1]
        assert "seed_mean" not in row["errors"]["cyclic"]  # one seed only
        assert row["errors"]["wsd_sqrt"]["error_to_seed_mean"] == pytest.approx(row["errors"]["wsd_sqrt"]["error"] - 0.01)
        assert row["mean_abs_error"] == pytest.approx(np.mean([abs(row["errors"][n]["error"]) for n in study.UNSEEN]))
        assert set(row["fitted_end_errors"]) == set(row["fitted"])  # each fitted run's own end
        for name, error in row["fitted_end_errors"].items():
            assert error == pytest.approx(-0.02 if name == "two_stage" else 0.0, abs=1e-6), (name, error)
    spread = study.seed_spread(curves, 400)
    # the std of x - 0.01, x, x + 0.01, and of y, y + 0.02
    assert spread == {"cosine": pytest.approx(0.01), "wsd_sqrt": pytest.approx(0.02 / 2**0.5)}
    report = {"fits": rows, "seed_spread": {"400": spread}, "title": "t"}
    study.draw(report, tmp_path / "error.png")
    assert (tmp_path / "error.png").stat().st_size > 1000
    lines = study.summary_lines(report)
    assert len(lines) == len(study.FIT_SETS) and lines[0].startswith("   400 momentum    bounded   2 runs: mean error ")
    assert "seed spread 0.0121" in lines[0]  # the mean of the two schedules' spreads
    three = lines[list(study.FIT_SETS).index("3 runs")]
    assert "fitted ends within 0.0200 (two_stage -0.0200)" in three


def test_fits_in_two_processes_give_the_rows_one_process_gives_in_the_same_order():
    curves = law_curves(200)
    parallel = study.evaluate(curves, [200], laws=("momentum",), procedures=("bounded",), restarts=1, jobs=2)
    assert [r["fit_set"] for r in parallel] == list(study.FIT_SETS)
    for row in (parallel[0], parallel[-1]):  # the same seeded fit as in this process
        here = study.fit_row((200, "momentum", "bounded", row["fit_set"]), curves, restarts=1)
        assert row["fit"]["params"] == here["fit"]["params"] and row["errors"] == here["errors"]


def test_the_optimized_check_pairs_each_seed_with_its_cosine_run():
    curves = {}
    for seed, final in ((1337, 4.2), (1, 4.3), (2, 4.25)):
        key = "600/cosine" if seed == 1337 else f"600/cosine_s{seed}"
        curves[key] = {"label": "c", "lrs": [1e-3] * 600, "steps": [600], "losses": [final], "seed": seed,
                       "schedule": "cosine"}
    check = study.check_optimized(curves, {1337: 4.1, 1: 4.2, 2: 4.15}, 600)
    assert check["differences"] == pytest.approx([-0.1, -0.1, -0.1])  # seeds 1, 1337, 2
    assert check["mean"] == pytest.approx(-0.1) and check["interval_95"] == pytest.approx([-0.1, -0.1])
    assert "beyond seed noise: optimized better" in check["line"]


def test_the_optimize_check_takes_the_multi_power_fit_with_the_smallest_largest_error():
    from helpers import load_script

    script = load_script("loss_scale_study")
    rows = [{"law": "multi_power", "procedure": "bounded", "length": 2000, "fit_set": "3 runs", "max_abs_error": 0.04},
            {"law": "multi_power", "procedure": "bounded", "length": 5000, "fit_set": "2 runs", "max_abs_error": 0.03},
            {"law": "multi_power", "procedure": "bounded", "length": 600, "fit_set": "3 runs", "max_abs_error": 0.03},
            {"law": "multi_power", "procedure": "published", "length": 2000, "fit_set": "3 runs", "max_abs_error": 0.01},
            {"law": "momentum", "procedure": "bounded", "length": 2000, "fit_set": "3 runs", "max_abs_error": 0.001}]
    best = script.where_it_predicts_best(rows)
    assert (best["length"], best["fit_set"]) == (5000, "2 runs")  # the tie with 600 steps goes to the longer run
