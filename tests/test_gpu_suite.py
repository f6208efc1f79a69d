"""The GPU suite (scripts/gpu_suite.py) and the docs updater (scripts/update_docs_from_results.py).

The suite's logic (budgets, carrying on past a failed stage, the JSON it writes) is tested in
process with stand-in commands; the CPU dry run, which executes every real stage with tiny
configs, runs once as a slow test so that nothing in the suite can crash on the GPU for a
reason a CPU would have shown."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


suite = load_script("gpu_suite")
docs = load_script("update_docs_from_results")


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# --- running stages --------------------------------------------------------------------------------


def test_a_failed_command_does_not_stop_the_stage_or_the_suite(tmp_path):
    marker = tmp_path / "second_ran"
    stages = [
        suite.Stage("first", 30, [suite.Command("boom", py("import sys; print('bad'); sys.exit(3)")),
                                  suite.Command("after", py(f"open({str(marker)!r}, 'w').write('x')"))]),
        suite.Stage("second", 30, [suite.Command("ok", py("print('fine')"), check=lambda: {"figure": 42})]),
    ]
    result = suite.run_suite(stages, tmp_path, 60, {"gpu": "test"}, env=None)
    assert result["stages"]["first"]["status"] == "failed"
    assert result["stages"]["second"]["status"] == "passed"
    assert marker.exists()  # the command after the failed one still ran
    first = json.loads((tmp_path / "first" / "stage.json").read_text())
    assert [c["status"] for c in first["commands"]] == ["failed", "passed"]
    assert first["commands"][0]["returncode"] == 3 and "bad" in first["commands"][0]["reason"]
    assert (tmp_path / "first" / "boom.log").read_text().strip() == "bad"
    second = json.loads((tmp_path / "second" / "stage.json").read_text())
    assert second["results"] == {"figure": 42}
    assert json.loads((tmp_path / "suite.json").read_text())["stages"]["second"]["status"] == "passed"


@pytest.mark.slow  # processes that sleep into their time limits
def test_a_stage_past_its_budget_is_killed_and_the_next_stage_runs(tmp_path):
    stages = [suite.Stage("slow", 1.5, [suite.Command("sleeper", py("import time; time.sleep(30)")),
                                        suite.Command("never", py("print(1)"))]),
              suite.Stage("next", 30, [suite.Command("ok", py("print(1)"))])]
    result = suite.run_suite(stages, tmp_path, 60, {"gpu": "test"}, env=None)
    slow = json.loads((tmp_path / "slow" / "stage.json").read_text())
    assert slow["status"] == "timeout"
    assert slow["commands"][0]["status"] == "timeout" and slow["commands"][0]["wall_s"] < 10
    assert slow["commands"][1]["status"] == "skipped"  # no time was left for it
    assert result["stages"]["next"]["status"] == "passed"


@pytest.mark.slow  # processes that sleep into their time limits
def test_time_reserved_for_a_later_command_is_kept_for_it(tmp_path):
    stage = suite.Stage("s", 3.0, [suite.Command("cells", py("import time; time.sleep(30)"), reserve_s=2.0),
                                   suite.Command("report", py("print('report')"))])
    out = suite.run_stage(stage, tmp_path, deadline=float("inf"), env=None)
    assert [c["status"] for c in out["commands"]] == ["timeout", "passed"]
    assert out["commands"][0]["wall_s"] < 2.5  # cut at the budget less the reserve


@pytest.mark.slow  # processes that sleep into their time limits
def test_the_suite_budget_caps_every_stage(tmp_path):
    stages = [suite.Stage("a", 100, [suite.Command("sleeper", py("import time; time.sleep(30)"))]),
              suite.Stage("b", 100, [suite.Command("late", py("print(1)"))])]
    result = suite.run_suite(stages, tmp_path, 1.5, {"gpu": "test"}, env=None)
    assert result["stages"]["a"]["status"] == "timeout"
    assert result["stages"]["b"]["status"] == "skipped"


def test_a_check_that_fails_fails_the_command(tmp_path):
    def check():
        raise AssertionError("loss was nan at step 3")

    stage = suite.Stage("s", 30, [suite.Command("run", py("print(1)"), check=check)])
    out = suite.run_stage(stage, tmp_path, deadline=float("inf"), env=None)
    assert out["status"] == "failed" and "loss was nan at step 3" in out["commands"][0]["reason"]


def test_checkpoints_are_dropped_after_a_stage(tmp_path):
    stage = suite.Stage("s", 30, [suite.Command(
        "writes", py(f"import pathlib; p = pathlib.Path({str(tmp_path)!r}) / 's' / 'run' / 'checkpoints'; "
                     "p.mkdir(parents=True); (p / 'step_0000010.pt').write_bytes(b'x' * 1000)"))])
    out = suite.run_stage(stage, tmp_path, deadline=float("inf"), env=None)
    assert out["checkpoints_removed"] == 1
    assert not list((tmp_path / "s").rglob("*.pt"))


def test_check_run_rejects_non_finite_losses_and_missing_steps(tmp_path):
    run = tmp_path / "run_bf16"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "completed", "final_val_loss": 5.0}))
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"step": i, "train/loss": v})
                                                 for i, v in enumerate([6.0, 5.5, float("nan")])))
    with pytest.raises(AssertionError, match="non-finite loss at steps \\[2\\]"):
        suite.check_run(run, 3)()
    with pytest.raises(AssertionError, match="2 step records, expected 3"):
        (run / "metrics.jsonl").write_text('{"step": 0, "train/loss": 6.0}\n{"step": 1, "train/loss": 5.0}\n')
        suite.check_run(run, 3)()


def test_budgets_parse_and_refuse_bad_values():
    assert suite.parse_budgets("smoke=10,warmup=400")["smoke"] == 10.0
    for bad, words in [("smok=1", "unknown stage 'smok'"), ("bench=x", "needs seconds"), ("sweep=0", "positive")]:
        with pytest.raises(SystemExit, match=words):
            suite.parse_budgets(bad)


def test_the_real_stages_cover_every_promised_measurement(tmp_path):
    stages = suite.build_stages(tmp_path, tmp_path / "data", dry_run=False, budgets=suite.DEFAULT_BUDGETS)
    assert [s.name for s in stages] == ["smoke", "bench", "sweep", "warmup"]
    assert sum(s.budget_s for s in stages) <= 20 * 60
    text = {s.name: [" ".join(c.argv) for c in s.commands] for s in stages}
    assert any("-m gpu" in c for c in text["smoke"])
    pytest_gpu = next(c for c in stages[0].commands if c.name == "pytest_gpu").argv
    holders = [p for p in (ROOT / "tests").glob("test_*.py") if re.search(r"^@pytest\.mark\.gpu\b", p.read_text(), re.M)]
    assert holders and all(str(p) in pytest_gpu for p in holders)  # every file with a gpu test, and only those
    assert len([a for a in pytest_gpu if a.endswith(".py")]) == len(holders)
    runs = [c for c in text["smoke"] if "train.py" in c]
    assert len(runs) == 2 and all("trainer.sync_debug=error" in c and "trainer.compile=true" in c for c in runs)
    assert {c.split("trainer.precision=")[1].split()[0] for c in runs} == {"bf16", "fp16"}
    bench = " ".join(text["bench"])
    assert "--preset gpt2_small " in bench and "trainer.micro_batch_size=16" in bench
    assert "--compare-logging" in bench and "--preset gpt2_small_fp16" in bench
    assert "--runs 8" in text["sweep"][0] and "--tiny" not in text["sweep"][0]
    cells = [c for c in text["warmup"] if "train.py" in c]
    assert len(cells) == 2 and all("sweep=warmup_divergence " in c and "seed=1,2,3" in c for c in cells)
    assert "-m minigpt report" in text["warmup"][-1] and "--warmup-study" in text["warmup"][-1]
    # every run's token caches go outside the results folder, which must stay small
    assert all(f"data.cache_dir={tmp_path / 'data'}" in c for cmds in text.values() for c in cmds
               if "train.py" in c or "bench" in c)


def test_a_results_folder_is_never_overwritten(tmp_path):
    (tmp_path / "suite.json").write_text("{}")
    assert suite.main(["--dry-run", "--out", str(tmp_path)]) == 2


# --- writing results into the docs -----------------------------------------------------------------

H100 = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu128", "cuda": "12.8", "date_utc": "2026-12-01T10:00:00Z",
        "dry_run": False}


def bench_row(overrides, precision, mb, tok_s, overhead=None):
    row = {"overrides": overrides, "device": H100["gpu"], "precision": precision, "micro_batch_size": mb,
           "tokens_per_s": tok_s, "ms_per_step": mb * 1024 / tok_s * 1000, "mfu": 0.41, "peak_memory_mb": 30123.4,
           "compile_s": 41.2}
    if overhead is not None:
        row |= {"logging_overhead_pct": overhead, "ms_per_step_logging_off": 50.0, "record_host_ms_per_step": 0.21}
    return row


def write_results(folder: Path, bench_status="passed", machine=H100):
    folder.mkdir(parents=True, exist_ok=True)
    stages = {"smoke": "passed", "bench": bench_status, "sweep": "passed"}
    (folder / "suite.json").write_text(json.dumps({"machine": machine, "stages": {
        k: {"status": v, "wall_s": 10, "budget_s": 100} for k, v in stages.items()}}))
    bench = {"stage": "bench", "status": bench_status, "wall_s": 300, "commands": [
        {"name": "bench_bf16", "status": "passed"},
        {"name": "bench_fp16", "status": bench_status, "reason": None if bench_status == "passed" else "exit 1: OOM"}],
        "results": {"bf16": [bench_row(["model=gpt2_small"], "bf16", 32, 612_345.6, overhead=0.42),
                             bench_row(["model=gpt2_small", "trainer.micro_batch_size=16"], "bf16", 16, 533_000.0,
                                       overhead=0.77)]}}
    (folder / "bench").mkdir(exist_ok=True)
    (folder / "bench" / "stage.json").write_text(json.dumps(bench))
    sweep = {"stage": "sweep", "status": "passed", "wall_s": 200, "commands": [], "results": {"bench_sweep": {
        "runs": 8, "overrides": ["model=gpu_tiny", "trainer=gpu"], "results": {
            "sequential": {"wall_s": 400.0, "speedup_vs_sequential": 1.0, "max_val_loss_diff_vs_sequential": 0.0},
            "stacked": {"wall_s": 80.0, "speedup_vs_sequential": 5.0, "max_val_loss_diff_vs_sequential": 0.00001}}}}}
    (folder / "sweep").mkdir(exist_ok=True)
    (folder / "sweep" / "stage.json").write_text(json.dumps(sweep))
    smoke = {"stage": "smoke", "status": "passed", "wall_s": 120, "commands": [
        {"name": "pytest_gpu", "status": "passed"}, {"name": "run_bf16", "status": "passed"}]}
    (folder / "smoke").mkdir(exist_ok=True)
    (folder / "smoke" / "stage.json").write_text(json.dumps(smoke))


PAGE = """# Speed

