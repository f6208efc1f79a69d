"""The precheck: the command line composed and validated before Hydra starts anything.

minigpt/launch/train.py calls `precheck(argv)` before Hydra runs: every value a sweep would try is
composed (minigpt/launch/compose.py, the one composition) and checked by `check_job`, the checks of
one job's config (typed config, run plan, device and precision, the model's size, the data, the
run folder, trainer.resume and trainer.init_from), each through the same function the trainer
calls when the job runs; a grid sweep's job folders are named as Hydra will name them and checked
too. Bad input ends here with one line (a UserError: exit status 2) before any directory is
created or any earlier result touched. When every check has passed, the run folders are claimed
for their jobs (minigpt/launch/jobs.py, claim_run_folders).
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import NamedTuple

from omegaconf import DictConfig, OmegaConf

from minigpt import schedules
from minigpt.config import Config, config_from_dict
from minigpt.errors import UserError
from minigpt.launch.cli import config_dirs, read_command_line, scope_schedule_keys
from minigpt.launch.compose import composed, first_line, group_options, hydra_search_path
from minigpt.launch.jobs import claim_run_folders


class Checked(NamedTuple):
    """What the precheck found that Hydra needs: overrides for Hydra's own settings to add to the
    command line (job directory names of a sweep, the run directory shared by the ranks of a
    torchrun launch), and the composed config's `hydra.mode` (a RunMode or None), which Hydra
    would otherwise compose the whole config once more to read (Hydra.get_mode)."""

    extras: list[str]
    mode: object


def precheck(argv: list[str]) -> Checked:
    """Compose and validate the config of every value a sweep would try; raise UserError.

    ``argv`` is the command line (Hydra's flags and overrides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from minigpt.run.folder import release_early_claims

    release_early_claims()  # a new command line: an earlier one's claims (tests, tools) are not its
    args = read_command_line(argv)
    overrides = scope_schedule_keys(list(args.overrides))
    conf_dirs = config_dirs(args)
    config_name = args.config_name or "config"
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except HydraException as e:
        raise UserError(f"cannot read the command line: {first_line(e)}; write overrides as key=value") from None

    # Each sweep value is checked once, with every other override at its first value.
    first = []
    variants = []
    for i, o in enumerate(parsed):
        key = o.get_key_element()
        if o.is_sweep_override():
            try:
                values = list(o.sweep_string_iterator())
            except Exception:  # interval() and other searches: checked by the sweeper itself
                continue
            first.append(f"{key}={values[0]}")
            variants.extend((i, f"{key}={v}") for v in values[1:])
        else:
            first.append(o.input_line)
    candidates = [first] + [first[:i] + [v] + first[i + 1:] for i, v in variants if i < len(first)]

    with hydra_search_path(conf_dirs):
        base = None
        while candidates:
            ovr = candidates.pop(0)
            _check_groups(ovr, conf_dirs)
            try:
                cfg = composed(ovr, conf_dirs, config_name=config_name)
            except UserError as e:
                raise UserError(_name_the_schedule(str(e), ovr, parsed)) from None
            mode = OmegaConf.select(cfg, "hydra.mode")  # a RunMode; MULTIRUN when a sweep file sets it
            config = check_job(cfg, multirun=args.multirun or getattr(mode, "name", None) == "MULTIRUN")
            if OmegaConf.select(cfg, "hydra.runtime.choices")["hydra/launcher"] == "stacked":
                _check_stackable(cfg, config)
            if base is None:  # a sweep file's grid (hydra.sweeper.params): each value once, too
                base = cfg
                candidates += [ovr + [v] for v in _sweep_file_values(cfg, parser, {o.get_key_element() for o in parsed})]
    job_dirs, full_names = _check_sweep_folders(args, parsed, base, parser)
    extras = _hydra_extras(args, parsed, base, parser, full_names)
    claim_run_folders(args, base, job_dirs, extras)
    return Checked(extras, OmegaConf.select(base, "hydra.mode"))


def _sweep_file_values(cfg: DictConfig, parser, on_command_line: set[str]) -> list[str]:
    """`key=value` for each value of each sweep-file parameter the command line does not set."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    out = []
    for key, value in params.items():
        if key in on_command_line:
            continue
        try:
            override = parser.parse_override(f"{key}={value}")
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [str(value)]
        except Exception:  # interval() and other searches: checked by the sweeper itself
            continue
        out += [f"{key}={v}" for v in values]
    return out


def _hydra_extras(args, parsed, cfg: DictConfig, parser, full_names: bool = False) -> list[str]:
    argv = args.overrides
    extras = []
    mode = OmegaConf.select(cfg, "hydra.mode")  # a RunMode; MULTIRUN when a sweep file sets it
    multirun = args.multirun or getattr(mode, "name", None) == "MULTIRUN"
    if multirun and not any(a.startswith("hydra.job.config.override_dirname") for a in argv):
        # Name each job's directory after what varies between jobs only: the overrides every job
        # shares would make names long (past the 255-byte limit of a file name) and alike. In a
        # sweep folder that holds another command's jobs, by all of its overrides (full_names).
        exclude = _job_name_excludes(parsed, cfg, full_names)
        extras.append("hydra.job.config.override_dirname.exclude_keys=[" + ",".join(f"'{k}'" for k in exclude) + "]")
    if not multirun and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not any(a.startswith("hydra.run.dir=") for a in argv):
        # Every rank composes its own config: a time-stamped run directory could differ by a
        # second between them. torchrun gives all ranks one run id (a fresh one with --standalone).
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if run_id == "none":
            raise UserError("hydra.run.dir: under torchrun without --standalone or --rdzv-id the ranks cannot agree "
                            "on a time-stamped run directory; pass hydra.run.dir=outputs/<name> (the same for every rank)")
        extras.append(f"hydra.run.dir=outputs/${{run_name}}/torchrun-{run_id[:8]}")
    return extras


def _job_name_excludes(parsed, cfg: DictConfig, full_names: bool = False) -> list[str]:
    """The keys left out of a sweep job's folder name: Hydra's list plus the overrides that every
    job shares (what varies between jobs names them); with full_names, Hydra's list only."""
    if full_names:
        return list(OmegaConf.select(cfg, "hydra.job.config.override_dirname.exclude_keys") or [])
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    swept |= set(OmegaConf.select(cfg, "hydra.sweeper.params") or {})
    shared = [o.key_or_group for o in parsed if not o.is_hydra_override() and o.get_key_element() not in swept]
    return list(dict.fromkeys(list(OmegaConf.select(cfg, "hydra.job.config.override_dirname.exclude_keys") or []) + shared))


def _check_sweep_folders(args, parsed, cfg: DictConfig, parser,
                         full_names: bool = False) -> tuple[list[Path], bool]:
    """Each job folder of a grid sweep that already holds another run, or that a live process
    writes into, is refused before Hydra writes anything (it would rewrite that folder's .hydra/
    before the trainer could refuse it), and so are two jobs that would write into one folder.
    The folders are named as Hydra's basic sweeper and the launchers name them: job number (the
    order of the grid) and the job's overrides. Returns them (empty when they cannot be known
    before the jobs run: a search, a time-stamped folder), and whether they are named in full:

    A second command into the same sweep folder (`scheduler=wsd scheduler.decay=0.3 seed=1,2`
    after `scheduler=cosine_warmup seed=1,2`) would name its jobs as the first did (`0_seed=1`:
    what varies between its own jobs). When a job's folder holds a run of other overrides (its
    .hydra/overrides.yaml), this command's jobs are named by all their overrides instead
    (`0_scheduler.decay=0.3,scheduler=wsd,seed=1`), so both commands' jobs share the folder
    (full_names: the names to give Hydra, _hydra_extras)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.config_loader_impl import get_overrides_dirname

    from minigpt.run.folder import RunFolderInUse, check_run_folder, lock_holder, run_contents

    mode = OmegaConf.select(cfg, "hydra.mode")
    if not (args.multirun or getattr(mode, "name", None) == "MULTIRUN"):
        return [], full_names
    try:
        sweep_dir = Path(str(OmegaConf.select(cfg, "hydra.sweep.dir")))
    except Exception:  # ${now:...}: a new folder
        return [], full_names
    tc = cfg.trainer
    if not str(OmegaConf.select(cfg, "hydra.sweeper._target_")).endswith("BasicSweeper"):
        if not sweep_dir.is_dir():
            return [], full_names
        # A search names its trials as it goes (number and sampled values), so any run already in
        # the folder could be one of them: it gets a folder of its own.
        taken = sorted(d.name for d in sweep_dir.iterdir() if d.is_dir() and run_contents(d))
        if taken and tc.resume is None and not tc.overwrite:
            raise UserError(f"hydra.sweep.dir: '{sweep_dir}' already holds runs ({', '.join(taken[:3])}"
                            f"{', ...' if len(taken) > 3 else ''}), and a search names its trials as it goes, so "
                            "one could land in a folder that holds a run; give the search a new hydra.sweep.dir")
        return [], full_names
    params = [f"{k}={v}" for k, v in (OmegaConf.select(cfg, "hydra.sweeper.params") or {}).items()]
    task = [o.input_line for o in parsed if not o.is_hydra_override()]
    try:
        jobs = BasicSweeper.split_arguments(parser.parse_overrides(params + task), None)[0]
    except Exception:  # a sweep the basic sweeper cannot expand fails in Hydra, with its message
        return [], full_names
    naming = cfg.hydra.job.config.override_dirname
    excludes = _job_name_excludes(parsed, cfg, full_names)
    named_by_user = any(a.startswith("hydra.job.config.override_dirname") for a in args.overrides)
    if named_by_user:
        excludes = list(naming.exclude_keys)
    hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(cfg.hydra, resolve=False)})
    named: dict[Path, str] = {}  # each job's folder, resolved -> the job that writes into it
    for num, job in enumerate(jobs):
        job_overrides = parser.parse_overrides(job)
        values = {o.key_or_group: o.get_value_element_as_str() for o in job_overrides}
        hydra_cfg.hydra.job.num = num
        hydra_cfg.hydra.job.override_dirname = get_overrides_dirname(
            job_overrides, excludes, naming.item_sep, naming.kv_sep)
        try:
            job_dir = sweep_dir / str(OmegaConf.select(hydra_cfg, "hydra.sweep.subdir"))
        except Exception:  # a subdir pattern that needs the job's run time: the trainer checks it
            return [], full_names
        if not full_names and not named_by_user and run_contents(job_dir) and \
                _another_commands_job(job_dir, job_overrides, list(naming.exclude_keys)):
            print(f"sweep: '{sweep_dir}' holds jobs of another command ('{job_dir.name}' ran other overrides); this "
                  "command's jobs are named by all their overrides", file=sys.stderr)
            return _check_sweep_folders(args, parsed, cfg, parser, full_names=True)
        resume = values.get("trainer.resume", tc.resume)
        resume = None if resume in (None, "null") else str(resume)
        overwrite = str(values.get("trainer.overwrite", tc.overwrite)).lower() == "true"
        varying = [o.input_line for o in job_overrides if o.key_or_group not in excludes]
        job_name = f"job {num} of this sweep ({' '.join(varying) or 'no overrides'})"
        other = named.setdefault(job_dir.resolve(), job_name)
        if other != job_name:  # the second would rewrite the first one's .hydra/ and mix their records
            raise UserError(f"hydra.sweep.dir: {job_name} and {other} would both write into '{job_dir}'; give each "
                            "job a folder of its own (hydra.sweep.subdir must differ between jobs, e.g. include "
                            "${hydra.job.num})")
        holder = lock_holder(job_dir)
        if holder:
            raise UserError(f"hydra.sweep.dir: {job_name} would write into '{job_dir}', which another process is "
                            f"writing into ({holder}); wait for it to end, or pick another hydra.sweep.dir")
        try:
            check_run_folder(job_dir, resume, overwrite)
        except RunFolderInUse as e:
            if overwrite:  # the job's folder holds more than its run: overwrite would move that too
                raise UserError(f"hydra.sweep.dir: {job_name}: {str(e).removeprefix('hydra.run.dir: ')}") from None
            raise UserError(f"hydra.sweep.dir: {job_name} would write into '{job_dir}', which already holds a run "
                            f"({', '.join(run_contents(job_dir))}); continue the sweep's runs with trainer.resume=auto, "
                            "replace them with trainer.overwrite=true, or pick another hydra.sweep.dir") from None
    return list(named), full_names


def _another_commands_job(job_dir: Path, job_overrides, ignored: list[str]) -> bool:
    """Whether the run in `job_dir` ran other overrides than this job (paths, trainer.resume and
    the other keys Hydra leaves out of names aside): then it is another command's job, not this one
    run before."""
    recorded = job_dir / ".hydra" / "overrides.yaml"
    if not recorded.is_file():
        return False
    try:
        theirs = OmegaConf.to_container(OmegaConf.load(recorded))
    except Exception:
        return False
    from hydra.core.override_parser.overrides_parser import OverridesParser

    def kept(lines) -> set[str]:
        out = set()
        for o in OverridesParser.create().parse_overrides(list(lines)):
            if not o.is_hydra_override() and o.key_or_group not in ignored:
                out.add(f"{o.key_or_group}={o.get_value_element_as_str()}")
        return out

    try:
        return kept(theirs) != kept(o.input_line for o in job_overrides)
    except Exception:
        return False


def _check_groups(overrides: list[str], conf_dirs: list[Path]) -> None:
    """An unknown option of a config group: one line with the valid ones and the closest."""
    for o in overrides:
        key, _, value = o.partition("=")
        group = key.lstrip("+~")
        if group.startswith("hydra") or value in ("null", ""):
            continue
        options = group_options(group, conf_dirs)
        if options and value not in options:
            close = difflib.get_close_matches(value, options, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown {group} '{value}'{hint}; valid: {', '.join(options)}")


def _name_the_schedule(message: str, ovr: list[str], parsed) -> str:
    """An unknown `scheduler.<key>` in a sweep over several schedules: say which schedule (and so
    which jobs) lack it, which have it, and how to give it to those only."""
    swept = [o for o in parsed if o.key_or_group == "scheduler" and o.is_sweep_override()]
    if not message.startswith("unknown config key 'scheduler.") or not swept:
        return message
    key = message.split("'")[1].removeprefix("scheduler.")
    current = next((o.partition("=")[2] for o in ovr if o.startswith("scheduler=")), None)
    if current is None or "." in key:
        return message
    try:
        names = list(swept[0].sweep_string_iterator())
    except Exception:
        return message
    having = [n for n in names if n in schedules.list_schedules() and key in schedules.config_defaults(n)]
    valid = message.rpartition("valid keys under scheduler: ")[2]
    value = next((o.partition("=")[2] for o in ovr if o.lstrip("+").startswith(f"scheduler.{key}=")), "<value>")
    scoped = " ".join(f"scheduler.{n}.{key}={value}" for n in having) or f"scheduler.<schedule>.{key}={value}"
    return (f"scheduler.{key}: the jobs with scheduler={current} cannot take it: schedule {current} has no key '{key}'"
            f"{' (' + ', '.join(having) + ' has it)' if having else ''}; give it to the schedules that have it only "
            f"with {scoped} (docs/sweeps.md); {current}'s keys: {valid}")


def check_job(cfg: DictConfig, multirun: bool = False) -> Config:
    """The checks of one job's composed config (`cfg`, with its `hydra` node), before any run; its
    typed config. Each check is the function the trainer calls when the job runs (config_from_dict,
    RunPlan.build, the runtime's checks, the run folder's, find_resume and check_resume_step,
    find_init_weights), so a job that passes here is refused by the trainer only for what changed
    in between or what needs the data (an epoch's length, the tokenizer)."""
    from minigpt.plan import RunPlan

    task = {k: v for k, v in cfg.items() if k != "hydra"}
    config = config_from_dict(OmegaConf.to_container(OmegaConf.create(task), resolve=True))
    tc = config.trainer
    total = None
    if tc.epochs is None:  # with epochs, the length is known only once the data is
        total = RunPlan.build(config, int(os.environ.get("WORLD_SIZE", "1"))).total_steps
    if config.logger.wandb:  # a bad WANDB_MODE in the environment is refused here, before the run
        from minigpt.run.metrics import wandb_settings

        wandb_settings(config.logger, Path("."), config.run_name)
    if config.logger.tensorboard:
        from minigpt.run.metrics import check_tensorboard

        check_tensorboard()
    if config.data.source == "files":
        for p in config.data.paths:
            if not Path(p).expanduser().exists():
                raise UserError(f"data.paths: '{p}' does not exist (looked in {Path.cwd()}); give an existing file or folder")
    run_dir = None
    for key in ("run.dir", "sweep.dir"):
        try:
            out = OmegaConf.select(cfg.hydra, key)
        except Exception:  # ${now:...} needs Hydra's runtime; the run will resolve it
            continue
        if out is None or not str(out).strip():
            raise UserError(f"hydra.{key} is empty, which would write the run into the working directory; "
                            f"give a folder, e.g. hydra.{key}=outputs/my-run")
        _check_writable(Path(str(out)), f"hydra.{key}")
        if key == "run.dir":
            run_dir = Path(str(out))
            _check_writable(run_dir / "checkpoints", "hydra.run.dir")
    check_cache_dir(config.data)
    if run_dir is not None and not multirun and int(os.environ.get("RANK", "0")) == 0:
        _check_run_folder(run_dir, tc)

    # Only now torch (seconds to import): the mistakes above are reported without waiting for it.
    import torch

    from minigpt.run.runtime import check_compile_backend, check_cuda, check_sync_debug, resolve_precision

    check_cuda(tc.device)
    device = torch.device("cuda" if tc.device != "cpu" and torch.cuda.is_available() else "cpu")
    from minigpt.optim import check_precision

    precision = resolve_precision(tc.precision, device, say=lambda msg: None)
    check_precision(config.optim, precision)
    check_sync_debug(config, precision)
    check_compile_backend(tc)
    check_model_fits(config, device)
    found = _check_resume(cfg, config, total) if tc.resume is not None else None
    if tc.init_from is not None:
        _check_init_from(config, None if multirun else run_dir, None if multirun else found)
    if config.data.source == "hub":  # offline without a token cache: one line now, not retries later
        from minigpt.data.cache import check_hub_data

        check_hub_data(config.data)
    return config


# --- issue 28: sizes the config accepts but no machine can hold ---------------------------------


def model_bytes(config) -> int:
    """Bytes a run of this model needs at least: fp32 weights, gradients and AdamW's two moments
    (16 bytes a parameter), before any activation. Parameters: 12 d^2 per block (attention 4 d^2,
    MLP 8 d^2) and the token and position embeddings (the output layer is the token embedding)."""
    mc = config.model
    vocab = 257 if config.data.tokenizer == "byte" else config.data.vocab_size
    params = 12 * mc.n_layer * mc.n_embd ** 2 + (vocab + mc.block_size) * mc.n_embd
    return 16 * params


def check_model_fits(config, device) -> None:
    """A model whose weights and optimizer state alone exceed the device's memory is refused in
    one line here; it used to pass the precheck (model.n_layer=1e9) and end in an allocation
    failure's traceback, or the OOM killer, when the trainer built it."""
    import torch

    need = model_bytes(config)
    if device.type == "cuda":
        have, where = torch.cuda.get_device_properties(device.index or 0).total_memory, "the GPU's memory"
    else:
        have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
    if need > have:
        mc = config.model
        raise UserError(f"model: {mc.n_layer} layers of width {mc.n_embd} need at least {need / 2**30:,.1f} GiB for "
                        f"weights, gradients and AdamW moments (16 bytes a parameter), more than {where} "
                        f"({have / 2**30:,.1f} GiB); use a smaller model.n_layer / model.n_embd / data.vocab_size")


def check_cache_dir(data) -> None:
    """data.cache_dir must be writable, unless it already holds the finished token cache this
    run reads (a read-only mount of prepared caches: the run only reads them)."""
    try:
        _check_writable(Path(data.cache_dir), "data.cache_dir")
    except UserError:
        from minigpt.data.cache import complete_cache  # torch: only on this path

        if not complete_cache(data):
            raise


def _check_run_folder(run_dir: Path, tc) -> None:
    """A folder that holds another run, or that a live process is writing into, is refused
    before Hydra writes its config into it (minigpt/run/folder.py)."""
    from minigpt.run.folder import RunFolderInUse, check_run_folder, claimed_here, lock_holder

    holder = None if claimed_here(run_dir) else lock_holder(run_dir)
    if holder:
        raise RunFolderInUse(f"hydra.run.dir: '{run_dir}' is in use by another process ({holder}); wait for it to "
                             "end, stop it, or pick another hydra.run.dir")
    check_run_folder(run_dir, tc.resume, tc.overwrite)


def _check_resume(cfg: DictConfig, config, total: int | None) -> tuple[Path, dict, list] | None:
    """A resume from a file that is no checkpoint, a damaged one, or one of another model or data
    or past the end of the run, is refused here, before Hydra writes into the run directory
    (which, for resume=auto, is the earlier run's), by the trainer's own lookup (find_resume) and
    step check (check_resume_step). Returns what find_resume found (None: nothing to resume)."""
    from minigpt.run.checkpoint import check_resume_step, find_resume

    run_dir = None
    if config.trainer.resume == "auto":
        try:
            run_dir = Path(str(OmegaConf.select(cfg.hydra, "run.dir")))
        except Exception:  # ${now:...}: a new folder, with nothing to resume
            return None
    # mapped, not read: only the config and the step are looked at
    found = find_resume(run_dir, config.trainer.resume, config.to_dict(), say=lambda msg: None, mmap=True)
    if found is not None:
        check_resume_step(found[0], found[1]["step"], total)
    return found


def _check_init_from(config, run_dir: Path | None, resumes: tuple | None) -> None:
    """trainer.init_from names a checkpoint (or a run folder with one) of the model this run
    builds (find_init_weights, as the trainer), and one that the run's own start leaves where it
    is (minigpt/run/init_from.py). `resumes`: the run folder's checkpoint that resume=auto
    continues (_check_resume), which wins over init_from, as in the trainer."""
    from minigpt.run.init_from import find_init_weights, inside

    tc = config.trainer
    if resumes is not None:
        return  # the run folder's own checkpoint wins: this run continues (the trainer says so)
    path, _ = find_init_weights(tc.init_from, vars(config.model), mmap=True)  # mapped: only the config is looked at
    if tc.overwrite and run_dir is not None and inside(path, run_dir):
        raise UserError(f"trainer.init_from: {path} lies inside hydra.run.dir '{run_dir}', whose run "
                        "trainer.overwrite=true would move aside before the weights are read; copy the checkpoint "
                        "elsewhere or pick another hydra.run.dir")


def _check_stackable(cfg: DictConfig, config: Config) -> None:
    """Options that stacked runs do not support: refused before Hydra sets up any job (`config`:
    the typed config check_job returned)."""
    from minigpt.run.stack import check_stackable

    if not str(OmegaConf.select(cfg, "hydra.sweeper._target_")).endswith("BasicSweeper"):
        raise UserError("hydra/launcher=stacked trains a grid of jobs at once; a search (sweep=optuna) needs each "
                        "result before it picks the next trial: use it with the default or the parallel launcher")
    check_stackable([config])


def _check_writable(path: Path, key: str) -> None:
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"{key}: cannot write to '{path}' ('{existing}' is not a writable folder); "
                        f"point {key} at a writable folder")
