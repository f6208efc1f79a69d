"""Every command in README.md and docs/*.md runs, so the documentation cannot drift from the code.

Commands are collected from ```bash blocks and from inline `python ...` spans. CPU commands run
for real in one shared working directory, in document order (a later command may use what an
earlier one wrote), shortened with a tiny model and few steps. Commands that need a GPU (or the
network) cannot run here: their overrides are composed and validated instead.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, tiny_overrides

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = {"python -m pytest"}  # the suite itself
GPU_MARKERS = ("trainer=gpu", "trainer.device=cuda", "torchrun", "data=hub", "--device cuda", "model=gpt2_small")
# Placeholders in the docs and what stands in for them here.
PLACEHOLDERS = {
    "outputs/cpu-cosine_warmup/<date>_<time>": lambda cwd: str(newest(cwd / "outputs" / "cpu-cosine_warmup")),
    "<corpus>": lambda cwd: "roneneldan/TinyStories",
}


def newest(folder: Path) -> Path:
    runs = sorted(p for p in folder.iterdir() if p.is_dir())
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
            elif fence in ("bash", "sh") and re.match(r"(python|torchrun)\b", stripped):
                found.append((doc.name, re.sub(r"\s+#.*$", "", stripped)))
        for span in re.findall(r"`((?:python|torchrun) [^`]+)`", "\n".join(prose)):
            found.append((doc.name, " ".join(span.split())))
    unique = []
    for item in found:
        if item[1] not in {c for _, c in unique} and item[1] not in NOT_RUN:
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
TINY_TOKENS_PER_STEP = 4 * 32  # micro-batch x context of conftest.tiny_overrides


def shorten(args: list[str], cache_dir) -> list[str]:
    """Tiny model and data; few steps unless the command's step numbers matter to it."""
    tiny = {k: v for k, v in tiny_overrides(cache_dir).items()
            if k not in ("scheduler.name", "trainer.max_steps", "trainer.eval_interval")}
    keys = {a.split("=", 1)[0] for a in args}
    extra = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in tiny.items()]
    extra.append("trainer.eval_interval=100")
    if "trainer.max_tokens" in keys:
        extra.append("trainer.max_tokens=3k")
    elif "trainer.max_steps" not in keys:
        # enough steps that lengths given in tokens or fractions stay inside the run
        tokens = [int(float(m) * 1000) for m in re.findall(r'([\d.]+)k tokens', " ".join(args))]
        extra.append(f"trainer.max_steps={max([20] + [t // TINY_TOKENS_PER_STEP + 10 for t in tokens])}")
    return args + extra


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs-commands")
    for name, text in documented_files().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_the_docs_have_commands():
    names = {c for _, c in COMMANDS}
    assert "python train.py" in names and any("scripts/plot_schedules.py" in c for c in names)
    assert len(COMMANDS) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("doc, command", COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_documented_command_runs(doc, command, workdir, cache_dir):
    for placeholder, value in PLACEHOLDERS.items():
        if placeholder in command:
            command = command.replace(placeholder, value(workdir))
    if "..." in command or any(m in command for m in GPU_MARKERS):
        return check_gpu_command(command)
    argv = shlex.split(command)
    assert argv[0] == "python", command
    script = ROOT / argv[1]
    assert script.is_file(), f"{doc}: {argv[1]} does not exist"
    args = argv[2:]
    if argv[1] == "train.py":
        args = shorten(args, cache_dir)
    (workdir / "docs" / "images").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true", PYTHONPATH=f"{ROOT}{os.pathsep}{workdir}")
    proc = subprocess.run([sys.executable, str(script), *args], cwd=workdir, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, f"{doc}: {command}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"


def check_gpu_command(command: str) -> None:
    """Compose and validate a GPU command's config (it cannot run on this machine)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from minigpt.config import config_from_dict

    argv = shlex.split(command)
    args = argv[argv.index("train.py") + 1:] if "train.py" in argv else []
    args = [a for a in args if a != "..." and "=" in a]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=args)
    config_from_dict(OmegaConf.to_container(cfg, resolve=True))