<!-- gpu-results:bench -->
not measured: no GPU was available
<!-- /gpu-results:bench -->

text between

<!-- gpu-results:logging -->
not measured
<!-- /gpu-results:logging -->

<!-- gpu-results:sweep -->
not measured
<!-- /gpu-results:sweep -->

<!-- gpu-results:warmup -->
not measured
<!-- /gpu-results:warmup -->
"""


def test_docs_blocks_are_filled_from_the_results_with_the_gpu_named(tmp_path):
    write_results(tmp_path / "res")
    page = tmp_path / "perf.md"
    page.write_text(PAGE)
    assert docs.main([str(tmp_path / "res"), "--docs", str(page)]) == 0
    text = page.read_text()
    assert "612,346" in text and "533,000" in text and "41.0%" in text  # tokens/s and MFU of both rows
    assert "NVIDIA H100 80GB HBM3, torch 2.11.0+cu128, CUDA 12.8" in text
    assert "612,346 tokens/s with records on, meets the target of 575,000" in text
    assert "+0.77%" in text and "is under the target of 1%" in text  # the worst of the two overheads
    assert "5.00x" in text and "meets the target of 4x" in text
    assert "the suite's `warmup` stage did not run" in text  # no figure where nothing ran
    assert "text between" in text and "no GPU was available" not in text
    # running it again changes nothing, and --check agrees
    assert docs.main([str(tmp_path / "res"), "--docs", str(page), "--check"]) == 0


def test_a_failed_stage_is_reported_not_filled_in(tmp_path):
    write_results(tmp_path / "res", bench_status="failed")
    page = tmp_path / "perf.md"
    page.write_text(PAGE)
    docs.main([str(tmp_path / "res"), "--docs", str(page)])
    assert "Not every configuration ran: the `bench` stage failed" in page.read_text()
    assert "bench_fp16: failed (exit 1: OOM)" in page.read_text()


def test_check_mode_changes_nothing_and_says_so(tmp_path):
    write_results(tmp_path / "res")
    page = tmp_path / "perf.md"
    page.write_text(PAGE)
    assert docs.main([str(tmp_path / "res"), "--docs", str(page), "--check"]) == 1
    assert page.read_text() == PAGE


def test_dry_run_results_are_refused_as_gpu_figures(tmp_path, capsys):
    write_results(tmp_path / "res", machine={**H100, "gpu": None, "dry_run": True})
    page = tmp_path / "perf.md"
    page.write_text(PAGE)
    assert docs.main([str(tmp_path / "res"), "--docs", str(page)]) == 2
    assert "CPU dry run" in capsys.readouterr().err and page.read_text() == PAGE


def test_the_shipped_docs_hold_every_block_the_updater_fills():
    names = {m["name"] for page in docs.DOCS for m in docs.BLOCK.finditer(page.read_text())}
    assert names == set(docs.RENDER)


# --- the CPU rehearsal of the whole suite -----------------------------------------------------------


@pytest.mark.slow
def test_dry_run_executes_every_stage_on_the_cpu(tmp_path):
    out = tmp_path / "suite"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_suite.py"), "--dry-run", "--out", str(out),
                           "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=600)
    result = json.loads((out / "suite.json").read_text())
    assert list(result["stages"]) == ["smoke", "bench", "sweep", "warmup"]
    failed = {k: json.loads((out / k / "stage.json").read_text())["commands"]
              for k, v in result["stages"].items() if v["status"] != "passed"}
    assert not failed and proc.returncode == 0, (failed, proc.stdout[-2000:])
    smoke = json.loads((out / "smoke" / "stage.json").read_text())["results"]
    assert set(smoke) == {"run_bf16", "run_fp32"}
    assert not list(out.rglob("*.pt"))
    # a dry run's figures never reach the docs
    assert docs.main([str(out), "--docs", str(ROOT / "README.md"), "--check"]) == 2


# --- trainer.sync_debug: the check the smoke runs rely on ------------------------------------------


def test_sync_debug_covers_updates_after_the_warm_up_and_restores_the_mode(monkeypatch):
    import torch

    from minigpt.run.runtime import SYNC_DEBUG_AFTER, Distributed, Runtime

    modes = ["default"]
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: modes[-1])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    seen = []
    rt = Runtime(Distributed(), torch.device("cuda"), "bf16", "error")
    for _ in range(SYNC_DEBUG_AFTER + 2):
        with rt.sync_checked():
            seen.append(modes[-1])
    assert seen == ["default"] * SYNC_DEBUG_AFTER + ["error", "error"]
    assert modes[-1] == "default"  # restored after each update
    with pytest.raises(RuntimeError):  # restored when the step raises, too
        with rt.sync_checked():
            raise RuntimeError("called a synchronizing CUDA operation")
    assert modes[-1] == "default"
    for off in (Runtime(Distributed(), torch.device("cuda"), "bf16", None),
                Runtime(Distributed(), torch.device("cpu"), "fp32", "error")):
        before = len(modes)
        for _ in range(SYNC_DEBUG_AFTER + 2):
            with off.sync_checked():
                pass
        assert len(modes) == before  # off, or on a CPU: never touched
