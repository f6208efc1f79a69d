"""Slurm via submitit: a preempted or timed-out job requeues itself and continues from its
checkpoint (submitit's checkpoint/requeue protocol), tested with submitit's local executor and a
simulated SIGUSR2."""

import json

import pytest

from helpers import ROOT, hydra_args, run_train

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


@pytest.mark.slow
def test_a_preempted_submitit_job_requeues_and_continues_from_its_checkpoint(cache_dir, tmp_path):
    sweep, marker = tmp_path / "sweep", tmp_path / "signal_sent"
    args = [a for a in hydra_args(cache_dir, None, **{"trainer.max_steps": 24, "trainer.eval_interval": 8})
            if not a.startswith("hydra.run.dir=")]
    args += ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}",
             "seed=7", "+hydra.callbacks.sig._target_=signal_probe.SignalOnce", f"+hydra.callbacks.sig.marker={marker}",
             "+hydra.callbacks.sig.after=6"]
    proc = run_train(args, env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.exists()  # the first attempt was signalled
    (job,) = [p for p in sweep.iterdir() if p.is_dir() and p.name.startswith("0_")]
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 24
    assert summary["resumed_from"] and "step_" in summary["resumed_from"]  # the second attempt resumed
    resumed_at = int(summary["resumed_from"].rsplit("step_", 1)[1].split(".")[0])
    assert 6 <= resumed_at < 24
    steps = [json.loads(line)["step"] for line in (job / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in json.loads(line)]
    assert steps == list(range(24))  # every step once: the records after the checkpoint were dropped
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*") if p.suffix in (".out", ".err"))
    assert "Requeued job" in logs and "SIGUSR2" in logs
