"""`minigpt predict` (minigpt/tools/predict.py): its verbs from the command line, its bad input, the optimize guard."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import SHORT, TRUE, fake_run, run_python
from minigpt.studies import loss_law
from minigpt.studies import loss_prediction as lp
from minigpt.tools import predict as predict_tool

# minigpt.studies.lr_table registers "table" when imported: each test here leaves the registry as it was
pytestmark = pytest.mark.usefixtures("table_schedule_stays_here")


def run_script(*args, cwd):
    return run_python(["-m", "minigpt", "predict", *args], cwd=cwd, timeout=300)


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


def load_script():
    return predict_tool


@pytest.mark.slow
def test_fit_predict_optimize_from_the_command_line(tmp_path):
    constant_lrs = fake_run(tmp_path / "constant", SHORT + ["scheduler=constant_warmup"], seed=1)
    fake_run(tmp_path / "cosine", SHORT + ["scheduler=cosine_warmup"], seed=2)
    wsd_lrs = fake_run(tmp_path / "wsd", SHORT + ["scheduler=wsd"], seed=3)
    fit = run_script("fit", tmp_path / "constant", tmp_path / "cosine", "--law", "multi_power", "-o", "fit.json",
                     "--restarts", "4", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    record = json.loads((tmp_path / "fit.json").read_text())
    assert record["rmse"] < 0.01 and (tmp_path / "fit.png").exists()
    # Each fitted run's end: the fit's prediction there minus the loss the run recorded at its last step.
    ends = record["end_errors"]
    assert [(e["label"], e["step"]) for e in ends] == [("constant", 200), ("cosine", 200)]
    last = [json.loads(line) for line in (tmp_path / "constant" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 200 and len(constant_lrs) == 200
    mine = loss_law.Fit.from_dict(record).predict(constant_lrs, [200])[0] - last["val/loss"]
    assert ends[0]["error"] == pytest.approx(mine, abs=1e-12) and abs(ends[0]["error"]) < 0.02
    assert f"constant {ends[0]['error']:+.4f}, cosine {ends[1]['error']:+.4f}" in fit.stdout
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
