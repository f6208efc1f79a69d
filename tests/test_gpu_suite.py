"""The GPU suite (scripts/gpu_suite.py) and the docs updater (scripts/update_docs_from_results.py).

The suite's logic (budgets, carrying on past a failed stage, the JSON it writes) is tested in
process with stand-in commands; the CPU dry run, which executes every real stage with tiny
configs, runs once as a slow test so that nothing in the suite can crash on the GPU for a
reason a CPU would have shown."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]


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
    budget = {s.name: s.budget_s for s in stages}
    # two commands (smoke + bench, sweep + warmup) of at most 9 minutes with the preflight (at most
    # 2 minutes, usually seconds) and the archives
    assert budget["smoke"] + budget["bench"] <= 450 and budget["sweep"] + budget["warmup"] <= 450
    text = {s.name: [" ".join(c.argv) for c in s.commands] for s in stages}
    assert any("-m gpu" in c for c in text["smoke"])
    pytest_gpu = next(c for c in stages[0].commands if c.name == "pytest_gpu").argv
    holders = [p for p in (ROOT / "tests").glob("test_*.py") if re.search(r"^@pytest\.mark\.gpu\b", p.read_text(), re.M)]
    assert holders and all(str(p) in pytest_gpu for p in holders)  # every file with a gpu test, and only those
    assert len([a for a in pytest_gpu if a.endswith(".py")]) == len(holders)
    runs = [c for c in text["smoke"] if "train.py" in c]
    assert len(runs) == 2 and all("trainer.sync_debug=error" in c and "trainer.compile=true" in c for c in runs)
    assert {c.split("trainer.precision=")[1].split()[0] for c in runs} == {"bf16", "fp16"}
    # bench: one command per row, in order of importance, each writing its own JSON
    assert [c.name for c in stages[1].commands] == ["bench_bf16", "bench_fp16", "bench_bf16_mb16"]
    assert "--preset gpt2_small " in text["bench"][0] and "--compare-logging" in text["bench"][0]
    assert "micro_batch_size" not in text["bench"][0]  # the preset's 32: the target's configuration
    assert "--preset gpt2_small_fp16" in text["bench"][1]
    assert text["bench"][2].endswith("trainer.micro_batch_size=16")
    assert "--runs 8" in text["sweep"][0] and "--tiny" not in text["sweep"][0]
    assert "--modes stacked,sequential,parallel" in text["sweep"][0]
    # warmup: one (no warmup, warmup) pair per command, the architectures taking turns seed by seed
    cells = [c for c in stages[3].commands if c.paired == "warmup"]
    assert [c.name for c in cells] == [f"warmup_{a}_s{s}" for s in (1, 2, 3) for a in ("pre_ln", "post_ln")]
    for c in cells:
        line = " ".join(c.argv)
        assert "experiment=warmup_divergence" in line and line.count("scheduler.warmup=0,") == 1
    assert "-m minigpt report" in text["warmup"][-1] and "--warmup-study" in text["warmup"][-1]
    # every run's token caches go outside the results folder, which must stay small
    assert all(f"data.cache_dir={tmp_path / 'data'}" in c for cmds in text.values() for c in cmds
               if "train.py" in c or "bench" in c)


@pytest.fixture
def an_h100(monkeypatch):
    """The precheck on the CPU as it runs on an H100: CUDA visible, compute capability 9.0."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    h100 = SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: h100)  # the model-size check


def train_args(argv: list[str]) -> list[str]:
    """A train.py command's arguments (after the interpreter and the script)."""
    return argv[argv.index(str(ROOT / "train.py")) + 1:]


