"""The tests are shaped like the code (docs/code_layout.md, "Tests"): each module of minigpt/ with
logic (a function or a class) has its own tests/test_<name>.py, or an entry in WITHOUT_OWN_FILE
below that says why not, so the gap cannot grow unnoticed. A module's own file is
test_<folder>_<name>.py (e.g. test_sweep_report.py), or test_<name>.py where no other module of
the package has that name; a package's __init__.py is named after its folder (test_tools.py)."""

import ast
import re
from collections import Counter
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "minigpt"
TESTS = ROOT / "tests"

PENDING_RUN = ("pending: minigpt/run/'s own test files, now that its typed state API (issue 24 item 3) has landed; "
               "tested today in")
WITHOUT_OWN_FILE = {
    "minigpt/__main__.py": "the `minigpt` command's dispatch over the tools: tests/test_tools.py",
    "minigpt/launch/compose.py": "not gathered into a file of its own yet; the one composition is tested in "
                                 "tests/test_hydra_flags.py, tests/test_sweeps.py, tests/test_config.py",
    "minigpt/launch/train.py": "the entry, run as a user runs it: tests/test_cli.py (train.py end to end), "
                               "tests/test_lr_path.py, tests/test_tools.py, tests/test_run_integrity.py",
    "minigpt/run/checkpoint.py": f"{PENDING_RUN} tests/test_resume.py, tests/test_run_integrity.py",
    "minigpt/run/folder.py": f"{PENDING_RUN} tests/test_run_integrity.py, tests/test_adversarial.py",
    "minigpt/run/metrics.py": f"{PENDING_RUN} tests/test_run_integrity.py, tests/test_wandb_env.py, tests/test_tensorboard.py",
    "minigpt/run/records.py": f"{PENDING_RUN} tests/test_gpu_paths.py, tests/test_host_sync.py",
    "minigpt/run/runtime.py": f"{PENDING_RUN} tests/test_gpu_paths.py, tests/test_trainer.py",
    "minigpt/run/stepper.py": f"{PENDING_RUN} tests/test_host_sync.py, tests/test_optim.py, tests/test_perf.py",
    "minigpt/run/state.py": ("dataclasses only (what a stepper is handed of a run): tests/test_trainer_api.py, "
                             "tests/test_optim.py, tests/test_stack.py"),
}


def modules_with_logic() -> list[Path]:
    """Every module of the package that defines a function or a class (not the bare __init__.py files)."""
    return [path for path in sorted(PACKAGE.rglob("*.py"))
            if any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                   for node in ast.parse(path.read_text()).body)]


def own_test_files(modules: list[Path]) -> dict[str, list[str]]:
    """module -> the names its own test file may have."""
    def name(path: Path) -> str:
        return path.parent.name if path.stem == "__init__" else path.stem

    def folder(path: Path) -> str:
        return (path.parent.parent if path.stem == "__init__" else path.parent).name

    count = Counter(name(path) for path in modules)
    return {str(path.relative_to(ROOT)): [f"test_{folder(path)}_{name(path)}.py"]
            + ([f"test_{name(path)}.py"] if count[name(path)] == 1 else []) for path in modules}


def test_the_file_names_follow_the_modules():
    files = own_test_files([PACKAGE / "plan.py", PACKAGE / "tools" / "__init__.py", PACKAGE / "tools" / "report.py",
                            PACKAGE / "studies" / "sweep" / "report.py", PACKAGE / "studies" / "sweep" / "arms.py"])
    assert files == {"minigpt/plan.py": ["test_minigpt_plan.py", "test_plan.py"],
                     "minigpt/tools/__init__.py": ["test_minigpt_tools.py", "test_tools.py"],
                     "minigpt/tools/report.py": ["test_tools_report.py"],  # two modules named report:
                     "minigpt/studies/sweep/report.py": ["test_sweep_report.py"],  # the folder says which
                     "minigpt/studies/sweep/arms.py": ["test_sweep_arms.py", "test_arms.py"]}


def test_every_module_with_logic_has_its_own_test_file_or_a_reason():
    without = {module: names for module, names in own_test_files(modules_with_logic()).items()
               if not any((TESTS / name).exists() for name in names)}
    unexplained = {module: names[-1] for module, names in without.items() if module not in WITHOUT_OWN_FILE}
    assert not unexplained, ("modules with logic and no test file of their own (write it, or add the module "
                             f"to WITHOUT_OWN_FILE in tests/test_layout.py with the reason): {unexplained}")
    stale = sorted(set(WITHOUT_OWN_FILE) - set(without))
    assert not stale, f"these have their own test file now, or are gone: take them out of WITHOUT_OWN_FILE: {stale}"


def test_the_files_a_reason_names_exist():
    named = {f for reason in WITHOUT_OWN_FILE.values() for f in re.findall(r"tests/test_\w+\.py", reason)}
    assert named and not [f for f in sorted(named) if not (ROOT / f).exists()]
