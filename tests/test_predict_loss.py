"""Loss prediction on minigpt runs: reading runs (also resumed ones), planning a config's LRs,
searching schedules (minigpt/studies/loss_prediction.py) and `minigpt predict`'s verbs and errors (minigpt/tools/predict.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from minigpt.launch.compose import compose
from minigpt.studies import loss_law
from minigpt.studies import loss_prediction as lp
from minigpt.errors import UserError
from minigpt.run.trainer import train
from minigpt.tools import predict as predict_tool



# minigpt.studies.lr_table registers "table" when imported: each test here leaves the registry as it was
pytestmark = pytest.mark.usefixtures("table_schedule_stays_here")
TRUE = {"L0": 3.0, "A": 1.6, "alpha": 0.5, "B": 70.0, "C": 0.5, "beta": 0.6, "gamma": 0.5}


def fake_run(run_dir, overrides, every=20, noise=5e-4, seed=0, lr_records=True):
    """A run directory as train.py writes it, with losses drawn from the multi-power law."""
    lrs = lp.planned_lrs(compose(overrides))
    steps = np.arange(0, len(lrs) + 1, every)
    losses = loss_law.multi_power_loss(lrs, np.maximum(steps, 1), **TRUE)
    losses *= 1 + noise * np.random.default_rng(seed).standard_normal(len(steps))
    val = dict(zip(steps.tolist(), losses.tolist()))
    records = [{"step": s, **({"train/lr": float(lr)} if lr_records else {}), "train/loss": 9.0,
                **({"val/loss": val[s]} if s in val else {})} for s, lr in enumerate(lrs)]
    records.append({"step": len(lrs), "val/loss": val[len(lrs)]})
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides + [f"hydra.run.dir={run_dir}"]))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return lrs


SHORT = ["trainer.max_steps=200", "trainer.eval_interval=20"]


def test_read_run_takes_every_lr_and_the_val_losses_and_refuses_runs_without_lrs(tmp_path):
    lrs = fake_run(tmp_path / "cos", SHORT + ["scheduler=cosine_warmup"])
    curve, overrides = lp.read_run(tmp_path / "cos")
    assert np.array_equal(curve.lrs, lrs) and curve.steps.tolist() == list(range(0, 201, 20))
    assert lp.schedule_overrides(overrides) == ["trainer.max_steps=200", "scheduler=cosine_warmup"]
    fake_run(tmp_path / "nolr", SHORT, lr_records=False)
    with pytest.raises(UserError, match="has no LR records"):
        lp.read_run(tmp_path / "nolr")
    with pytest.raises(UserError, match="is not a run directory"):
        lp.read_run(tmp_path / "missing")


def test_merge_overrides_replaces_keys_and_a_new_scheduler_drops_the_old_ones():
    base = ["trainer.max_steps=600", "scheduler=wsd", "scheduler.decay=0.3", "optim.lr=3e-3"]
    assert lp.merge_overrides(base, ["scheduler=cosine_warmup", "trainer.max_steps=1200"]) == [
        "optim.lr=3e-3", "scheduler=cosine_warmup", "trainer.max_steps=1200"]
    assert lp.merge_overrides(base, ["scheduler.decay=0.2"]) == [
        "trainer.max_steps=600", "scheduler=wsd", "optim.lr=3e-3", "scheduler.decay=0.2"]


@pytest.mark.slow
def test_planned_lrs_are_the_lrs_the_trainer_logs(make_config, tmp_path):
    config = make_config(scheduler__name="wsd", trainer__max_steps=10, trainer__eval_interval=100)
    train(config, tmp_path, quiet=True)
    curve, _ = lp.read_run(tmp_path)
    assert np.array_equal(lp.planned_lrs(config), curve.lrs)


@pytest.mark.slow
def test_predictions_do_not_depend_on_how_a_run_was_split_into_resumed_pieces(make_config, tmp_path):
    cfg = dict(trainer__max_steps=12, trainer__eval_interval=1, trainer__ckpt_interval=4, trainer__keep_checkpoints=10)
    whole, pieces, branch = tmp_path / "whole", tmp_path / "pieces", tmp_path / "branch"
    train(make_config(**cfg), whole, quiet=True)
    # Stopped after step 4 and resumed in place (records from the checkpoint on are redone) ...
    train(make_config(**cfg), pieces, quiet=True)
    train(make_config(**cfg, trainer__resume=str(pieces / "checkpoints" / "step_0000004.pt")), pieces, quiet=True)
    # ... or continued from step 8 in another folder (a branch: the parent's records, then its own).
    train(make_config(**cfg, trainer__resume=str(whole / "checkpoints" / "step_0000008.pt")), branch, quiet=True)
    curves = [lp.read_run(d)[0] for d in (whole, pieces, branch)]
    for c in curves[1:]:
        assert np.array_equal(c.lrs, curves[0].lrs) and np.array_equal(c.steps, curves[0].steps)
        assert np.array_equal(c.losses, curves[0].losses)
    fits = [loss_law.fit("momentum", [c], restarts=2, start=1) for c in curves]
    unseen = np.linspace(1e-3, 1e-4, 50)
    predictions = [f.predict(unseen) for f in fits]
    assert all(np.array_equal(p, predictions[0]) for p in predictions[1:])


def test_search_wsd_finds_the_grid_point_with_the_lowest_predicted_loss():
    fit = loss_law.Fit("multi_power", dict(TRUE), {}, 0.0, 0.0, 0, 0)
    base = ["trainer.max_steps=300"]
    search = lp.search_wsd(fit, compose, base)
    overrides, loss = search.overrides, search.predicted
    # a 10% warmup leaves room for cooldowns up to 90% of the run: 0.95 is skipped
    assert search.candidates == len(lp.WSD_SHAPES) * (len(lp.WSD_FRACTIONS) - 1) * len(lp.WSD_FLOORS)
    assert loss == pytest.approx(lp.final_loss(fit, lp.planned_lrs(compose(base + overrides))), abs=1e-12)
    # Each setting on an edge of the grid is said, and only those.
    best = dict(o.removeprefix("scheduler.").split("=") for o in overrides[1:])
    assert len(search.edges) == sum([float(best["decay"]) in (0.05, 0.9),
                                     float(best["min_lr_ratio"]) in (lp.WSD_FLOORS[0], lp.WSD_FLOORS[-1])])
    for edge in search.edges:  # each note names the setting and its value
        name, _, rest = edge.partition("=")
        assert float(rest.split(" ")[0]) == float(best[name])
    # It beats every schedule in the family we try by hand, and cosine.
    for other in (["scheduler=wsd"], ["scheduler=wsd", "scheduler.decay=0.5", "scheduler.decay_shape=linear"],
                  ["scheduler=cosine_warmup"]):
        assert loss <= lp.final_loss(fit, lp.planned_lrs(compose(base + other)))


def test_search_free_writes_a_table_train_py_runs_with_a_lower_predicted_loss_than_cosine():
    fit = loss_law.Fit("multi_power", dict(TRUE), {}, 0.0, 0.0, 0, 0)
    base = ["trainer.max_steps=300"]
    overrides, loss = lp.search_free(fit, compose, base, knots=8)
    lrs = lp.planned_lrs(compose(base + overrides))  # composes and validates as train.py would
    reference = lp.planned_lrs(compose(base))
    warmup = loss_law.warmup_length(reference)
    assert np.allclose(lrs[:warmup + 1], reference[:warmup + 1])  # the same warmup and peak
    assert np.all(np.diff(lrs[warmup:]) <= 1e-15)  # monotone after it
    assert loss == pytest.approx(lp.final_loss(fit, lrs))
    assert loss < lp.final_loss(fit, lp.planned_lrs(compose(base + ["scheduler=cosine_warmup"]))) - 0.01


def run_script(*args, cwd):
    return subprocess.run([sys.executable, "-m", "minigpt", "predict", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_fit_predict_optimize_from_the_command_line(tmp_path):
    fake_run(tmp_path / "constant", SHORT + ["scheduler=constant_warmup"], seed=1)
    fake_run(tmp_path / "cosine", SHORT + ["scheduler=cosine_warmup"], seed=2)
    wsd_lrs = fake_run(tmp_path / "wsd", SHORT + ["scheduler=wsd"], seed=3)
    fit = run_script("fit", tmp_path / "constant", tmp_path / "cosine", "--law", "multi_power", "-o", "fit.json",
                     "--restarts", "4", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    assert json.loads((tmp_path / "fit.json").read_text())["rmse"] < 0.01 and (tmp_path / "fit.png").exists()
    # Given absolute paths, the JSON files name them relative to where the command ran.
    assert json.loads((tmp_path / "fit.json").read_text())["run_dirs"] == ["constant", "cosine"]
    predict = run_script("predict", tmp_path / "fit.json", "--scheduler", "wsd", "--scheduler", "cosine_warmup",
                         "trainer.max_steps=400", "--run", tmp_path / "wsd", "-o", "p.png", cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr
    assert json.loads((tmp_path / "p.json").read_text())["fit"] == "fit.json"
    predictions = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert [p["steps"] for p in predictions] == [200, 400, 200]
    truth = loss_law.multi_power_loss(wsd_lrs, [200], **TRUE)[0]
    # Fitted on two 200-step curves, the unseen wsd is predicted to a few hundredths ...
    assert predictions[0]["final_loss"] == pytest.approx(truth, abs=0.05)
    assert predictions[2]["final_loss"] == pytest.approx(predictions[0]["final_loss"], abs=1e-9)  # from its run too
    optimize = run_script("optimize", tmp_path / "fit.json", "-o", "best.json", cwd=tmp_path)
    assert optimize.returncode == 0, optimize.stderr
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["fit"] == "fit.json"
    assert best["predicted_final_loss"] < best["cosine_predicted_final_loss"]
    assert best["command"] is None or best["command"].startswith("python train.py ")
    assert best["warnings"] or "scheduler=wsd" in best["command"]


BAD = {
    "no LR records": (["fit", "nolr", "--law", "momentum"], "has no LR records"),
    "too few points": (["fit", "sparse", "--law", "multi_power"], "too few points to fit"),
    "unknown law": (["fit", "cos", "--law", "power_law"], "unknown law 'power_law'; valid: multi_power, momentum"),
    "refused override": (["predict", "fit.json", "--scheduler", "wsd", "scheduler.decay=1.5"],
                         "scheduler 'wsd': decay=1.5"),
    "unknown key": (["predict", "fit.json", "--scheduler", "wsd", "scheduler.decya=0.1"],
                    "unknown config key 'scheduler.decya' (did you mean 'scheduler.decay'?)"),
}


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """Runs and a fit for the bad-input cases, made once: no case may write anything into them."""
    folder = tmp_path_factory.mktemp("bad-input")
    fake_run(folder / "cos", SHORT + ["scheduler=cosine_warmup"])
    fake_run(folder / "nolr", SHORT, lr_records=False)
    fake_run(folder / "sparse", ["trainer.max_steps=200"], every=100)
    (folder / "fit.json").write_text(json.dumps(loss_law.Fit("multi_power", TRUE, {}, 0, 0, 0, 0).to_dict()))
    return folder


def listing(folder):
    return sorted((p, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(bad_input_runs, case, monkeypatch, capsys):
    """In process, through the script's main() (as its command line calls it; the process: below)."""
    before = listing(bad_input_runs)
    args, message = BAD[case]
    monkeypatch.chdir(bad_input_runs)
    status = predict_tool.main(list(args))
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert listing(bad_input_runs) == before


