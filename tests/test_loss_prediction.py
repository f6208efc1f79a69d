"""minigpt/studies/loss_prediction.py: loss prediction on minigpt runs: reading runs (also resumed
ones), planning a config's LRs, searching schedules. `minigpt predict` is in test_predict.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from helpers import SHORT, TRUE, fake_run
from minigpt.launch.compose import compose
from minigpt.studies import loss_law
from minigpt.studies import loss_prediction as lp
from minigpt.errors import UserError
from minigpt.run.trainer import train


# minigpt.studies.lr_table registers "table" when imported: each test here leaves the registry as it was
pytestmark = pytest.mark.usefixtures("table_schedule_stays_here")


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
    base = ["trainer.max_steps=300", "scheduler.warmup=0.1"]
    search = lp.search_wsd(fit, compose, base)
    overrides, loss = search.overrides, search.predicted
    # a 10% warmup leaves room for cooldowns up to 90% of the run: 0.95 is skipped
    assert search.candidates == len(lp.WSD_SHAPES) * (len(lp.WSD_FRACTIONS) - 1) * len(lp.WSD_FLOORS)
    # The overrides run what was searched, with base's 10% warmup (WSD's own default is 20%), also
    # where choosing the scheduler drops base's scheduler.* keys, as the study and `optimize` do.
    for runs in (compose(base + overrides), compose(lp.merge_overrides(base, overrides))):
        assert runs.scheduler["warmup"] == 0.1
        assert loss == pytest.approx(lp.final_loss(fit, lp.planned_lrs(runs)), abs=1e-12)
    # Each setting on an edge of the grid is said, and only those.
    best = dict(o.removeprefix("scheduler.").split("=") for o in overrides[1:])
    assert best["warmup"] == "0.1"
    assert len(search.edges) == sum([float(best["decay"]) in (0.05, 0.9),
                                     float(best["min_lr_ratio"]) in (lp.WSD_FLOORS[0], lp.WSD_FLOORS[-1])])
    for edge in search.edges:  # each note names the setting and its value
        name, _, rest = edge.partition("=")
        assert float(rest.split(" ")[0]) == float(best[name])
    # It beats every schedule in the family we try by hand, and cosine.
    for other in (["scheduler=wsd"], ["scheduler=wsd", "scheduler.decay=0.5", "scheduler.decay_shape=linear"],
                  ["scheduler=cosine_warmup"]):
        assert loss <= lp.final_loss(fit, lp.planned_lrs(compose(base + other)))


@pytest.mark.slow
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
    # no folder, no progress bar, no cache folder; a run from before trainer.eval_seed read the
    # validation windows of its own seed, so the new run must too
    assert base == ["trainer.max_steps=200", "scheduler=cosine_warmup", "trainer.eval_interval=20",
                    "trainer.eval_iters=5", "seed=7", "trainer.eval_seed=null"]
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"seed": 7, "trainer": {"eval_interval": 20, "eval_iters": 5, "eval_seed": 42, "max_steps": 200}}))
    assert lp.comparable_overrides(tmp_path / "run")[-1] == "trainer.eval_seed=42"
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


