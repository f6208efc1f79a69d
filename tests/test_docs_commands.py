"""Every command in README.md and docs/*.md is checked, so the documentation cannot drift from the code.

Commands are collected from ```bash blocks and from inline `python ...` and `minigpt ...` spans.
Every train.py (or `minigpt train`) command is checked in process as train.py checks it
(minigpt/launch/precheck.py: every sweep value composed and validated); commands that need a
GPU (or the network) are composed and type-checked instead. Every script a command names must
exist, and every `minigpt` tool it names. Then one command of each kind runs for real, shortened
with a tiny model and few steps: a single train.py run, a train.py sweep, each script or tool; each
is the first command of its kind, page by page, that runs on a CPU without the outputs of an
earlier command. (The pages' other commands differ from these only in overrides, which the
in-process check covers; one real run per page cost a minute of the suite for no new code path.)
Every test here is slow-marked: the fast part is for the code, these are for the docs.
"""

from __future__ import annotations

import functools
import math
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from helpers import ROOT, run_python
from minigpt.errors import UserError

pytestmark = pytest.mark.slow

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = {"python -m pytest"}  # the suite itself (with any options)
# Commands for a GPU, a cluster or the network: composed and validated, or (scripts) started with --help.
GPU_MARKERS = ("trainer=gpu", "trainer.device=cuda", "torchrun", "data=hub", "--device cuda", "model=gpt2_small",
               "hydra/launcher=slurm", "--preset gpt2_small", "-c \"model=gpu_small",
               "scripts/gpu_suite.py")  # the suite's CPU dry run is tests/test_gpu_suite.py's
# Scripts run shortened: later flags win over the documented ones.
# "{cache_dir}" stands for the session's token caches. bench.py on the tiny config: the default
# one would first train a BPE on the whole corpus (half of the test's time).
SCRIPT_SHORTEN = {"scripts/bench.py": ["--warmup", "1", "--steps", "2", "--repeats", "1", "+debug=tiny",
                                       "data.cache_dir={cache_dir}"],
                  "scripts/bench_sweep.py": ["--runs", "2", "--modes", "sequential,stacked", "--out", "bench_sweep",
                                             "data.cache_dir={cache_dir}"],
                  "minigpt sample": ["--max-new-tokens", "20"],
                  "scripts/bench_data.py": ["--sizes", "1", "--file-mb", "1", "--rounds", "1", "--max-chars", "100000",
                                            "--root", "bench-data", "--out", "bench_data.json"]}


def is_gpu_command(command: str) -> bool:
    if "scripts/bench_sweep.py" in command and "--tiny" not in command:
        return True  # its defaults are the GPU benchmark
    return "..." in command or any(m in command for m in GPU_MARKERS)
# Placeholders in the docs and what stands in for them here.
PLACEHOLDERS = {
    "outputs/cpu-cosine_warmup/<date>_<time>": lambda cwd: str(newest(cwd / "outputs" / "cpu-cosine_warmup")),
    "<corpus>": lambda cwd: "roneneldan/TinyStories",
    "<dataset>": lambda cwd: "roneneldan/TinyStories",
    "outputs/cpu-constant/<date>_<time>": lambda cwd: str(newest(cwd / "outputs" / "cpu-constant")),
    "<run dir>": lambda cwd: str(cwd / "outputs" / "run-a"),
}


def newest(folder: Path) -> Path:
    """The newest dated run or sweep directory in `folder` (named by Hydra's ${now:...})."""
    runs = sorted((p for p in folder.iterdir() if p.is_dir() and re.match(r"\d{4}-\d\d-\d\d_", p.name)),
                  key=lambda p: p.stat().st_mtime)
    assert runs, f"no run in {folder}: an earlier documented command should have made one"
    return runs[-1]