@pytest.mark.slow
def test_bad_input_from_the_command_line_exits_2_with_one_line(bad_input_runs):
    before = listing(bad_input_runs)
    args, message = BAD["unknown key"]
    proc = run_script(*args, cwd=bad_input_runs)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert listing(bad_input_runs) == before


@pytest.mark.slow
def test_the_sweep_report_overlays_predicted_and_measured_curves(tmp_path):
    from minigpt.studies.sweep.report import write_report

    sweep = tmp_path / "sweep"
    truths = {}
    for i, name in enumerate(["cosine_warmup", "wsd"]):
        lrs = fake_run(sweep / str(i), SHORT + [f"scheduler={name}"], seed=i)
        (sweep / str(i) / "summary.json").write_text(json.dumps({"status": "completed"}))
        truths[str(i)] = (loss_law.multi_power_loss(lrs, [200], **TRUE)[0],
                          lp.read_run(sweep / str(i))[0].losses[-1])
    fit = loss_law.Fit("multi_power", dict(TRUE), {}, 0.0, 0.0, 0, 0)
    paths = write_report(sweep, tmp_path / "report", fit=fit)
    assert paths["predicted"].exists()
    text = paths["report"].read_text()
    assert "## Measured against predicted (multi_power law)" in text
    for job, (predicted, measured) in truths.items():
        assert f"| {job} | {measured:.4f} | {predicted:.4f} | {predicted - measured:+.4f} |" in text


