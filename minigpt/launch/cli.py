"""The command line of `train`, as Hydra reads it: its flags and overrides, and the config folders
they name.

minigpt/launch/train.py reads the command line here (`read_command_line`: Hydra's own parser),
skips the precheck for the flags that only print (`runs_a_job`), and hands Hydra a command line it
reads as the user meant it (`flags_then_overrides`, `absolute_config_path`, `scope_schedule_keys`).
The precheck (minigpt/launch/precheck.py) composes the configs from the folders `config_dirs` names;
compose.py is the one composition. Outside minigpt/launch/ the package never sees Hydra.
"""

from __future__ import annotations

from pathlib import Path

from minigpt.errors import UserError
from minigpt.launch.compose import CONF_DIR


def read_command_line(argv: list[str]):
    """Hydra 1.3's command line, read by Hydra's own parser: --config-dir/-cd, --config-path/-cp,
    --config-name/-cn, --cfg, --resolve, --package, --info, --multirun/-m, --shell-completion,
    --help, --hydra-help, --version and the overrides. An unknown flag ends with argparse's usage
    line and exit status 2, as in any Hydra app. Flags may come between overrides
    (`a=1 -m b=2`); main() puts the overrides last before Hydra reads the command line again."""
    from hydra._internal.utils import get_args_parser  # what @hydra.main parses sys.argv with

    return get_args_parser().parse_intermixed_args(argv)


def flags_then_overrides(argv: list[str], overrides: list[str]) -> list[str]:
    """argv with the overrides moved after every flag: Hydra's own parser (argparse.parse_args)
    reads the overrides as one run of positionals only."""
    rest, pending = [], list(overrides)
    for a in argv:
        if pending and a == pending[0]:
            pending.pop(0)
        else:
            rest.append(a)
    return rest + scope_schedule_keys(list(overrides))


def absolute_config_path(argv: list[str], args) -> list[str]:
    """argv with a relative --config-path/-cp made absolute as config_dirs reads it (relative to
    the folder that holds conf/, where train.py is): Hydra would read it relative to the module
    that declares @hydra.main (minigpt/launch/)."""
    if args.config_path is None or Path(args.config_path).is_absolute():
        return list(argv)
    absolute = str((CONF_DIR.parent / args.config_path).resolve())
    out, argv = [], list(argv)
    while argv:
        a = argv.pop(0)
        if a in ("--config-path", "-cp") and argv:
            out += [a, absolute]
            argv.pop(0)
        elif a.startswith(("--config-path=", "-cp=")):
            out.append(f"{a.partition('=')[0]}={absolute}")
        else:
            out.append(a)
    return out


def runs_a_job(args) -> bool:
    """False for the flags that only print (--cfg, --info, help, completion): Hydra answers them."""
    return not (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
                or args.experimental_rerun)


def config_dirs(args) -> list[Path]:
    """Where configs are looked up, first match wins: --config-dir (prepended, as Hydra does),
    then the primary config folder (conf/, or --config-path relative to train.py)."""
    primary = CONF_DIR
    if args.config_path is not None:
        primary = Path(args.config_path) if Path(args.config_path).is_absolute() else CONF_DIR.parent / args.config_path
        if not primary.is_dir():
            raise UserError(f"--config-path: '{args.config_path}' is not a folder (looked for {primary.resolve()}); "
                            "give the folder of your config.yaml, absolute or relative to train.py")
    dirs = [primary.resolve()]
    if args.config_dir is not None:
        extra = Path(args.config_dir).resolve()
        if not extra.is_dir():
            raise UserError(f"--config-dir: '{args.config_dir}' is not a folder (looked for {extra}); give a folder "
                            "with config groups in it, e.g. my_confs/scheduler/mine.yaml")
        dirs.insert(0, extra)
    return dirs


def scope_schedule_keys(overrides: list[str]) -> list[str]:
    """`scheduler.<schedule>.<key>=v` (a key of one schedule only, docs/sweeps.md) as Hydra must
    be given it: `+scheduler.<schedule>.<key>=v` (no schedule's config holds the scope, so Hydra
    adds it; schedules.apply_scoped_keys reads it). Schedule parameters are flat, so any key two
    levels under `scheduler` is such a scope."""
    out = []
    for o in overrides:
        key = o.partition("=")[0]
        out.append(f"+{o}" if key.startswith("scheduler.") and key.count(".") >= 2 and "=" in o else o)
    return out