def documented_commands() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for doc in DOCS:
        prose, fence = [], None
        lines = doc.read_text().replace("\\\n", " ").splitlines()
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("```"):
                fence = None if fence is not None else (stripped[3:].strip() or "text")
                continue
            if fence is None:
                prose.append(line)
            elif fence in ("bash", "sh") and re.match(r"(python|torchrun|minigpt)\b", stripped):
                found.append((doc.name, re.sub(r"\s+#.*$", "", stripped)))
        for span in re.findall(r"`((?:python|torchrun|minigpt) [^`]+)`", "\n".join(prose)):
            found.append((doc.name, " ".join(span.split())))
    unique = []
    for item in found:
        if item[1] not in {c for _, c in unique} and not item[1].startswith(tuple(NOT_RUN)):
            unique.append(item)
    return unique


def documented_files() -> dict[str, str]:
    """```python blocks whose first line is a `# path.py` comment: files the docs ask users to write."""
    files = {}
    for doc in DOCS:
        for block in re.findall(r"^```python\n(.*?)^```", doc.read_text(), re.S | re.M):
            first = block.splitlines()[0].strip()
            if re.fullmatch(r"# [\w/]+\.py", first):
                files[first[2:]] = block
    return files


COMMANDS = documented_commands()
TINY_TOKENS_PER_STEP = 4 * 32  # micro-batch x context of conf/debug/tiny.yaml


MAX_STEPS = 40  # a documented run longer than this runs this many steps, its step intervals scaled alike


