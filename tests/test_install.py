"""An install that is not editable works outside the checkout: every package folder and the
configs ship in the wheel, and the installed `minigpt` command trains from any folder."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from helpers import ROOT


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    folders = {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in (ROOT / "minigpt").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert folders <= listed, f"not in pyproject's packages: {sorted(folders - listed)}"
    assert {"minigpt", "minigpt.tools", "minigpt.studies.sweep"} <= folders  # the walk found the folders
    assert listed - folders == {"minigpt.conf"}  # conf/, shipped as package data


def test_every_config_file_is_package_data():
    """pyproject's globs for minigpt.conf reach every YAML file under conf/, however deep."""
    setuptools = pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"]["minigpt.conf"] == "conf"
    globs = setuptools["package-data"]["minigpt.conf"]
    conf = ROOT / "conf"
    files = {p for p in conf.rglob("*") if p.is_file()}
    shipped = {p for g in globs for p in conf.glob(g)}
    assert files and files == shipped, sorted(str(p.relative_to(conf)) for p in files - shipped)


def outer_site_packages() -> list[str]:
    """Where this interpreter finds torch, Hydra and the rest (a venv's own site-packages, which a
    new venv's --system-site-packages does not reach)."""
    return [p for p in site.getsitepackages() if Path(p).is_dir()]


@pytest.mark.slow  # pip installs the package and trains through the installed command (its own processes)
def test_pip_install_into_a_fresh_venv_trains_from_any_folder(tmp_path, cache_dir):
    """`pip install .` (not editable), without the network: the dependencies are this environment's."""
    # Installed from a copy of the sources, so the build writes nothing into the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in ("minigpt", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    venv_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    # torch and the other dependencies come from this environment, after the venv's own packages.
    (Path(venv_site) / "outer_env.pth").write_text("\n".join(outer_site_packages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-build-isolation", str(src)], check=True, capture_output=True, timeout=300)

    elsewhere = tmp_path / "elsewhere"  # not the checkout, and the checkout not on the path
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    minigpt = str(venv / "bin" / "minigpt")

    where = subprocess.run([python, "-c", "import minigpt; print(minigpt.__file__)"], cwd=elsewhere, env=env,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(venv_site), where
    out = subprocess.run([minigpt, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert all(tool in out.stdout for tool in ("train", "report", "plot-run", "plot-schedules", "predict", "sample"))

    run = subprocess.run([minigpt, "train", "+debug=tiny", "trainer.max_steps=2", "hydra.run.dir=run",
                          f"data.cache_dir={cache_dir}"], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads((elsewhere / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 2
    assert (elsewhere / "run" / "train.log").is_file()  # Hydra names the job `train`, as python train.py does
    # The configs came from the installed package data (Hydra records where it found them).
    sources = yaml.safe_load((elsewhere / "run" / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["config_sources"]
    main = next(s for s in sources if s["provider"] == "main")
    assert main["path"] == f"{venv_site}/minigpt/conf", sources
