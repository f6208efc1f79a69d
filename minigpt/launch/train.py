"""The `train` command: `python train.py ...` and `minigpt train ...` both run `main()` here.

The only @hydra.main of the package: it reads the command line (minigpt/launch/cli.py), checks it
(minigpt/launch/precheck.py: bad input ends here with one line and exit status 2, before any
directory is created), lets Hydra compose the config folder (compose.CONF_DIR: conf/ of a checkout,
or the copy an install carries as package data) into one config, types it (minigpt/config.py) and
hands each job to jobs.run_job, which trains it. A job returns the final validation loss (inf for
a run that diverged or failed) so that Hydra sweepers can minimise it. Jobs of
hydra/launcher=stacked come back in the list `main()` gives the app (`hydra_app`), and are trained
together once Hydra has set them all up. Exit statuses: minigpt/launch/jobs.py. The module is
named `train` so that Hydra names the job `train` (train.log in the run folder), as it did when
this code lived in train.py.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import signal
import sys


def _ignore_stop_signals() -> None:
    """The very end of the exit: after the last exit handler, Python puts the stop signals back to
    their default action, so one more Ctrl-C there would kill the process by the signal instead of
    letting it end with its own status. Ignored from here on; the process is ending anyway."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


# Registered before any import can register one: exit handlers run last-registered first, so
# this one runs last.
atexit.register(_ignore_stop_signals)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from minigpt.launch import cli, jobs  # noqa: E402
from minigpt.launch.compose import CONF_DIR  # noqa: E402
from minigpt.launch.precheck import precheck  # noqa: E402
from minigpt.config import config_from_dict  # noqa: E402
from minigpt.errors import Stopped, UserError  # noqa: E402

# The signals that stop a run. During training the trainer turns them into a stop at the next
# step boundary (with a checkpoint); outside it they end the process at once, with one line.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)  # as the trainer's


def run_hydra_job(cfg: DictConfig, stacked: list[jobs.StackedJob]) -> float | None:
    """One job of Hydra's: its composed config typed and run (jobs.run_job); a stacked job is
    appended to `stacked` instead."""
    # The LR of step t, from here: config.py types the composed config; plan.py (RunPlan, built
    # from it by the trainer) holds the run's plan, lr_at(t), and apply(), the one writer of an LR
    # into the optimizer; schedules.py holds the multiplier. docs/code_layout.md follows it.
    hc = HydraConfig.get()
    try:
        config = config_from_dict(OmegaConf.to_container(cfg, resolve=True))
    except UserError as e:
        return jobs.bad_input(e, hc)
    return jobs.run_job(config, hc, stacked)


def hydra_app(stacked: list[jobs.StackedJob]):
    """The Hydra app (it reads sys.argv, composes, runs every job): its jobs of hydra/launcher=stacked
    are appended to `stacked`, for the caller to train once the app returns. Called with a config,
    the app runs that one job (Hydra's decorator hands a given config straight to the task)."""

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def task(cfg: DictConfig) -> float | None:  # Hydra names the job after this module: `train`
        return run_hydra_job(cfg, stacked)

    return task


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def _exit_now(signum, frame):
    """A signal while the process is already ending (Python's exit clean-up included): end it at
    once with the signal's status, without a second message or a traceback."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(128 + signum)


@contextlib.contextmanager
def hydra_mode_known(checked: bool, mode):
    """Hydra composes the whole config one extra time before a run or a sweep only to read
    `hydra.mode` (Hydra.get_mode: about a quarter of a second of every start); the precheck has
    just composed the same command line and read it (the extras it adds set no mode). While the
    app runs, Hydra is handed that value; without a precheck (`checked` false), Hydra reads it."""
    if not checked:
        yield
        return
    from hydra._internal.hydra import Hydra

    own = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: mode
    try:
        yield
    finally:
        Hydra.get_mode = own


def main() -> None:
    """Train as the command line (sys.argv) says: Hydra's flags and overrides."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stopped)
    try:
        argv = sys.argv[1:]
        os.environ[jobs.COMMAND_ENV] = shlex.join(argv)  # a stopped sweep's resume command (job processes inherit it)
        args = cli.read_command_line(argv)
        extras, mode = [], None
        checked = cli.runs_a_job(args)
        if checked:
            try:
                extras, mode = precheck(argv)
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
        sys.argv = [sys.argv[0], *cli.flags_then_overrides(cli.absolute_config_path(argv, args), args.overrides), *extras]
        stacked: list[jobs.StackedJob] = []
        with hydra_mode_known(checked, mode):
            hydra_app(stacked)()
        if stacked:
            jobs.train_stacked_jobs(stacked)
    except Stopped as e:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _exit_now)
        name = signal.Signals(e.signum).name
        print(f"stopped by {name} outside training (during start-up or after the run ended); this stop saved no "
              "checkpoint: run the command again, with trainer.resume=auto to continue an earlier checkpoint",
              file=sys.stderr)
        sys.exit(128 + e.signum)
    finally:  # however main ends, a further signal during the exit clean-up ends the process quietly
        for sig in STOP_SIGNALS:
            signal.signal(sig, _exit_now)


if __name__ == "__main__":
    main()