@pytest.mark.slow  # about twenty compositions and prechecks: tens of seconds
def test_the_gpu_commands_compose_and_pass_the_precheck(tmp_path, an_h100):
    """The suite's real commands (not the dry run's shrunk ones) through Hydra and the precheck:
    the smoke runs, each warmup pair (2 jobs, 3 seeds per architecture), bench's presets (the
    GPT-2 vocabulary) and bench_sweep's GPU modes with both launchers."""
    from helpers import composed
    from minigpt.launch.precheck import precheck

    stages = {s.name: s for s in suite.build_stages(tmp_path / "out", tmp_path / "data", dry_run=False,
                                                     budgets=suite.DEFAULT_BUDGETS)}
    for cmd in stages["smoke"].commands[1:]:
        precheck(train_args(cmd.argv))
    jobs = {"pre_ln": 0, "post_ln": 0}
    for cmd in (c for c in stages["warmup"].commands if c.paired):
        args = train_args(cmd.argv)
        precheck(args)  # every value of the sweep
        arch = next(a.split("=")[1] for a in args if a.startswith("arch="))
        jobs[arch] += math.prod(len(a.split("=", 1)[1].split(",")) for a in args if "," in a and "=" in a)
    assert jobs == {"pre_ln": 6, "post_ln": 6}
    bench = load_script("bench")
    for preset in ("gpt2_small", "gpt2_small_fp16"):
        cfg = composed(*bench.PRESETS[preset])
        assert cfg["data"]["vocab_size"] == 50257 and cfg["model"]["n_layer"] == 12
        precheck([*bench.PRESETS[preset], f"hydra.run.dir={tmp_path}/{preset}"])
    sweep = load_script("bench_sweep")
    train = [sys.executable, str(ROOT / "train.py")]
    common = sweep.GPU + ["trainer.progress=false", f"data.cache_dir={tmp_path / 'data'}"]
    for mode in ("stacked", "parallel", "sequential"):
        for cmd in sweep.mode_commands(mode, train, common, sweep.lrs(8), tmp_path / "sweep" / mode):
            precheck(train_args(cmd))


def test_a_results_folder_is_never_overwritten(tmp_path):
    (tmp_path / "suite.json").write_text("{}")
    assert suite.main(["--dry-run", "--out", str(tmp_path)]) == 2


def test_a_pair_that_would_not_fit_is_not_started(tmp_path):
    """After a pair took 25 s, a pair is skipped when fewer seconds are left; the report still runs."""
    stage = suite.Stage("warmup", 20, [
        suite.Command("pair1", py("print(1)"), paired="warmup"),
        suite.Command("pair2", py("print(2)"), paired="warmup"),
        suite.Command("report", py("print(3)"))])
    original = suite.run_command

    def slow_first(cmd, timeout_s, log, env):
        rec = original(cmd, timeout_s, log, env)
        return rec | {"wall_s": 25.0} if cmd.name == "pair1" else rec

    suite.run_command = slow_first
    try:
        out = suite.run_stage(stage, tmp_path, float("inf"), None)
    finally:
        suite.run_command = original
    assert [c["status"] for c in out["commands"]] == ["passed", "skipped", "passed"]
    assert "the last pair took 25 s" in out["commands"][1]["reason"]


def test_a_cut_command_keeps_what_it_wrote(tmp_path):
    """bench.py writes each row when measured: a command that fails after the first row still
    brings it back in the stage's results."""
    rows = tmp_path / "rows.json"
    code = f"import json, sys; open({str(rows)!r}, 'w').write(json.dumps({{'results': [{{'tokens_per_s': 1.0}}]}})); sys.exit(1)"
    stage = suite.Stage("bench", 30, [suite.Command("bench_bf16", py(code), suite.check_bench(rows))])
    out = suite.run_stage(stage, tmp_path, float("inf"), None)
    assert out["status"] == "failed" and out["results"] == {"rows": [{"tokens_per_s": 1.0}]}


def test_warmup_results_keep_complete_pairs_only(tmp_path):
    sweep = tmp_path / "sweep"
    for pair, jobs in {"pre_ln_s1": 2, "post_ln_s1": 2, "pre_ln_s2": 1}.items():
        for j in range(jobs):
            d = sweep / pair / f"{j}_scheduler.warmup={j}"
            d.mkdir(parents=True)
            (d / "summary.json").write_text(json.dumps({"status": "completed", "final_val_loss": 4.0 + j,
                                                        "peak_lr": 1e-2}))
    res = suite.check_warmup(sweep)()
    assert res["pairs"] == 2 and res["incomplete_pairs"] == ["pre_ln_s2"]
    assert sorted(c["job"] for c in res["cells"]) == sorted(f"{p}/{j}_scheduler.warmup={j}" for p in
                                                            ("pre_ln_s1", "post_ln_s1") for j in (0, 1))


def test_suite_json_and_the_archive_are_written_after_every_stage(tmp_path):
    out, back = tmp_path / "out", tmp_path / "back"
    out.mkdir()
    stages = [suite.Stage("a", 30, [suite.Command("one", py("print(1)"))]),
              suite.Stage("b", 30, [suite.Command("two", py(
                  f"import json; print(json.load(open({str(back / 'suite.json')!r}))['not_run'])"))])]
    result = suite.run_suite(stages, out, 60, {"gpu": "test"}, env=None, bring_back=back)
    seen = (out / "b" / "two.log").read_text().strip()
    assert seen == "['b']"  # while b ran, the archive already held a's results
    assert result["stages"]["b"]["status"] == "passed" and result["not_run"] == []
    import tarfile

    with tarfile.open(back / "results.tar.gz") as tar:
        names = tar.getnames()
    assert "out/suite.json" in names and "out/a/stage.json" in names and "out/b/two.log" in names


