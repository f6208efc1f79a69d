"""Typed run configuration and its validation.

`train.py` composes the Hydra config and hands a plain dict to `config_from_dict`, which
returns these dataclasses or raises `UserError` with one line naming the key and what it
accepts. The package never sees Hydra, so it can be used and tested without it. `coerce` is the
one rule set for loose values (a "12" for an int, a "1e-3" for a float), shared with the
schedule parameters (schedules.py).
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal, Optional, Union

from minigpt.errors import UserError

MAX_SEED = 2**63 - 1  # seeds of torch (which adds the rank), numpy and Python all fit

# Upper bounds on values that cannot be meant (docs/configuration.md). Above them a run would
# never end, or could not be built; the precheck used to spend memory in proportion to the run
# length (trainer.max_steps=1e30 took 22 GB), so the bounds come first and the rest of the
# checks are O(log) in the run length.
MAX_STEPS = 10**12  # optimizer updates of one run (31 years at a millisecond per update)
MAX_TOKENS = 10**15  # training tokens of one run (a hundred times the largest published runs)
MAX_LAYERS = 1024
MAX_WIDTH = 65536  # model.n_embd
MAX_CONTEXT = 1 << 20  # model.block_size
MAX_BATCH = 1 << 16  # trainer.micro_batch_size and trainer.grad_accum, each
MAX_GLOBAL_BATCH = 1 << 24  # trainer.batch_size, sequences
MAX_THREADS = 4096


@dataclass
class ModelConfig:
    name: str = "cpu"
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128  # context length the model is built for
    dropout: float = 0.0
    bias: bool = False
    norm_position: Literal["pre", "post"] = "pre"
    qk_layernorm: bool = False
    z_loss: float = 0.0  # coefficient of the z-loss term (1e-4 in PaLM); 0 turns it off

    def validate(self):
        for key in ("n_layer", "n_head", "n_embd", "block_size"):
            _check(getattr(self, key) >= 1, f"model.{key}", "must be >= 1", getattr(self, key))
        for key, top in (("n_layer", MAX_LAYERS), ("n_embd", MAX_WIDTH), ("block_size", MAX_CONTEXT)):
            _check(getattr(self, key) <= top, f"model.{key}", f"must be <= {top}", getattr(self, key))
        if self.n_embd % self.n_head:
            raise UserError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}); "
                f"pick n_head from the divisors of n_embd, e.g. {_divisors_hint(self.n_embd, self.n_head)}"
            )
        _check(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)", self.dropout)
        _check(math.isfinite(self.z_loss) and self.z_loss >= 0, "model.z_loss", "must be a finite number >= 0",
               self.z_loss)


@dataclass
class DataConfig:
    name: str = "stdlib"  # label of the corpus; names its token cache directory
    source: Literal["stdlib", "files", "hub"] = "stdlib"
    paths: list[str] = field(default_factory=list)  # source=files: files or folders
    extensions: list[str] = field(
        default_factory=lambda: [".txt", ".md", ".rst", ".py", ".jsonl", ".json", ".parquet", ".pdf"]
    )  # source=files: which files of a folder are read
    text_field: str = "text"  # JSONL, parquet and hub datasets: the column holding the text
    hub_name: Optional[str] = None  # source=hub: dataset name on the Hugging Face hub
    hub_config: Optional[str] = None
    hub_split: str = "train"
    hub_revision: Optional[str] = None
    max_chars: int = 0  # keep only the first max_chars characters of the corpus; 0 keeps all
    tokenizer: Literal["bpe", "byte"] = "bpe"
    vocab_size: int = 4096  # BPE vocabulary, end-of-text token included (byte: always 257)
    val_fraction: float = 0.05  # share of documents held out for validation
    split_seed: int = 0  # which documents go to validation
    cache_dir: str = "data"  # token caches and tokenizers, one subdirectory per key
    # BPE: characters of the training split the tokenizer learns from (the same share of every
    # training document); the whole split when it is smaller. docs/performance.md measures it.
    tokenizer_train_chars: int = 20_000_000
    # What names a corpus' cache: stat = every file's name, size and modification time (cheap);
    # content = a hash of all its text (reads the whole corpus at every start)
    cache_key: Literal["stat", "content"] = "stat"

    def validate(self):
        if self.source == "files" and not self.paths:
            raise UserError("data.paths is empty: with data.source=files give files or folders, e.g. data.paths=[corpus/]")
        if self.source == "hub" and not self.hub_name:
            raise UserError("data.hub_name is not set: with data.source=hub name a dataset, "
                            "e.g. data.hub_name=roneneldan/TinyStories")
        _check(self.max_chars >= 0, "data.max_chars", "must be >= 0 (0 keeps the whole corpus)", self.max_chars)
        if self.tokenizer == "bpe" and self.vocab_size < 258:
            raise UserError(
                f"data.vocab_size ({self.vocab_size}) is too small for a byte-level BPE tokenizer: "
                "it needs at least 258 (256 bytes, end-of-text and one merge); or use data.tokenizer=byte"
            )
        _check(self.vocab_size <= 2**31 - 1, "data.vocab_size", "must fit in 31 bits", self.vocab_size)
        _check(0 < self.val_fraction < 1, "data.val_fraction", "must be in (0, 1)", self.val_fraction)
        _check(self.tokenizer_train_chars >= 1, "data.tokenizer_train_chars", "must be >= 1",
               self.tokenizer_train_chars)
        if not self.cache_dir.strip():
            raise UserError("data.cache_dir is empty, which would put the token caches into the working directory; "
                            "give a folder, e.g. data.cache_dir=data")
        _check(0 <= self.split_seed <= MAX_SEED, "data.split_seed", f"must be in [0, {MAX_SEED}]", self.split_seed)
        # The name becomes a folder under cache_dir: a path in it would put the cache elsewhere.
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*", self.name) or ".." in self.name:
            raise UserError(f"data.name: {self.name!r} names the token cache folder under data.cache_dir and must be a "
                            "plain name (letters, digits, _ . + = -; no '/', no '..'), e.g. data.name=my_corpus")


@dataclass
class LRMultipliers:
    """Per-group LR multipliers, applied on top of the schedule: group LR = schedule LR x multiplier."""

    embedding: float = 1.0  # token and position embeddings (wte, wpe)
    head: float = 1.0  # the output layer (lm_head); tied to wte in this GPT, so it must equal embedding
    matrices: float = 1.0  # the weight matrices of attention and MLP blocks
    norms_biases: float = 1.0  # LayerNorm gains and biases, every 1-d parameter

    def validate(self):
        for key in ("embedding", "head", "matrices", "norms_biases"):
            value = getattr(self, key)
            _check(math.isfinite(value) and value >= 0, f"optim.lr_multipliers.{key}", "must be a number >= 0",
                   value)

    def non_default(self) -> bool:
        return any(getattr(self, k) != 1.0 for k in ("embedding", "head", "matrices", "norms_biases"))


@dataclass
class MuonConfig:
    """optim=muon: torch.optim.Muon on the hidden weight matrices (docs/optimizers.md)."""

    momentum: float = 0.95  # Muon's momentum once its warmup is over
    # Momentum warmup: linear from momentum_start to momentum over the first momentum_warmup
    # steps (modded-nanogpt's train_gpt.py: 0.85 -> 0.95 over 300 steps); 0 turns it off.
    momentum_warmup: int = 0
    momentum_start: float = 0.85
    nesterov: bool = True
    ns_steps: int = 5  # Newton-Schulz iterations per update
    # original: Keller Jordan's scale sqrt(max(1, rows / cols)); match_rms_adamw: Moonshot's
    # 0.2 sqrt(max(rows, cols)), which lets Muon reuse an AdamW LR (torch.optim.Muon's adjust_lr_fn)
    adjust_lr: Literal["original", "match_rms_adamw"] = "original"

    def validate(self):
        for key in ("momentum", "momentum_start"):
            _check(0 <= getattr(self, key) < 1, f"optim.muon.{key}", "must be in [0, 1)", getattr(self, key))
        _check(self.momentum_warmup >= 0, "optim.muon.momentum_warmup", "must be >= 0 steps (0 turns it off)",
               self.momentum_warmup)
        _check(self.ns_steps >= 1, "optim.muon.ns_steps", "must be >= 1", self.ns_steps)


SCHEDULE_FREE_SCHEDULES = ("constant", "constant_warmup")  # schedule-free needs no decay: it averages


@dataclass
class OptimConfig:
    # adamw: torch's AdamW; muon: Muon on the hidden matrices, AdamW on the rest; schedule_free:
    # schedule-free AdamW (the schedulefree package). conf/optim/ has a file for each.
    name: Literal["adamw", "muon", "schedule_free"] = "adamw"
    lr: float = 5e-3  # peak learning rate: the schedule's multiplier scales it
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # applied to matrices (and embeddings) only
    # coupled: each step multiplies the weights by 1 - lr_t * weight_decay (torch's AdamW).
    # independent: by 1 - s_t * weight_decay, s_t = lr_t / peak LR the schedule's multiplier, so
    # the decay does not grow or shrink with the peak LR (Loshchilov & Hutter's decoupled form as
    # Wortsman et al. 2023 use it; there weight_decay is a per-step rate such as 1e-4).
    weight_decay_mode: Literal["coupled", "independent"] = "coupled"
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    fused: Literal["auto", "on", "off"] = "auto"  # fused AdamW kernel: auto = on CUDA
    # How the peak LR (and, for sqrt_adam, Adam's betas and eps) follow the global batch B from
    # reference_batch_tokens B_ref, k = B / B_ref: linear: lr x k (Goyal et al. 2017); sqrt_lr: lr x sqrt(k),
    # the LR only; sqrt_adam: Malladi et al. 2022's square-root rule for Adam, lr x sqrt(k),
    # beta_i -> 1 - k (1 - beta_i), eps -> eps / sqrt(k) (minigpt/plan.py).
    lr_scaling: Literal["none", "linear", "sqrt_lr", "sqrt_adam"] = "none"
    reference_batch_tokens: Optional[int] = None  # batch (tokens) at which optim.lr was tuned
    lr_multipliers: LRMultipliers = field(default_factory=LRMultipliers)
    # Adam's second moment at the first update: zero (Adam), or grad: the first gradient's
    # square (GI-Adam, Kalra & Barkeshli 2024). AdamW, and Muon's AdamW groups.
    adam_init: Literal["zero", "grad"] = "zero"
    # An exponential moving average of the weights, evaluated as val/loss_ema: its half-life as
    # a length (300 or "300 steps", 0.1 or "10%" of the run, "2M tokens"); null: off.
    ema: Optional[Union[int, float, str]] = None
    muon: MuonConfig = field(default_factory=MuonConfig)

    def validate(self):
        _check(math.isfinite(self.lr) and self.lr > 0, "optim.lr", "must be a positive number", self.lr)
        for key in ("beta1", "beta2"):
            _check(0 <= getattr(self, key) < 1, f"optim.{key}", "must be in [0, 1)", getattr(self, key))
        _check(math.isfinite(self.eps) and self.eps > 0, "optim.eps", "must be a finite number > 0", self.eps)
        _check(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "optim.weight_decay",
               "must be a finite number >= 0", self.weight_decay)
        if self.weight_decay_mode == "independent":
            _check(self.weight_decay < 1, "optim.weight_decay",
                   "must be < 1 with optim.weight_decay_mode=independent (it is the fraction of each weight "
                   "removed per step at the peak LR, e.g. 1e-4)", self.weight_decay)
        _check(math.isfinite(self.grad_clip) and self.grad_clip >= 0, "optim.grad_clip",
               "must be a finite number >= 0 (0 turns clipping off)", self.grad_clip)
        if self.lr_scaling != "none" and not self.reference_batch_tokens:
            raise UserError(
                f"optim.lr_scaling={self.lr_scaling} needs optim.reference_batch_tokens "
                "(the global batch in tokens at which optim.lr was tuned), e.g. optim.reference_batch_tokens=65536"
            )
        if self.reference_batch_tokens is not None:
            _check(self.reference_batch_tokens > 0, "optim.reference_batch_tokens", "must be > 0",
                   self.reference_batch_tokens)
        self.lr_multipliers.validate()
        self.muon.validate()
        if self.ema is not None and (isinstance(self.ema, bool) or not isinstance(self.ema, (int, float, str))):
            raise UserError(f"optim.ema: expected a half-life such as 300, 0.1, '10%' or '2M tokens' (null: off); "
                            f"got {self.ema!r}")
        if self.name == "schedule_free" and self.adam_init == "grad":
            raise UserError("optim.adam_init=grad initialises AdamW's second moment; schedule-free AdamW keeps its own "
                            "state: use optim=adamw (or optim=muon) with optim.adam_init=grad")
        if self.name == "schedule_free" and self.ema is not None:
            raise UserError("optim.ema: schedule-free AdamW already evaluates an average of its iterates (its "
                            "evaluation point); use optim.ema with optim=adamw or optim=muon, or set optim.ema=null")


@dataclass
class TrainerConfig:
    # Run length: exactly one of max_steps, max_tokens or epochs.
    max_steps: Optional[int] = 600
    max_tokens: Optional[str] = None  # e.g. 20M or 2e7: the run is this many training tokens
    epochs: Optional[float] = None  # passes over the training tokens
    micro_batch_size: int = 16  # sequences per forward/backward pass on one device
    grad_accum: int = 1  # micro-batches per optimizer update on each device
    batch_size: Optional[int] = None  # global sequences per update; sets grad_accum when given
    # Batch-size ramp (GPT-3): the global batch grows linearly from batch_ramp_start sequences to
    # the full batch over batch_ramp_tokens tokens, by raising the accumulation (minigpt/batch_ramp.py).
    batch_ramp_start: Optional[int] = None
    batch_ramp_tokens: Optional[str] = None  # e.g. 2M
    # What the schedule counts: updates (steps), or tokens (the LR at token t is the planned one
    # whatever the batch was before t; use it with a batch ramp).
    schedule_unit: Literal["steps", "tokens"] = "steps"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    compile_backend: str = "inductor"
    # torch.compile mode (None: torch's default); the backend is checked against torch's list
    compile_mode: Optional[Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]] = None
    eval_interval: int = 100  # evaluate every N updates (and always at the start and the end)
    eval_iters: int = 20  # validation batches per evaluation
    # Which validation windows every evaluation reads. One seed for every run, so runs of different
    # seeds are scored on the same text and their difference is the models' alone; null draws them
    # with the run's `seed` (what every run did until 2026-12-07). 1337, the default seed, keeps the
    # default run's windows as they were.
    eval_seed: Optional[int] = 1337
    ckpt_interval: int = 0  # checkpoint every N updates; 0: only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept; older ones are deleted
    resume: Optional[str] = None  # 'auto' (newest in the run directory) or a checkpoint path
    overwrite: bool = False  # replace a run the run directory holds (moved to replaced-<time>/) instead of refusing
    # A new run that starts from the weights of a checkpoint (a .pt file, or a run folder: its newest
    # checkpoint): weights only, a fresh optimizer, this run's schedule from step 0 (minigpt/run/init_from.py)
    init_from: Optional[str] = None
    eval_only: bool = False  # evaluate trainer.init_from's weights on eval_iters validation batches; train nothing
    flush_every: int = 0  # per-step records copied to the host every N updates; 0: 1 on CPU, 32 on CUDA
    # CUDA: warn about, or fail the run at, any host-device synchronisation inside the training
    # step (torch.cuda.set_sync_debug_mode), after the first updates; ignored on a CPU
    sync_debug: Optional[Literal["warn", "error"]] = None
    progress: bool = True  # tqdm progress bar
    # Draw the planned LR into schedule.png when the run starts. matplotlib costs about 1.5 s of
    # CPU in a fresh process (0.2 s after that); false saves it in sweeps of many short runs.
    schedule_plot: bool = True
    # Print the run's plan (schedule with its phases and floor, tokens, epochs, batch, parameters,
    # memory estimate), draw schedule.png, and stop: no data prepared, no model built, nothing
    # trained (minigpt/run/dry_run.py). A sweep prints one line per job.
    dry_run: bool = False
    threads: int = 0  # CPU threads for torch; 0 leaves torch's default

    def validate(self):
        lengths = [k for k in ("max_steps", "max_tokens", "epochs") if getattr(self, k) is not None]
        if len(lengths) != 1:
            raise UserError(
                "give exactly one run length of trainer.max_steps, trainer.max_tokens, trainer.epochs "
                f"(got {', '.join(lengths) or 'none'}); set the others to null"
            )
        if self.max_steps is not None:
            _check(1 <= self.max_steps <= MAX_STEPS, "trainer.max_steps", f"must be in [1, {MAX_STEPS:.0e}]",
                   self.max_steps)
        if self.max_tokens is not None:
            _check(1 <= parse_count(self.max_tokens, "trainer.max_tokens") <= MAX_TOKENS, "trainer.max_tokens",
                   f"must be in [1, {MAX_TOKENS:.0e}]", self.max_tokens)
        if self.epochs is not None:
            _check(math.isfinite(self.epochs) and 0 < self.epochs <= MAX_STEPS, "trainer.epochs",
                   f"must be a finite number in (0, {MAX_STEPS:.0e}]", self.epochs)
        _check(1 <= self.micro_batch_size <= MAX_BATCH, "trainer.micro_batch_size", f"must be in [1, {MAX_BATCH}]",
               self.micro_batch_size)
        _check(1 <= self.grad_accum <= MAX_BATCH, "trainer.grad_accum", f"must be in [1, {MAX_BATCH}]", self.grad_accum)
        if self.batch_size is not None:
            _check(1 <= self.batch_size <= MAX_GLOBAL_BATCH, "trainer.batch_size",
                   f"must be in [1, {MAX_GLOBAL_BATCH}]", self.batch_size)
        if (self.batch_ramp_start is None) != (self.batch_ramp_tokens is None):
            raise UserError("a batch-size ramp needs both trainer.batch_ramp_start (sequences) and "
                            "trainer.batch_ramp_tokens (e.g. 2M); set both, or both to null")
        if self.batch_ramp_start is not None:
            _check(self.batch_ramp_start >= 1, "trainer.batch_ramp_start", "must be >= 1 (sequences)",
                   self.batch_ramp_start)
            _check(1 <= parse_count(self.batch_ramp_tokens, "trainer.batch_ramp_tokens") <= MAX_TOKENS,
                   "trainer.batch_ramp_tokens", f"must be in [1, {MAX_TOKENS:.0e}]", self.batch_ramp_tokens)
        for key in ("eval_interval", "eval_iters", "keep_checkpoints"):
            _check(getattr(self, key) >= 1, f"trainer.{key}", "must be >= 1", getattr(self, key))
        if self.eval_seed is not None:
            _check(0 <= self.eval_seed <= MAX_SEED, "trainer.eval_seed", f"must be in [0, {MAX_SEED}] or null (the run's seed)",
                   self.eval_seed)
        for key in ("ckpt_interval", "flush_every", "threads"):
            _check(getattr(self, key) >= 0, f"trainer.{key}", "must be >= 0", getattr(self, key))
        _check(self.threads <= MAX_THREADS, "trainer.threads", f"must be <= {MAX_THREADS} (0: torch's default)",
               self.threads)
        if self.init_from is not None and self.resume not in (None, "auto"):
            raise UserError(f"trainer.init_from and trainer.resume={self.resume} both name weights to start from: resume "
                            "continues a run (optimizer, step, schedule), init_from starts a new one from the weights "
                            "alone; give one of them")
        if self.eval_only and self.init_from is None:
            raise UserError("trainer.eval_only=true evaluates the checkpoint that trainer.init_from names; give "
                            "trainer.init_from=<checkpoint .pt or run folder (its newest checkpoint)>")
        if self.eval_only and self.resume is not None:
            raise UserError("trainer.eval_only=true trains nothing, so there is nothing to resume; drop trainer.resume "
                            "(the evaluation writes its own new run folder)")


@dataclass
class MonitorConfig:
    # Spikes: a value is a spike when it lies more than spike_k standard deviations above the
    # mean of the previous spike_window values (once spike_min_values of them exist).
    spike_k: float = 6.0
    spike_window: int = 128
    spike_min_values: int = 16
    # Spike score after OLMo 2: percentage of steps whose value lies spike_score_k standard
    # deviations from the rolling mean of the previous spike_score_window values (scored from
    # spike_min_values values on, so against a partial window until spike_score_window are in).
    spike_score_window: int = 1000
    spike_score_k: float = 7.0
    # Divergence: non-finite loss; or loss above loss_limit (null: the initial loss) for
    # patience consecutive steps; or stuck: the 20-step mean loss is at or above the unigram
    # entropy of the validation tokens minus stuck_margin and has dropped less than
    # stuck_min_drop nats over the last stuck_window steps (judged from stuck_after of the run on).
    loss_limit: Optional[float] = None
    patience: int = 50  # capped at a tenth of the run, at least 5 steps (minigpt/run/monitor.py), and said so
    stuck_after: float = 0.1  # fraction of the run before which nobody is called stuck; 0 turns the check off
    stuck_margin: float = 0.1
    stuck_window: int = 100  # steps over which a stuck run fails to improve; 0 turns the check off
    stuck_min_drop: float = 0.05  # nats the 20-step mean loss must fall over stuck_window steps
    stop_on_divergence: bool = True
    # Mitigation, off by default: skip the update on a loss or gradient-norm spike above skip_k
    # standard deviations (it reads the loss on the host every step: a GPU sync).
    skip_spikes: bool = False
    skip_k: float = 12.0
    # Optional records that cost work, off by default.
    update_ratio: bool = False  # ||update|| / ||weights|| per step
    max_attn_logit: bool = False  # largest pre-softmax attention logit of the step's last micro-batch
    logz: bool = False  # mean log-partition of the output softmax
    # Largest eigenvalue of the Adam-preconditioned Hessian on a fixed training batch, every N
    # steps (minigpt/run/sharpness.py; AdamW only); null: off. Each measurement costs one
    # forward/backward pass plus at most sharpness_iters Hessian-vector products (about two
    # backward passes each) of one micro-batch.
    sharpness_every: Optional[int] = None
    sharpness_iters: int = 20  # Lanczos steps (Hessian-vector products) per measurement, at most
    sharpness_tol: float = 1e-3  # ... stopping once the Ritz residual is under this fraction of the value
    sharpness_until: Optional[int] = None  # measure only before this step (null: the whole run)

    def validate(self):
        for key in ("spike_k", "spike_score_k", "skip_k", "stuck_margin", "stuck_min_drop"):
            _check(math.isfinite(getattr(self, key)), f"monitor.{key}", "must be a finite number", getattr(self, key))
        if self.loss_limit is not None:
            _check(math.isfinite(self.loss_limit) and self.loss_limit > 0, "monitor.loss_limit",
                   "must be a finite number > 0 (or null: the initial loss)", self.loss_limit)
        _check(self.spike_k > 0, "monitor.spike_k", "must be > 0", self.spike_k)
        _check(self.spike_window >= 2, "monitor.spike_window", "must be >= 2", self.spike_window)
        _check(2 <= self.spike_min_values <= self.spike_window, "monitor.spike_min_values",
               "must be in [2, spike_window]", self.spike_min_values)
        _check(self.spike_score_window >= 2, "monitor.spike_score_window", "must be >= 2", self.spike_score_window)
        _check(self.spike_score_k > 0, "monitor.spike_score_k", "must be > 0", self.spike_score_k)
        _check(self.patience >= 1, "monitor.patience", "must be >= 1", self.patience)
        _check(0 <= self.stuck_after <= 1, "monitor.stuck_after", "must be in [0, 1] (0 turns it off)",
               self.stuck_after)
        _check(self.stuck_window >= 0, "monitor.stuck_window", "must be >= 0 (0 turns the stuck check off)",
               self.stuck_window)
        _check(self.stuck_min_drop >= 0, "monitor.stuck_min_drop", "must be >= 0 (nats)", self.stuck_min_drop)
        _check(self.skip_k > 0, "monitor.skip_k", "must be > 0", self.skip_k)
        if self.sharpness_every is not None:
            _check(self.sharpness_every >= 1, "monitor.sharpness_every",
                   "must be a positive number of steps (or null to turn it off)", self.sharpness_every)
        _check(self.sharpness_iters >= 1, "monitor.sharpness_iters", "must be >= 1", self.sharpness_iters)
        _check(0 <= self.sharpness_tol < 1, "monitor.sharpness_tol", "must be in [0, 1) (0: always sharpness_iters steps)",
               self.sharpness_tol)
        if self.sharpness_until is not None:
            _check(self.sharpness_until >= 1, "monitor.sharpness_until", "must be >= 1 (or null: the whole run)",
                   self.sharpness_until)


@dataclass
class LoggerConfig:
    # wandb settings. Unset (null) ones come from wandb's environment variables when those are
    # set (WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE, WANDB_RUN_GROUP, WANDB_TAGS, WANDB_DIR), else
    # from the defaults in the comments: a value given in the config or on the command line wins
    # over the environment, and the environment over the defaults (metrics.wandb_settings).
    wandb: bool = False
    project: Optional[str] = None  # default: minigpt
    entity: Optional[str] = None  # default: wandb's (your default entity)
    mode: Optional[Literal["offline", "online", "disabled"]] = None  # default: offline
    group: Optional[str] = None  # default: a sweep's runs share the sweep directory's name
    tags: Optional[list[str]] = None  # default: none
    dir: Optional[str] = None  # where wandb/ goes; default: the run directory
    # TensorBoard: the records of metrics.jsonl also as scalars in <run dir>/tensorboard/ (needs
    # `pip install tensorboard`); logger=tensorboard sets it
    tensorboard: bool = False


@dataclass
class LRRangeTestConfig:
    """`task: lr_range_test` (experiment=lr_range_test): when to stop and how to smooth."""

    stop_factor: float = 4.0  # stop once the smoothed loss exceeds stop_factor x its minimum so far
    smoothing: float = 0.95  # EMA factor of the smoothed loss, bias-corrected as in fastai's lr_find
    skip_start: int = 5  # steps ignored when suggesting an LR (the EMA is still noisy there)

    def validate(self):
        _check(math.isfinite(self.stop_factor) and self.stop_factor > 1, "lr_range_test.stop_factor",
               "must be a finite number > 1", self.stop_factor)
        _check(0 <= self.smoothing < 1, "lr_range_test.smoothing", "must be in [0, 1)", self.smoothing)
        _check(self.skip_start >= 0, "lr_range_test.skip_start", "must be >= 0", self.skip_start)


# The optimizers whose preconditioned sharpness minigpt/run/sharpness.py can measure: Adam's P.
# A new optimizer joins only with a preconditioner of its own there.
SHARPNESS_OPTIMIZERS = ("adamw",)


@dataclass
class Config:
    seed: int = 1337
    run_name: str = "run"
    task: Literal["train", "lr_range_test"] = "train"  # lr_range_test: see minigpt/studies/lr_range_test.py
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: dict = field(default_factory=lambda: {"name": "cosine_warmup"})  # checked by the registry
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    lr_range_test: LRRangeTestConfig = field(default_factory=LRRangeTestConfig)

    def validate(self):
        # numpy's seed sequences take no negative seeds; torch's generator takes 64 bits (+ the rank).
        _check(0 <= self.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}]", self.seed)
        for section in (self.model, self.data, self.optim, self.trainer, self.monitor, self.lr_range_test):
            section.validate()
        if self.trainer.eval_only and self.task != "train":
            raise UserError(f"trainer.eval_only=true evaluates a checkpoint; task={self.task} trains: drop one of them")
        if not isinstance(self.scheduler.get("name"), str):
            raise UserError("scheduler.name is not set: pick one with scheduler=<name>, e.g. scheduler=cosine_warmup")
        if self.optim.name == "schedule_free" and self.scheduler["name"] not in SCHEDULE_FREE_SCHEDULES:
            raise UserError(f"optim=schedule_free averages its iterates instead of decaying the LR, so it takes "
                            f"scheduler=constant or scheduler=constant_warmup, not scheduler={self.scheduler['name']}")
        if self.monitor.sharpness_every is not None and self.optim.name not in SHARPNESS_OPTIMIZERS:
            raise UserError(f"monitor.sharpness_every measures the sharpness preconditioned by Adam's second moment, "
                            f"which optim={self.optim.name} does not keep for every weight: use optim=adamw, or set "
                            "monitor.sharpness_every=null")

    def to_dict(self) -> dict:
        return asdict(self)


def config_from_dict(raw: dict) -> Config:
    """Build and validate a Config from plain nested dicts (e.g. a resolved Hydra config)."""
    cfg = _build(Config, raw, "")
    cfg.validate()
    return cfg


def parse_count(value, key: str) -> int:
    """'20M', '1.5k', '2e6', 300 -> an integer count (of tokens, usually)."""
    if isinstance(value, bool):
        raise UserError(f"{key}: expected a count such as 2000000, 2e6 or 2M, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value != int(value):
            raise UserError(f"{key}: expected a whole count such as 2000000, 2e6 or 2M, got {value!r}")
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGbB]?)\s*(?:tokens?|tok)?\s*", str(value))
    if not match:
        raise UserError(f"{key}: expected a count such as 2000000, 2e6 or 2M, got {value!r}")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}[match.group(2).lower()]
    number = float(match.group(1)) * scale
    if not math.isfinite(number):  # '1e400': a float too large to be a count
        raise UserError(f"{key}: expected a count such as 2000000, 2e6 or 2M, got {value!r}")
    return int(round(number))


# --- loose values (YAML, the command line, Python callers) against a type annotation -------
#
# One rule set for the run config (below) and the schedule parameters (schedules.py), so that a
# value is accepted or refused the same way wherever it is given:
#
#   int     an int, a whole float (12.0) or a string of digits ("12"); never a bool
#   float   any real number or a string float() reads ("1e-3"); never a bool
#   bool    true or false only (not "true", not 1)
#   str     a string, or a number written as one (Hydra reads `name=123` as an int)
#   Literal one of its values
#   list / tuple of X: a list of values of X (one string for a list of strings)
#   dict    a mapping; null for a dict is an empty one
#   Optional[X]: null, or X
#   anything else (Any, a union of several types, a class): the value as given, for the owner's
#   own validate() to judge
#
# Bad input raises a one-line UserError that names the key.

_INT_STRING = re.compile(r"\s*[+-]?\d+\s*")


def coerce(value: Any, tp: Any, key: str, *, scalar: Callable[[Any, str], Any] | None = None) -> Any:
    """`value` as type `tp`, or UserError naming `key`. `scalar(value, key)`, when given, converts
    each non-null scalar instead of the type's rule (schedules.py: lengths such as "10%")."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) != 1:
            return value  # a real union: the owner's validate() decides
        tp = args[0]
        origin = typing.get_origin(tp)
    if value is None:
        if tp is dict:
            return {}
        raise UserError(f"{key}: must be set ({_type_name(tp)}), got null")
    if origin in (list, tuple):
        items = typing.get_args(tp)
        item_tp = items[0] if items else Any
        if isinstance(value, str) and item_tp is str and origin is list:
            return [value]  # a single path where a list is expected
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise UserError(f"{key}: expected a list, got {value!r}")
        return origin(coerce(v, item_tp, f"{key}[{i}]", scalar=scalar) for i, v in enumerate(value))
    if scalar is not None:
        return scalar(value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}{hint}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
        if isinstance(value, str) and _INT_STRING.fullmatch(value):
            return int(value)
        raise UserError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{key}: expected a string, got {value!r}")
    if tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise UserError(f"{key}: expected a mapping, got {value!r}")
    return value  # Any, or a type of the owner's: its validate() decides


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


# --- the generic dict -> dataclass loader -------------------------------------------------


def _build(cls, raw, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in raw:
        if key not in names:
            raise UserError(_unknown_key(prefix + str(key), names, prefix))
    kwargs = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        tp = hints[f.name]
        if is_dataclass(tp):
            kwargs[f.name] = _build(tp, raw[f.name], f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = coerce(raw[f.name], tp, prefix + f.name)
    return cls(**kwargs)


def _unknown_key(key: str, valid: list[str], prefix: str) -> str:
    leaf = key[len(prefix):]
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    return f"unknown config key '{key}'{hint}; valid keys under {prefix.rstrip('.') or 'the top level'}: {', '.join(valid)}"


def _check(ok: bool, key: str, rule: str, value: Any):
    if not ok:
        raise UserError(f"{key} {rule}; got {value!r}")


def _divisors_hint(n_embd: int, n_head: int) -> str:
    divisors = [d for d in range(1, min(n_embd, 64) + 1) if n_embd % d == 0]
    best = min(divisors, key=lambda d: abs(d - n_head))
    return f"n_head={best}"

