"""Bad input: one line naming the key and what is accepted, and nothing an earlier run wrote is
touched.

One completed earlier run (run directory, checkpoints, metrics, token cache) is made once and
hashed. Every bad input of the table is then checked in process, as train.py checks it: most
must be refused by the precheck (minigpt/launch/precheck.py, before Hydra creates a run directory or any
data is read), the others by the trainer. A few go through a real `train.py` process for the
contract a user sees: exit status 2, one `error:` line, no traceback. Afterwards the earlier
run's files must hash the same.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from helpers import hydra_args, nested, run_train, tiny_overrides
from minigpt.launch.precheck import precheck
from minigpt.launch.compose import composed
from minigpt.config import config_from_dict
from minigpt.errors import UserError
from minigpt.run.trainer import train
from test_cli import one_line_error

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: CUDA is not bad input here")


class Evil:
    """Unpickling this runs code (it creates a file); a safe load must refuse it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


# (id, overrides, texts the error line must contain, refused by the precheck before any run dir)
# {earlier} is the earlier run's directory, {ckpt} its newest checkpoint, {tmp} a scratch folder.
CASES = [
    ("unknown_scheduler", {"scheduler": "cosin_warmup"},
     ["unknown scheduler 'cosin_warmup'", "did you mean 'cosine_warmup'", "wsd"], True),
    ("unknown_model", {"model": "gpt3"}, ["unknown model 'gpt3'", "cpu", "gpt2_small"], True),
    ("unknown_option", {"optim.lrr": 1}, ["unknown config key 'optim.lrr'", "did you mean 'optim.lr'"], True),
    ("unknown_scheduler_option", {"scheduler.warmupp": 3},
     ["unknown config key 'scheduler.warmupp'", "did you mean 'scheduler.warmup'"], True),
    ("negative_lr", {"optim.lr": -1e-3}, ["optim.lr", "must be a positive number", "-0.001"], True),
    ("zero_lr", {"optim.lr": 0}, ["optim.lr", "must be a positive number", "0.0"], True),
    ("warmup_longer_than_run", {"scheduler.warmup": 100, "trainer.max_steps": 12},
     ["warmup=100", "accepted: 0 <= warmup <= 12"], True),
    ("min_lr_ratio_above_1", {"scheduler.min_lr_ratio": 1.5}, ["min_lr_ratio=1.5", "0.0 <= min_lr_ratio <= 1.0"], True),
    ("min_lr_ratio_below_0", {"scheduler.min_lr_ratio": -0.1}, ["min_lr_ratio=-0.1", "0.0 <= min_lr_ratio <= 1.0"], True),
    ("n_embd_not_divisible_by_n_head", {"model.n_embd": 30, "model.n_head": 4},
     ["model.n_embd (30) must be divisible by model.n_head (4)", "n_head="], True),
    # The config has one context length, model.block_size, for the windows and the position table;
    # a longer context than a trained model's is a resume with a larger block_size.
    ("context_longer_than_the_checkpoints", {"trainer.resume": "{ckpt}", "model.block_size": 64},
     ["trainer.resume", "model.block_size (32 -> 64)", "must stay as in"], True),
    ("context_longer_than_the_validation_split", {"model.block_size": 8192},
     ["validation split has", "fewer than one context window", "model.block_size=8192"], False),
    ("zero_micro_batch", {"trainer.micro_batch_size": 0}, ["trainer.micro_batch_size must be in [1, 65536]", "got 0"], True),
    ("zero_accumulation", {"trainer.grad_accum": 0}, ["trainer.grad_accum must be in [1, 65536]", "got 0"], True),
    ("batch_not_divisible_by_micro_batch", {"trainer.batch_size": 10},
     ["trainer.batch_size (10) is not divisible", "pick a multiple of 4"], True),
    ("batch_not_divisible_across_ranks", {"trainer.batch_size": 16, "_env": {"WORLD_SIZE": "3"}},
     ["trainer.batch_size (16)", "4 x 3 = 12", "pick a multiple of 12"], True),
    ("unknown_precision", {"trainer.precision": "fp8"},
     ["trainer.precision: must be one of auto, fp32, bf16, fp16", "'fp8'"], True),
    ("fp16_on_cpu", {"trainer.precision": "fp16", "trainer.device": "cpu"},
     ["trainer.precision=fp16 needs a CUDA GPU", "use trainer.precision=fp32 or bf16"], True),
    pytest.param("cuda_without_gpu", {"trainer.device": "cuda"},
                 ["trainer.device=cuda but no CUDA GPU is visible", "trainer.device=cpu"], True, marks=NO_GPU),
    ("unknown_device", {"trainer.device": "tpu"}, ["trainer.device: must be one of auto, cpu, cuda"], True),
    ("missing_data_path", {"data": "files", "data.paths": "[{tmp}/nowhere]"},
     ["data.paths: '", "nowhere' does not exist", "existing file or folder"], True),
    ("data_files_without_paths", {"data": "files"}, ["data.paths is empty", "data.paths=["], True),
    ("empty_corpus", {"data": "files", "data.paths": "[{tmp}/empty]"},
     ["data.paths", "is empty", "text files"], False),
    ("corpus_shorter_than_a_context", {"data": "files", "data.paths": "[{tmp}/short]", "data.tokenizer": "byte"},
     ["train split has", "fewer than one context window", "model.block_size=32"], False),
    ("vocab_too_small_for_bpe", {"data.vocab_size": 100}, ["data.vocab_size (100)", "at least 258"], True),
    ("unknown_tokenizer", {"data.tokenizer": "wordpiece"}, ["data.tokenizer: must be one of bpe, byte"], True),
    ("resume_from_a_text_file", {"trainer.resume": "{tmp}/notes.txt"},
     ["trainer.resume", "notes.txt' is not a minigpt checkpoint", "checkpoints/ folder"], True),
    ("resume_from_a_pickle_that_runs_code", {"trainer.resume": "{tmp}/evil.pt"},
     ["trainer.resume", "weights_only", "not opened"], True),
    ("resume_from_a_missing_file", {"trainer.resume": "{tmp}/gone.pt"},
     ["trainer.resume", "gone.pt' is not a file", "trainer.resume=auto"], True),
    ("resume_checkpoint_of_another_shape", {"trainer.resume": "{ckpt}", "model.n_layer": 3},
     ["trainer.resume", "model.n_layer (2 -> 3)", "start a new run"], True),
    ("resume_auto_of_another_tokenizer", {"trainer.resume": "auto", "data.vocab_size": 1024, "_run_dir": "{earlier}"},
     ["trainer.resume", "data.vocab_size (512 -> 1024)"], True),
    ("unwritable_output_dir", {"_run_dir": "{tmp}/a_file/run"},
     ["hydra.run.dir: cannot write to", "a_file' is not a writable folder"], True),
    ("unwritable_cache_dir", {"data.cache_dir": "{tmp}/a_file/data"},
     ["data.cache_dir: cannot write to", "writable folder"], True),
    ("non_numeric_lr", {"optim.lr": "fast"}, ["optim.lr: expected a number", "'fast'"], True),
    ("non_numeric_steps", {"trainer.max_steps": "ten"}, ["trainer.max_steps: expected an integer", "'ten'"], True),
    ("non_numeric_tokens", {"trainer.max_steps": None, "trainer.max_tokens": "lots"},
     ["trainer.max_tokens: expected a count such as", "'lots'"], True),
    ("two_run_lengths", {"trainer.epochs": 1}, ["exactly one run length", "max_steps, epochs"], True),
    ("sharpness_every_zero", {"monitor.sharpness_every": 0},
     ["monitor.sharpness_every must be a positive number of steps", "or null to turn it off"], True),
    ("sharpness_every_not_a_number", {"monitor.sharpness_every": "often"},
     ["monitor.sharpness_every: expected an integer", "'often'"], True),
    ("unknown_weight_decay_mode", {"optim.weight_decay_mode": "decoupled"},
     ["optim.weight_decay_mode: must be one of coupled, independent", "'decoupled'"], True),
    # Optimizers (issue 29): each refusal one line, before anything runs.
    ("unknown_optimizer", {"optim.name": "sgd"}, ["optim.name: must be one of adamw, muon, schedule_free", "'sgd'"],
     True),
    ("unknown_optimizer_file", {"optim": "adam"}, ["optim", "adam", "adamw", "muon", "schedule_free"], True),
    ("schedule_free_with_a_decaying_schedule", {"optim": "schedule_free", "scheduler": "cosine_warmup"},
     ["optim=schedule_free", "scheduler=constant or scheduler=constant_warmup", "not scheduler=cosine_warmup"], True),
    ("sharpness_with_muon", {"optim": "muon", "monitor.sharpness_every": 5},
     ["monitor.sharpness_every", "optim=muon", "use optim=adamw"], True),
    ("ema_longer_than_the_run", {"optim.ema": 100}, ["optim.ema=100", "longer than the run (12 steps)"], True),
    ("ema_of_zero_steps", {"optim.ema": 0}, ["optim.ema=0", "at least 1 step", "optim.ema=null"], True),
    ("ema_not_a_length", {"optim.ema": "soon"}, ["optim.ema='soon' is not a length"], True),
    ("ema_with_schedule_free", {"optim": "schedule_free", "scheduler": "constant", "optim.ema": 3},
     ["optim.ema", "schedule-free AdamW already evaluates an average"], True),
    ("gi_adam_with_schedule_free", {"optim": "schedule_free", "scheduler": "constant", "optim.adam_init": "grad"},
     ["optim.adam_init=grad", "schedule-free"], True),
    ("muon_with_a_cycled_beta1", {"optim": "muon", "scheduler": "one_cycle"},
     ["scheduler=one_cycle cycles Adam's beta1", "scheduler.cycle_momentum=false"], True),
    ("resume_with_another_optimizer", {"trainer.resume": "{ckpt}", "optim": "muon"},
     ["trainer.resume", "optim.name", "adamw -> muon"], True),
    # Run integrity (issue 16): a folder holds one run; seeds, compile options, names and lengths
    # are checked before anything is written.
    ("fresh_run_into_a_folder_that_holds_a_run", {"_run_dir": "{earlier}"},
     ["hydra.run.dir", "already holds a run", "trainer.resume=auto", "trainer.overwrite=true"], True),
    ("negative_seed", {"seed": -1}, ["seed must be in [0, 9223372036854775807]", "got -1"], True),
    ("seed_past_64_bits", {"seed": 18446744073709551616}, ["seed must be in [0,", "got 18446744073709551616"], True),
    ("negative_split_seed", {"data.split_seed": -1}, ["data.split_seed must be in [0,", "got -1"], True),
    ("negative_eval_seed", {"trainer.eval_seed": -3}, ["trainer.eval_seed must be in [0,", "or null (the run's seed)",
                                                       "got -3"], True),
    # this one used to crash mid-run and overwrite the finished run's summary with "failed"
    ("resume_auto_of_a_finished_run_with_a_bad_seed", {"_run_dir": "{earlier}", "trainer.resume": "auto", "seed": -1},
     ["seed must be in [0,"], True),
    ("resume_past_the_end_of_the_run", {"_run_dir": "{earlier}", "trainer.resume": "auto", "trainer.max_steps": 2},
     ["trainer.resume", "step_0000004.pt is at step 4, past the end of this run (2 steps)"], True),
    ("unknown_compile_backend", {"trainer.compile": True, "trainer.compile_backend": "inductr"},
     ["trainer.compile_backend: unknown torch.compile backend 'inductr'", "did you mean 'inductor'"], True),
    ("unknown_compile_mode", {"trainer.compile_mode": "fastest"},
     ["trainer.compile_mode: must be one of default, reduce-overhead, max-autotune"], True),
    ("unknown_sync_debug", {"trainer.sync_debug": "loud"}, ["trainer.sync_debug: must be one of warn, error"], True),
    ("data_name_with_a_path", {"data.name": "../../x"}, ["data.name: '../../x'", "must be a plain name"], True),
    ("empty_run_dir", {"_run_dir": ""}, ["hydra.run.dir is empty", "hydra.run.dir=outputs/my-run"], False),
    ("batch_ramp_start_above_the_batch", {"trainer.batch_ramp_start": 64, "trainer.batch_ramp_tokens": "1k"},
     ["trainer.batch_ramp_start (64 sequences) is larger than the global batch it ramps up to (4"], True),
    ("context_of_a_million_tokens", {"model.block_size": 1_000_000},
     ["fewer than one context window", "model.block_size=1000000"], False),
    # trainer.init_from (issue 27): weights of another shape, nothing to start from, two sources of weights
    ("init_from_a_model_of_another_shape", {"trainer.init_from": "{earlier}", "model.n_layer": 3, "model.n_embd": 64},
     ["trainer.init_from", "model.n_layer (2 in the checkpoint, 3 here)", "model.n_embd (32 in the checkpoint, 64 here)",
      "set model.n_layer=2 model.n_embd=32"], True),
    ("init_from_a_missing_path", {"trainer.init_from": "{tmp}/gone"}, ["trainer.init_from: '", "gone' does not exist",
                                                                       "a run folder"], True),
    ("init_from_a_folder_without_checkpoints", {"trainer.init_from": "{tmp}/short"},
     ["trainer.init_from: the run folder", "holds no checkpoint"], True),
    ("init_from_and_resume_from_a_checkpoint", {"trainer.init_from": "{earlier}", "trainer.resume": "{ckpt}"},
     ["trainer.init_from and trainer.resume=", "give one of them"], True),
    ("init_from_inside_the_run_folder_that_overwrite_moves", {"_run_dir": "{earlier}", "trainer.init_from": "{ckpt}",
                                                              "trainer.overwrite": True},
     ["trainer.init_from", "lies inside hydra.run.dir", "copy the checkpoint elsewhere"], True),
    ("eval_only_without_init_from", {"trainer.eval_only": True},
     ["trainer.eval_only=true evaluates the checkpoint that trainer.init_from names"], True),
]