def test_the_preflight_refuses_in_one_line_without_a_compiler(monkeypatch):
    monkeypatch.setattr(suite.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    problem = suite.preflight("cuda", env=None)
    assert problem.startswith("no C compiler (cc, gcc or clang) on PATH") and "\n" not in problem


def test_the_preflight_reports_a_compile_failure_in_one_line(monkeypatch):
    monkeypatch.setattr(suite, "PREFLIGHT", "raise SystemExit('InductorError: CppCompileError: Python.h missing')")
    problem = suite.preflight("cpu", env=None)
    assert problem == "inductor cannot compile here: InductorError: CppCompileError: Python.h missing"


def test_bench_sweep_writes_its_figures_after_each_mode(tmp_path):
    sweep = load_script("bench_sweep")
    done = {"stacked": {"wall_s": 10.0, "final_val_loss": [4.0, 4.1], "device": "cuda"}}
    sweep.write_report(tmp_path, 2, ["model=gpu_tiny"], ["1e-3", "8e-3"], done, {}, "2.13")
    first = json.loads((tmp_path / "bench.json").read_text())
    assert list(first["results"]) == ["stacked"] and "speedup_vs_sequential" not in first["results"]["stacked"]
    done["sequential"] = {"wall_s": 40.0, "final_val_loss": [4.0, 4.1001], "device": "cuda"}
    sweep.write_report(tmp_path, 2, ["model=gpu_tiny"], ["1e-3", "8e-3"], done, {"parallel": "exit 1"}, "2.13")
    second = json.loads((tmp_path / "bench.json").read_text())
    assert second["results"]["stacked"]["speedup_vs_sequential"] == 4.0 and second["failed"] == {"parallel": "exit 1"}


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


def test_the_two_commands_folders_are_read_together(tmp_path):
    write_results(tmp_path / "a")
    part2 = tmp_path / "b"
    write_results(part2)
    suite_b = json.loads((part2 / "suite.json").read_text())
    suite_b["stages"] = {"sweep": suite_b["stages"]["sweep"]}  # part 2 ran the sweep only
    (part2 / "suite.json").write_text(json.dumps(suite_b))
    suite_a = json.loads((tmp_path / "a" / "suite.json").read_text())
    del suite_a["stages"]["sweep"]
    (tmp_path / "a" / "suite.json").write_text(json.dumps(suite_a))
    page = tmp_path / "perf.md"
    page.write_text(PAGE)
    assert docs.main([str(tmp_path / "a"), str(part2), "--docs", str(page)]) == 0
    assert "612,346" in page.read_text() and "5.00x" in page.read_text()
    other = json.loads((part2 / "suite.json").read_text())
    other["machine"] = {**H100, "gpu": "NVIDIA A100-SXM4-40GB"}
    (part2 / "suite.json").write_text(json.dumps(other))
    assert docs.main([str(tmp_path / "a"), str(part2), "--docs", str(page)]) == 2


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
def test_dry_run_executes_every_stage_on_the_cpu(tmp_path, cache_dir):
    out = tmp_path / "suite"
    # --no-preflight: inductor's compile check costs a minute cold on this CPU (tests/test_gpu_paths.py
    # compiles with inductor once; the preflight's refusals are tested below). The session's token
    # cache: the dry run's data settings are the tests' tiny ones, so the cache is built once.
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_suite.py"), "--dry-run", "--out", str(out),
                           "--data-dir", str(cache_dir), "--no-preflight", "--bring-back", str(tmp_path / "back")],
                          capture_output=True, text=True, timeout=1200)
    result = json.loads((out / "suite.json").read_text())
    assert list(result["stages"]) == ["smoke", "bench", "sweep", "warmup"]
    failed = {k: json.loads((out / k / "stage.json").read_text())["commands"]
              for k, v in result["stages"].items() if v["status"] != "passed"}
    assert not failed and proc.returncode == 0, (failed, proc.stdout[-2000:])
    smoke = json.loads((out / "smoke" / "stage.json").read_text())["results"]
    assert set(smoke) == {"run_bf16"}
    assert not list(out.rglob("*.pt"))
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == ["results.tar.gz", "suite.json"]
    assert "[suite " in proc.stdout and " s left] warmup / warmup_pre_ln_s1" in proc.stdout  # progress lines
    warm = json.loads((out / "warmup" / "stage.json").read_text())["results"]
    assert warm["pairs"] == 2 and warm["incomplete_pairs"] == []
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