def test_the_smoothed_train_loss_of_step_s_is_the_loss_after_s_updates(tmp_path):
    fake_run(tmp_path / "run", SHORT + ["scheduler=cosine_warmup"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in records:  # train/loss of step s: a value that names s
        if "train/loss" in r:
            r["train/loss"] = 10.0 - 0.01 * r["step"]
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    curve, _ = lp.read_run(tmp_path / "run", target="train", smoothing=0.0, every=10)
    assert curve.steps.tolist() == list(range(0, 200, 10))
    assert curve.losses.tolist() == pytest.approx([10.0 - 0.01 * s for s in range(0, 200, 10)])


def test_the_printed_command_carries_the_evaluation_settings_and_survives_any_posix_shell(tmp_path):
    import shlex

    fake_run(tmp_path / "run", SHORT + ["scheduler=cosine_warmup", "trainer.progress=false", "data.cache_dir=/x"])
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"seed": 7, "trainer": {"eval_interval": 20, "eval_iters": 5, "max_steps": 200}}))
    base = lp.comparable_overrides(tmp_path / "run")
    assert base == ["trainer.max_steps=200", "scheduler=cosine_warmup", "trainer.eval_interval=20",
                    "trainer.eval_iters=5", "seed=7"]  # no folder, no progress bar, no cache folder
    overrides = lp.merge_overrides(base, ["scheduler=custom", "+scheduler.knots=[0,0.5,1.0]",
                                          "+scheduler.values=[1,0.5,0]", "data.name=my corpus"])
    command = lp.train_command(overrides)
    assert shlex.split(command) == ["python", "train.py", *overrides]
    assert "'+scheduler.knots=[0,0.5,1.0]'" in command  # zsh would glob an unquoted [...]
    assert "trainer.eval_interval=20" in command and "trainer.eval_iters=5" in command and "seed=7" in command


