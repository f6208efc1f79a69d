"""`minigpt report` (minigpt/tools/report.py) and minigpt/studies/sweep/:
the sweep table, the study tables and the LR sensitivity."""

import json
import math
import re
import subprocess
import sys

import pytest
import yaml

from conftest import run_train, tiny_overrides
from minigpt.errors import UserError
from minigpt.studies.sweep.jobs import find_jobs
from minigpt.studies.sweep.report import write_report
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


def test_sweep_table_lists_every_job_and_names_the_best(synthetic_sweep):
    paths = write_report(synthetic_sweep, synthetic_sweep / "out")
    text = paths["report"].read_text()
    rows = _table_rows(text, "tokens/s")
    assert len(rows) == 10
    assert "**Best job: 7**" in text and rows[7][0] == "7 **best**"
    assert rows[2][2].startswith("diverged at step 57: loss above 6")
    assert rows[8][2] == "failed: RuntimeError: CUDA error: out of memory"
    assert rows[9][2] == "incomplete"
    # only the overrides that vary are shown per row; the shared one is listed once
    assert rows[0][1] == "optim.lr=0.01 scheduler.warmup=0 seed=1"
    assert "`trainer.max_steps=100`" in text and "`arch=pre_ln`" in text
    for name in ("loss.png", "lr.png", "study_lr.png", "study_early.png"):
        assert (synthetic_sweep / "out" / name).stat().st_size > 5000, name


def test_not_a_study_without_an_lr_x_warmup_grid(tmp_path):
    root = tmp_path / "sweep"
    for i, lr in enumerate((0.01, 0.1)):
        write_job(root, i, lr=lr, warmup=0.2, seed=1, final=3.0 + i, train=[6.0, 5.0])
    assert build_study(find_jobs(root)) is None
    text = write_report(root)["report"].read_text()
    assert "Warmup-divergence study" not in text and "**Best job: 0**" in text
    assert (root / "report" / "loss.png").exists() and not (root / "report" / "study_lr.png").exists()


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
    best = min((s["final_val_loss"], n) for n, s in summaries.items() if s["status"] == "completed")
    assert f"**Best job: {best[1]}**" in text
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