def _case(case):
    return case.values if hasattr(case, "values") else case  # a pytest.param or a plain tuple


def tree_hashes(*roots: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    (tmp / "empty").mkdir()
    (tmp / "empty" / "blank.txt").write_text("\n  \n")
    (tmp / "short").mkdir()
    (tmp / "short" / "a.txt").write_text("print('hi')\n")
    (tmp / "short" / "b.txt").write_text("x = 1\n")
    (tmp / "notes.txt").write_text("not a checkpoint\n")
    (tmp / "a_file").write_text("a file where a folder is expected\n")
    torch.save({"model": {}, "step": 1, "payload": Evil(tmp / "pwned")}, tmp / "evil.pt")
    return tmp


@pytest.fixture(scope="module")
def earlier(cache_dir, tmp_path_factory):
    """A completed earlier run with checkpoints, metrics and a token cache, hashed."""
    run_dir = tmp_path_factory.mktemp("earlier") / "run"
    overrides = {**tiny_overrides(cache_dir), "trainer.max_steps": 4, "trainer.ckpt_interval": 2,
                 "trainer.eval_interval": 2, "trainer.threads": 1}
    assert train(config_from_dict(nested(overrides)), run_dir, quiet=True).status == "completed"
    ckpts = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    assert len(ckpts) == 2 and (run_dir / "metrics.jsonl").exists() and (run_dir / "summary.json").exists()
    return run_dir, ckpts[-1], tree_hashes(run_dir, cache_dir)


def arguments(case, earlier, scratch, cache_dir) -> tuple[list[str], dict | None, Path]:
    """(train.py's command-line arguments, environment, run directory) of a case."""
    run_dir, ckpt, _ = earlier
    fill = lambda v: v.format(earlier=run_dir, ckpt=ckpt, tmp=scratch) if isinstance(v, str) else v  # noqa: E731
    name, overrides, _, _ = _case(case)
    overrides = {k: fill(v) for k, v in overrides.items()}
    env = overrides.pop("_env", None)
    target = overrides.pop("_run_dir", scratch / "runs" / name)
    args = hydra_args(cache_dir, Path(target), **overrides)
    if target == "":
        args[-1] = "hydra.run.dir=''"
        target = scratch / "runs" / name  # nothing is written anywhere: the working directory is not looked at
    return args, env, Path(target)


def refusal(args: list[str], run_dir: Path) -> tuple[str, bool]:
    """(the error line train.py prints, whether the precheck refused it), in this process:
    the precheck first, then what a Hydra job does with the composed config."""
    try:
        precheck(args)
    except UserError as e:
        return f"error: {e}", True
    from omegaconf import OmegaConf

    cfg = composed([a for a in args if not a.startswith("hydra.")], with_hydra=False)
    try:
        train(config_from_dict(OmegaConf.to_container(cfg, resolve=True)), run_dir, quiet=True)
    except UserError as e:
        return f"error: {e}", False
    raise AssertionError(f"not refused: {args}")


@pytest.mark.slow
@pytest.mark.parametrize("name, overrides, expected, precheck", CASES, ids=[_case(c)[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_key(name, overrides, expected, precheck, earlier, scratch, cache_dir,
                                              monkeypatch):
    args, env, run_dir = arguments((name, overrides, expected, precheck), earlier, scratch, cache_dir)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    line, refused_early = refusal(args, run_dir)
    assert "\n" not in line
    for text in expected:
        assert text in line, (text, line)
    assert refused_early or not precheck, f"{name}: refused by the trainer, not by the precheck"
    if precheck and run_dir != earlier[0]:
        assert not run_dir.exists(), f"{name}: refused only after {run_dir} was created"
    assert not (scratch / "pwned").exists()  # the malicious pickle never ran
    # nothing of the earlier run was touched
    run_root, _, before = earlier
    after = tree_hashes(run_root, cache_dir)
    assert set(tree_hashes(run_root)) == {p for p in before if p.startswith(str(run_root))}  # no file added there
    assert {p: after.get(p) for p in before} == before  # every earlier file whole and unchanged


# What a user sees, through real train.py processes: refused by the precheck (a bad value, an
# unknown option) and by the trainer (an empty corpus), each with exit status 2 and one line.
THROUGH_TRAIN_PY = ["non_numeric_lr", "unknown_scheduler", "empty_corpus"]


@pytest.mark.slow
@pytest.mark.parametrize("name", THROUGH_TRAIN_PY)
def test_train_py_refuses_with_one_line_and_exit_status_2(name, earlier, scratch, cache_dir):
    case = next(c for c in CASES if _case(c)[0] == name)
    args, env, run_dir = arguments(case, earlier, scratch, cache_dir)
    line = one_line_error(run_train(args, env=env, timeout=300))  # exit status 2, one line, no traceback
    for text in _case(case)[2]:
        assert text in line, (text, line)
    if _case(case)[3]:
        assert not run_dir.exists()