def test_paired_difference_gives_the_mean_and_its_95_percent_interval():
    optimized = {1337: 4.0, 1: 4.1, 2: 4.2, 5: 9.9}  # seed 5 has no cosine run: left out
    cosine = {1337: 4.1, 1: 4.1, 2: 4.4}
    diff = lp.paired_difference(optimized, cosine)
    assert diff.seeds == [1, 1337, 2] and diff.differences == pytest.approx([0.0, -0.1, -0.2])
    half = 4.302652729911275 * 0.1 / np.sqrt(3)  # t(0.975, 2 dof) x sd / sqrt(n)
    assert (diff.mean, diff.low, diff.high) == pytest.approx((-0.1, -0.1 - half, -0.1 + half))
    assert "within seed noise" in diff.line("optimized", "cosine")
    assert "beyond seed noise: optimized better" in lp.paired_difference({1: 4.0, 2: 4.1}, {1: 4.2, 2: 4.31}).line(
        "optimized", "cosine")
    with pytest.raises(UserError, match="at least 2 seeds"):
        lp.paired_difference({1: 4.0}, {1: 4.1, 2: 4.0})


def load_script():
    return predict_tool


@pytest.mark.slow
def test_optimize_on_a_poorly_identified_fit_warns_and_prints_no_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lp, "WSD_FRACTIONS", (0.2, 0.5))  # a small grid: the guard is what is tested here
    monkeypatch.setattr(lp, "WSD_FLOORS", (0.0, 0.1))
    monkeypatch.setattr(lp, "plot_curves", lambda *a, **k: [])  # the figure is tested elsewhere; it costs seconds
    covariance = np.diag([1e-6, 1e-6, 1e-6, 1e6, 1e-6, 1e-6, 1e-6]).tolist()  # B: +-1000x (in log B)
    fit = loss_law.Fit("multi_power", dict(TRUE), {}, 0, 0, 0, 0, procedure="bounded", unidentified=["B"],
                       covariance=covariance, runs=[{"label": "cos", "lr_min": 5e-4, "lr_max": 5e-3}])
    record = {**fit.to_dict(), "overrides": ["trainer.max_steps=100"],
              "run_overrides": ["trainer.max_steps=100", "trainer.eval_interval=10", "trainer.eval_iters=4"]}
    (tmp_path / "fit.json").write_text(json.dumps(record))
    script = load_script()
    assert script.main(["optimize", "fit.json", "-o", "best.json"]) == 0
    out = capsys.readouterr().out
    assert "warning: fit: the runs cannot identify B" in out and "run it with" not in out
    assert "no command printed" in out
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["command"] is None and best["warnings"] and best["predicted_band"] > 1.0
    # Asked for, the command comes, with the fitted run's evaluation settings.
    assert script.main(["optimize", "fit.json", "-o", "best.json", "--print-command"]) == 0
    out = capsys.readouterr().out
    command = out.split("run it with:\n")[1].splitlines()[0].strip()
    assert "trainer.eval_interval=10" in command and "trainer.eval_iters=4" in command