def shorten(args: list[str], cache_dir) -> list[str]:
    """+debug=tiny (conf/debug/tiny.yaml); more steps where lengths in tokens would not fit in its 20;
    a run of more than MAX_STEPS steps (trainer.max_steps=600) cut to MAX_STEPS, with its
    checkpoint interval scaled alike (unless a schedule length is in steps); a global batch
    (trainer.batch_size) in 4 micro-batches."""
    extra = ["+debug=tiny", f"data.cache_dir={cache_dir}"]
    given = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    keys = set(given)
    # A command that sets its evaluation interval wants a curve of val losses (a loss-law fit): dense, 40 steps.
    dense = "trainer.eval_interval" in keys
    steps = given.get("trainer.max_steps", "")
    if steps.isdigit() and int(steps) > MAX_STEPS and not any(k.startswith("scheduler.") and v.isdigit()
                                                               for k, v in given.items()):
        scaled = {"trainer.max_steps": MAX_STEPS}
        if given.get("trainer.ckpt_interval", "").isdigit() and int(given["trainer.ckpt_interval"]) > 0:
            scaled["trainer.ckpt_interval"] = max(1, round(int(given["trainer.ckpt_interval"]) * MAX_STEPS / int(steps)))
        args = [f"{a.split('=', 1)[0]}={scaled[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in scaled else a for a in args]
    batch = given.get("trainer.batch_size", "")
    if batch.isdigit() and int(batch) % 4 == 0 and "trainer.micro_batch_size" not in keys:
        extra.append(f"trainer.micro_batch_size={int(batch) // 4}")  # 4 micro-batches per update, not 16 of tiny's 4
    extra.append("trainer.eval_interval=2" if dense else "trainer.eval_interval=100")
    if "trainer.max_tokens" in keys:
        extra.append("trainer.max_tokens=3k")
    elif dense and "trainer.max_steps" not in keys:
        extra.append("trainer.max_steps=40")
    elif "trainer.max_steps" not in keys:
        tokens = [int(float(m) * 1000) for m in re.findall(r'([\d.]+)k tokens', " ".join(args))]
        extra.append(f"trainer.max_steps={max([20] + [t // TINY_TOKENS_PER_STEP + 10 for t in tokens])}")
    return args + extra


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs-commands")
    (folder / "corpus").mkdir()  # the docs' example of a corpus of your own (data.paths=[corpus/])
    (folder / "corpus" / "notes.txt").write_text("A few lines of text stand in for a corpus of your own.\n" * 50)
    for name, text in documented_files().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_the_docs_have_commands():
    names = {c for _, c in COMMANDS}
    assert "python train.py" in names and any(c.startswith("minigpt plot-schedules") for c in names)
    assert len(COMMANDS) >= 10


def program(argv: list[str]) -> tuple[str, list[str]]:
    """(what a command runs, its arguments): "train.py" for `python train.py` and `minigpt train`
    (one app), "minigpt <tool>" for the other tools (`python -m minigpt` is `minigpt`; "minigpt"
    alone lists them), else the script's path."""
    if argv[:3] == ["python", "-m", "minigpt"]:
        argv = ["minigpt", *argv[3:]]
    if argv[0] == "minigpt":
        if len(argv) == 1:
            return "minigpt", []
        if argv[1] == "train":
            return "train.py", argv[2:]
        return " ".join(argv[:2]), argv[2:]
    index = next(i for i, a in enumerate(argv) if a.endswith(".py"))
    return argv[index], argv[index + 1:]


def first_job_config(args: list[str]):
    """The config of a command's first job, composed once per command line (read it, do not change it)."""
    first = []  # a sweep composes like its first job
    for a in args:
        if a in ("-m", "--multirun") or "=" not in a or a.startswith("-"):
            continue
        values = sweep_values(a)
        if values:
            first.append(f"{a.split('=', 1)[0]}={values[0]}")
    return _first_job_config(tuple(first))


@functools.lru_cache(maxsize=None)
def _first_job_config(overrides: tuple[str, ...]):
    from minigpt.launch.compose import composed

    return composed(list(overrides))


def validate(args: list[str]) -> None:
    """Compose and type-check a command's config: what can be checked without running it."""
    from omegaconf import OmegaConf

    from minigpt.config import config_from_dict

    cfg = first_job_config(args)
    task = {k: v for k, v in cfg.items() if k != "hydra"}
    config_from_dict(OmegaConf.to_container(OmegaConf.create(task), resolve=True))


def sweep_values(override: str) -> list[str] | None:
    """The values a sweep override takes (None for searches such as Optuna's interval())."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([override])[0]
    if not parsed.is_sweep_override():
        return [parsed.get_value_element_as_str()]
    try:
        return list(parsed.sweep_string_iterator())
    except Exception:
        return None


def pin_sweep(args: list[str]) -> list[str]:
    """A grid of more than 4 jobs runs along its shortest swept axis only, at most 2 values of it
    (the other axes at their first value); a search runs 2 trials."""
    cfg = first_job_config(args)
    if "optuna" in str(cfg.hydra.sweeper.get("_target_", "")).lower():
        return args + ["hydra.sweeper.n_trials=2"]
    axes = {str(k): sweep_values(f"{k}={v}") for k, v in (cfg.hydra.sweeper.params or {}).items()}
    for a in args:
        if "=" in a and not a.startswith("-"):
            axes[a.split("=", 1)[0]] = sweep_values(a)
    axes = {k: v for k, v in axes.items() if v and len(v) > 1}
    if not axes or math.prod(len(v) for v in axes.values()) <= 4:
        return args
    keep = min(axes, key=lambda k: len(axes[k]))
    pinned = [a for a in args if a.split("=", 1)[0] not in axes]
    return pinned + [f"{k}={','.join(v[:2]) if k == keep else v[0]}" for k, v in axes.items()]


def resolve_placeholders(command: str, cwd: Path) -> str | None:
    """Put real paths in place of <...>; None when the thing named was never made here (a GPU sweep)."""
    for placeholder, value in PLACEHOLDERS.items():
        if placeholder in command:
            command = command.replace(placeholder, value(cwd))
    for folder in re.findall(r"(\S+)/<date>", command):
        if not (cwd / folder).is_dir():
            return None
        command = command.replace(f"{folder}/<date>", str(newest(cwd / folder)))
    return command


@pytest.mark.parametrize("doc, command", COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_documented_command_is_valid(doc, command, workdir, monkeypatch, schedule_registry_kept):
    from minigpt.__main__ import TOOLS
    from minigpt.launch.precheck import precheck

    script, _ = program(shlex.split(command))
    if script == "minigpt":
        return  # the listing of the tools: tests/test_tools.py
    if script.startswith("minigpt "):
        tool = script.split()[1]
        assert tool in TOOLS or tool in ("-h", "--help"), f"{doc}: `minigpt {tool}` is no tool ({', '.join(TOOLS)})"
        return  # tools: started for real below, one per page, or by their own tests
    assert (ROOT / script).is_file(), f"{doc}: {script} does not exist"
    if script != "train.py":
        return  # scripts: started for real below, one per page, or by their own tests
    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(workdir))  # modules the docs ask users to write (scheduler.module)
    # ... register their schedules on import: for this test only (schedule_registry_kept), not for the tests after it
    packages = {p.parent.name for p in workdir.glob("*/*.py")}
    for name in [m for m in sys.modules if m.split(".")[0] in packages]:
        monkeypatch.delitem(sys.modules, name)
    for placeholder in ("<corpus>", "<dataset>"):
        command = command.replace(placeholder, PLACEHOLDERS[placeholder](workdir))
    command = re.sub(r"<[^>]*>", "corpus", command)  # any other <...> in a train.py command: your files
    args = [a for a in program(shlex.split(command))[1] if a != "..."]
    if is_gpu_command(command) or re.search(r"trainer.resume=(?!auto)|trainer.init_from=", command):
        return validate(args)  # (a resume from, or weights of, a checkpoint that an earlier command would have written)
    try:
        precheck(args)  # raises UserError with the line train.py would print
    except UserError:
        if first_job_config(args).trainer.device == "cuda":  # a GPU command through its experiment: no CUDA here
            return validate(args)
        raise


READS_EARLIER_OUTPUT = ("trainer.resume", "trainer.init_from", "minigpt report", "minigpt plot-run", "minigpt sample",
                        "minigpt predict", "minigpt export-hf")


def runs_on_its_own(command: str) -> bool:
    """A CPU command that needs nothing an earlier command made (a run to read, placeholders)."""
    if "<" in command or " [" in command or is_gpu_command(command) or any(r in command for r in READS_EARLIER_OUTPUT):
        return False
    script, args = program(shlex.split(command))
    if script == "minigpt":  # the bare listing of the tools (exit status 2: nothing to run)
        return False
    return script != "train.py" or first_job_config(args).trainer.device != "cuda"


DOC_PAGES = sorted({d for d, _ in COMMANDS})


def page_command(doc: str) -> str | None:
    """The first command of a page that runs on its own (composed here, when a test asks,
    rather than at collection)."""
    return next((c for d, c in COMMANDS if d == doc and runs_on_its_own(c)), None)


def command_kind(command: str) -> tuple[str, bool]:
    """What a command exercises beyond its overrides: the program, and whether it is a sweep."""
    script, args = program(shlex.split(command))
    return script, "-m" in args or "--multirun" in args


def commands_that_run() -> dict[str, str]:
    """{page: command}: the first runnable command of each kind, pages in order."""
    chosen, kinds = {}, set()
    for doc in DOC_PAGES:
        command = page_command(doc)
        if command is not None and command_kind(command) not in kinds:
            kinds.add(command_kind(command))
            chosen[doc] = command
    return chosen


def test_every_page_has_a_command_that_runs():
    assert [d for d in DOC_PAGES if page_command(d) is None] == []


RUN_PAGES = ["README.md", "performance.md", "sweeps.md"]  # what commands_that_run() picks today


def test_one_command_of_each_kind_runs():
    assert list(commands_that_run()) == RUN_PAGES


@pytest.mark.parametrize("doc", RUN_PAGES)
def test_documented_command_runs(doc, workdir, cache_dir):
    command = commands_that_run()[doc]
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true", PYTHONPATH=f"{ROOT}{os.pathsep}{workdir}")
    (workdir / "docs" / "images").mkdir(parents=True, exist_ok=True)
    argv = shlex.split(command)
    script, args = program(argv)
    if script == "train.py":
        args = shorten(pin_sweep(args), cache_dir)
    else:
        args = args + [a.format(cache_dir=cache_dir) for a in SCRIPT_SHORTEN.get(script, [])]
    # `minigpt <tool> ...` runs as `python -m minigpt <tool> ...` (the console script is the same main()).
    if script.startswith("minigpt "):
        start = ["-m", *script.split()]
    elif script == "train.py" and "minigpt" in argv[:3]:
        start = ["-m", "minigpt", "train"]
    else:
        start = [ROOT / script]
    proc = run_python([*start, *args], cwd=workdir, timeout=600, env=env)
    assert proc.returncode == 0, f"{doc}: {command}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
