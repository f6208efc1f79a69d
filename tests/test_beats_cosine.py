"""The "what beats cosine?" study (minigpt/studies/beats_cosine.py, scripts/beats_cosine_study.py):
its decisions and its report, on run folders written here; and once, slow, the cut-down command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from minigpt.errors import UserError
from minigpt.studies import beats_cosine as bc
from helpers import run_python

ROOT = Path(__file__).resolve().parents[1]
ENTROPY = 6.0


def fake_run(root: Path, run: bc.Run, final: float, *, ema: float | None = None, status: str = "completed",
             step_ms: float = 50.0, steps: int = 40) -> None:
    """A run folder as train.py leaves it, with only what the study reads."""
    folder = run.folder(root)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(run.overrides)))
    config = {"seed": run.seed, "model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64},
              "data": {"vocab_size": 1024}, "trainer": {"max_steps": steps, "eval_iters": 100, "micro_batch_size": 16},
              "optim": {"lr": run.lr}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    records = [{"step": s, "train/loss": 7.0 - s / steps * (7.0 - final), "train/lr": run.lr, "perf/step_ms": step_ms}
               for s in range(steps)]
    records.append({"step": steps, "val/loss": final, **({"val/loss_ema": ema} if ema is not None else {})})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    done = status == "completed"
    summary = {"status": status, "final_val_loss": final if done else None, "val_loss_stderr": 0.02 if done else None,
               "final_val_loss_ema": ema if done else None, "total_steps": steps, "unigram_entropy_val": ENTROPY,
               "wall_time_s": steps * step_ms / 1000, "plan": {"total_tokens": steps * 1024}}
    (folder / "summary.json").write_text(json.dumps(summary))


def spec(name: str) -> bc.ArmSpec:
    return next(a for a in bc.ARMS if a.name == name)


def test_the_lr_grid_grows_past_an_edge_that_holds_the_best_loss_and_stops_at_the_limit():
    cosine = spec("cosine")
    assert [bc.grid_lr(cosine.centre_lr, k) for k in (-1, 0, 1)] == [0.00158, 0.005, 0.0158]
    assert bc.sweep_points(cosine, {}) == [-1, 0, 1]
    assert bc.sweep_points(cosine, {-1: 4.2, 0: 4.0, 1: 4.1}) == [-1, 0, 1]  # best inside: done
    assert bc.sweep_points(cosine, {-1: 4.2, 0: 4.1, 1: 4.0}) == [-1, 0, 1, 2]
    assert bc.sweep_points(cosine, {-1: 4.2, 0: 4.1, 1: 4.0, 2: 3.9}) == [-1, 0, 1, 2, 3]
    assert bc.sweep_points(cosine, {-1: 4.2, 0: 4.1, 1: 4.0, 2: 3.9, 3: 3.8}) == [-1, 0, 1, 2, 3]  # extend=2 reached
    assert bc.sweep_points(cosine, {-1: 3.9, 0: 4.1, 1: math.inf}) == [-2, -1, 0, 1]
    assert bc.sweep_points(cosine, {-1: math.inf, 0: math.inf, 1: math.inf}) == [-2, -1, 0, 1]  # all diverged: lower
    assert bc.sweep_points(cosine, {0: 4.0, 1: 3.9}, grid_points=2, extend=0) == [0, 1]
    assert bc.equal_time_steps(800, arm_ms=100.0, baseline_ms=56.0) == 448
    assert bc.equal_time_steps(800, arm_ms=60.0, baseline_ms=56.0) is None  # within 1.1x: no equal-time run


def test_unknown_arms_are_refused_with_the_list_and_the_baseline_always_runs():
    assert [a.name for a in bc.arm_specs(["muon"])] == ["cosine", "muon"]
    with pytest.raises(UserError, match="unknown arm 'cosin'; the arms: cosine, wsd, linear_to_zero"):
        bc.arm_specs(["cosin"])


def test_the_study_chooses_lrs_runs_seeds_and_reports_each_arm_against_cosine(tmp_path):
    root = tmp_path / "runs"
    study = bc.Study(root, bc.arm_specs(["constant_ema", "muon"]))
    cosine, ema, muon = study.specs
    # Stage 1: the starting grid of every arm on seed 1, nothing chosen yet.
    assert [r.name for r in study.sweep(cosine).pending] == ["lr0.00158_s1", "lr0.005_s1", "lr0.0158_s1"]
    assert study.chosen() == {"cosine": None, "constant_ema": None, "muon": None}
    for lr, final in ((0.00158, 4.3), (0.005, 4.0), (0.0158, 4.1)):
        fake_run(root, bc.make_run(cosine, lr, 1), final)
    # constant_ema is judged at its average: the raw loss would pick 0.00158, the EMA picks 0.005
    for lr, final, avg in ((0.00158, 4.20, 4.10), (0.005, 4.25, 3.90), (0.0158, 4.40, 4.00)):
        fake_run(root, bc.make_run(ema, lr, 1), final, ema=avg)
    # muon: the best sits at the top edge, so one more point; it diverges there
    for lr, final in ((0.00632, 4.3), (0.02, 4.1), (0.0632, 4.0)):
        fake_run(root, bc.make_run(muon, lr, 1), final, step_ms=100.0)
    assert [r.name for r in study.sweep(muon).pending] == ["lr0.2_s1"]
    fake_run(root, bc.make_run(muon, 0.2, 1), math.nan, status="diverged")
    assert study.chosen() == {"cosine": 0.005, "constant_ema": 0.005, "muon": 0.0632}
    assert study.sweep(muon).points[0.2] == math.inf and not study.sweep(muon).at_edge
    # Stage 2: seeds 2 and 3 at the chosen LRs (seed 1 is the sweep's run).
    finals = {"cosine": (4.00, 4.10, 4.05), "muon": (4.00, 4.12, 4.10)}
    for s, arm in ((cosine, "cosine"), (muon, "muon")):
        for seed, final in zip(bc.SEEDS[1:], finals[arm][1:]):
            fake_run(root, bc.make_run(s, study.chosen()[arm], seed), final, step_ms=100.0 if arm == "muon" else 50.0)
    for seed, final, avg in ((2, 4.30, 4.02), (3, 4.25, 3.95)):
        fake_run(root, bc.make_run(ema, 0.005, seed), final, ema=avg)
    # Stage 3: muon's step costs 2x the baseline's: 20 of the 40 steps, decided once and kept.
    assert study.equal_time(ema, 0.005)["steps"] is None
    assert study.equal_time(muon, 0.0632) == {"steps": 20, "of": 40, "step_ms": 100.0, "baseline_step_ms": 50.0}
    assert json.loads((root / bc.DECISIONS_FILE).read_text())["equal_time_steps"]["muon@0.0632"]["steps"] == 20
    equal = study.seed_runs(muon, 0.0632, 20)
    assert equal[0].folder(root) == root / "muon_equal_time" / "lr0.0632_s1_20steps"
    assert equal[0].overrides[-1] == "trainer.max_steps=20"
    for seed, final in zip(bc.SEEDS, (4.20, 4.30, 4.22)):
        fake_run(root, bc.make_run(muon, 0.0632, seed, steps=20), final, step_ms=100.0, steps=20)

    report = bc.build_report(study)
    rows = {r["name"]: r for r in report.data["arms"]}
    assert list(rows) == ["cosine", "constant_ema", bc.RAW_CONSTANT, "muon"]
    assert rows["constant_ema"]["finals"] == {"1": 3.90, "2": 4.02, "3": 3.95}
    assert rows[bc.RAW_CONSTANT]["finals"] == {"1": 4.25, "2": 4.30, "3": 4.25}
    d = rows["constant_ema"]["minus_baseline"]  # differences -0.10, -0.08, -0.10: sd 0.01155, t(2) = 4.303
    assert d["method"] == "paired" and d["n"] == 3 and d["verdict"] == "better"
    assert d["mean"] == pytest.approx(-0.09333, abs=1e-5)
    assert (d["low"], d["high"]) == (pytest.approx(-0.12202, abs=1e-4), pytest.approx(-0.06465, abs=1e-4))
    assert rows[bc.RAW_CONSTANT]["minus_baseline"]["verdict"] == "worse"
    assert rows["muon"]["minus_baseline"]["verdict"] == "within noise"  # +0.0, +0.02, +0.05
    assert rows["muon"]["step_ms"] == 100.0 and rows["cosine"]["over_unigram"] == pytest.approx(4.05 / ENTROPY)
    assert (rows["constant_ema"]["rank"], rows["cosine"]["rank"], rows["muon"]["rank"]) == ("1", "2", "=2")
    (et,) = report.data["equal_time"]["arms"]
    assert et["steps"] == 20 and et["minus_baseline"]["mean"] == pytest.approx((0.2 + 0.2 + 0.17) / 3)
    assert et["minus_baseline"]["verdict"] == "worse"
    sweep = report.data["lr_sweep"]["muon"]
    assert sweep["points"] == {"0.00632": 4.3, "0.02": 4.1, "0.0632": 4.0, "0.2": None} and sweep["chosen"] == 0.0632
    text = "\n".join(bc.markdown(report))
    assert "| constant_ema | 3.9000 | 4.0200 | 3.9500 |" in text  # the per-seed table, at the average
    assert "| 1 | constant_ema | 3 | 3.9567 |" in text
    assert "- muon: 0.00632: 4.3000, 0.02: 4.1000, **0.0632: 4.0000**, 0.2: inf" in text
    assert "| muon | 100.0 | 2.00 |" in text and "muon at equal time" in text


def test_finished_runs_are_not_run_again_and_an_interrupted_one_is(tmp_path):
    root = tmp_path / "runs"
    cosine, wsd = bc.arm_specs(["wsd"])
    done, diverged, killed = bc.make_run(cosine, 0.005, 1), bc.make_run(wsd, 0.005, 1), bc.make_run(wsd, 0.005, 2)
    fake_run(root, done, 4.0)
    fake_run(root, diverged, math.nan, status="diverged")
    fake_run(root, killed, math.nan, status="interrupted")
    assert [bc.finished(r, root) for r in (done, diverged, killed)] == [True, True, False]
    no_python = str(tmp_path / "no-python")  # any run it started would fail to start
    assert bc.train_runs([done, diverged], root, python=no_python, log=lambda line: None) == {}
    with pytest.raises(FileNotFoundError):
        bc.train_runs([done, killed], root, python=no_python, log=lambda line: None)


@pytest.mark.slow
def test_the_report_writes_its_json_markdown_and_figures_and_says_what_is_missing(tmp_path):
    root = tmp_path / "runs"
    study = bc.Study(root, bc.arm_specs(["wsd"]), seeds=(1, 2), grid_points=1, extend=0)
    cosine, wsd = study.specs
    for s, finals in ((cosine, (4.0, 4.1)), (wsd, (3.9, 4.05))):
        for seed, final in zip((1, 2), finals):
            fake_run(root, bc.make_run(s, 0.005, seed), final)
    paths = bc.write_report(bc.build_report(study), tmp_path / "report")
    assert [p.name for p in paths] == ["report.json", "report.md", "curves.png", "lr_sweep.png", "wall_clock.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    data = json.loads(paths[0].read_text())
    assert data["lr_sweep"]["wsd"] == {"points": {"0.005": 3.9}, "chosen": 0.005, "at_edge": True, "missing": 0}
    assert data["arms"][1]["minus_baseline"]["mean"] == pytest.approx(-0.075)
    assert "(at the edge)" in paths[1].read_text()
    # a sweep that has not run: its runs are missing, nothing is chosen, the baseline has nothing to compare
    empty = bc.build_report(bc.Study(tmp_path / "none", bc.arm_specs(["wsd"])))
    assert empty.data["arms"] == [] and empty.data["lr_sweep"]["wsd"]["missing"] == 3
    assert "nothing compared" in "\n".join(bc.markdown(empty))


@pytest.mark.slow
def test_the_cut_down_study_runs_end_to_end(tmp_path, cache_dir):
    # two tiny runs (cosine and GI-Adam, one LR, one seed): the subprocesses, folders and report; the
    # statistics over seeds and the resume are the in-process tests' above
    command = [ROOT / "scripts" / "beats_cosine_study.py", "--runs", str(tmp_path / "runs"),
               "--report", str(tmp_path / "report"), "--arms", "no_warmup_gi_adam", "--seeds", "1",
               "--grid-points", "1", "--extend", "0", "--extra", "+debug=tiny", "trainer.max_steps=10",
               "trainer.eval_iters=1", "trainer.schedule_plot=false", f"data.cache_dir={cache_dir}"]
    # (the script runs in the checkout: without the session's cache it would write one into data/)
    done = run_python(command, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "trained 2 runs" in done.stdout
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [(r["name"], r["n"], r["steps"]) for r in data["arms"]] == [("cosine", 1, 10), ("no_warmup_gi_adam", 1, 10)]
    assert data["arms"][1]["minus_baseline"]["verdict"] == "no interval"  # one seed
    assert (tmp_path / "runs" / "no_warmup_gi_adam" / "lr0.005_s1" / "summary.json").exists()
    assert all((tmp_path / "report" / f).stat().st_size for f in ("curves.png", "lr_sweep.png", "wall_clock.png"))


def test_the_command_refuses_an_unknown_arm_or_override_in_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    import importlib.util

    loaded = importlib.util.spec_from_file_location("beats_cosine_study", ROOT / "scripts" / "beats_cosine_study.py")
    script = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(script)
    monkeypatch.chdir(ROOT)  # main() works from the checkout; the test's working folder comes back after it
    runs = tmp_path / "runs"
    assert script.main(["--runs", str(runs), "--arms", "cosin"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: unknown arm 'cosin'; the arms: cosine, wsd, linear_to_zero, constant_ema, schedule_free, muon, "
        "no_warmup_adamw, no_warmup_gi_adam"]
    assert script.main(["--runs", str(runs), "--arms", "wsd", "--extra", "trainer.max_stepz=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: unknown config key 'trainer.max_stepz' (did you mean 'trainer.max_steps'?)")
    assert not runs.exists()
