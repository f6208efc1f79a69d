"""One run (`Trainer`: data, model, optimizer, plan, monitor, records, checkpoints) and the one
training loop (`fit`: one run or a stack, driving a stepper: stepper.py or stack.py).

At the boundary before step s the model has had s updates: evaluation, checkpoints and a stop
by a signal all happen there, so a checkpoint of step s resumes with update s. On a GPU the
loop never waits for the device (records.py); evaluation, checkpoints and the optional
spike-skipping are the only synchronisation points.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from minigpt.run.checkpoint import (check_compatible, check_resume_step, checkpoint_path, continue_records, find_resume,
                                    is_branch, prune_checkpoints, save_checkpoint)
from minigpt.config import Config
from minigpt.data.cache import Batches, complete_cache, prepare_data, verify_tokens
from minigpt.errors import UserError
from minigpt.run.metrics import FORMAT_VERSION, MetricsLogger, RunResult, RunStatus, completed_summary, write_summary
from minigpt.model import GPT, GPTConfig
from minigpt.run.monitor import Monitor
from minigpt.optim import WeightAverage, build_optimizer, check_precision, eval_point, load_optimizer_state
from minigpt.run.perf import flops_per_token, peak_flops
from minigpt.plan import RunPlan
from minigpt.plots import plot_schedule_curve
from minigpt.run.keys import Key
from minigpt.run.records import Evaluation, RecordSchema, StepRecords
from minigpt.run.folder import claim_run_folder
from minigpt.run.init_from import check_tokenizer, find_init_weights, origin
from minigpt.run.runtime import Distributed, Runtime, StopSignals, check_sync_debug, own_rng_state, rank_rng_states, set_rng_state
from minigpt.run.sharpness import SharpnessProbe
from minigpt.run.state import Progress, StepParts
from minigpt.run.stepper import ModelStepper

log = logging.getLogger("minigpt")


def batch_stderr(total: float, total_sq: float, n: float) -> float | None:
    """The standard error of a mean over n batch values, from their sum and sum of squares: how far
    another draw of n validation windows could move the mean (None for a single batch)."""
    if n < 2:
        return None
    mean = total / n
    variance = max(total_sq / n - mean**2, 0.0) * n / (n - 1)
    return math.sqrt(variance / n)


class Trainer:
    """One run. `checkpoints=False` writes none (the LR range test trains a throwaway copy).
    `watchers` see every record on the host; a reason one returns ends the run (`stopped`).

    Its typed API, what other modules may read (tests/test_trainer_api.py checks it): the
    attributes annotated here, the properties and the public methods. The steppers work on
    `step_parts()`; a checkpoint holds `state_dict()`; summary.json holds `summary()`. Every
    other attribute is the trainer's own."""

    cfg: Config
    run_dir: Path
    checkpoints: bool  # whether this run writes checkpoints
    watchers: list  # called with each record on the host; one that returns a reason stops the run
    ddp: Distributed  # rank, world size
    device: torch.device
    precision: str  # fp32 / bf16 / fp16, resolved
    plan: RunPlan  # batch, length, schedule, peak LR
    total_steps: int  # the run's length (plan.total_steps)
    progress: Progress  # step and tokens: the stepper advances it
    metrics: MetricsLogger  # set by open()
    flops_per_token: float  # model FLOPs per training token (perf.py)
    peak_flops: float | None  # the device's dense peak (None: a CPU or an unknown GPU)
    flush_every: int  # steps between hand-offs of the records to the host
    flush_seconds: float  # host time spent handing records over (scripts/bench.py reads it)
    last_record: dict  # the newest record written

    def __init__(self, cfg: Config, run_dir: Path, quiet: bool = False, checkpoints: bool = True,
                 label: str | None = None):
        # An evaluation (trainer.eval_only) writes no checkpoint: it trains nothing.
        self.cfg, self.run_dir, self.checkpoints = cfg, Path(run_dir), checkpoints and not cfg.trainer.eval_only
        self.watchers: list = []  # called with each record; one that returns a reason stops the run
        self.stop_reason: str | None = None
        tc = cfg.trainer
        # label: the run's name in front of each of its lines, where runs share one log (stacked runs)
        self.say = (lambda msg: None) if quiet else log.info if label is None else (lambda msg: log.info(f"[{label}] {msg}"))
        self.runtime = Runtime.start(tc)
        self.ddp, self.device, self.precision = self.runtime.ddp, self.runtime.device, self.runtime.precision
        check_sync_debug(cfg, self.precision)
        self.lock = None  # the folder is this run's alone for its whole life (run_folder.py): rank 0 locks it
        if self.ddp.is_main:
            self.lock = claim_run_folder(self.run_dir, tc, self.checkpoints, Path(cfg.data.cache_dir), self.say,
                                         cache_readable=lambda: complete_cache(cfg.data))
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        cfg, tc, mc = self.cfg, self.cfg.trainer, self.cfg.model
        # A resume is checked against the checkpoint's config before any data or model work.
        found = find_resume(self.run_dir, tc.resume, cfg.to_dict(), self.say) if tc.resume and not tc.eval_only else None
        # trainer.init_from: the weights a new run starts from. A checkpoint of this run folder wins
        # (resume=auto continues the run, which began from init_from's weights: init_from.py).
        init = None
        if tc.init_from is not None:
            if found is not None and found[1] is not None:
                self.say(f"init_from: the run folder holds {found[0].name}; trainer.resume=auto continues this run "
                         f"from it, and trainer.init_from ({tc.init_from}) is not read")
            else:
                init = find_init_weights(tc.init_from, vars(mc))

        # Data: the main rank builds the cache, the others wait and read it.
        if self.ddp.is_main:
            self.data = prepare_data(cfg.data, log=self.say, progress=tc.progress)
        if self.ddp.enabled:
            dist.barrier()
        if not self.ddp.is_main:
            self.data = prepare_data(cfg.data, log=lambda m: None, progress=False)
        meta = self.data.meta
        # Every context window must fit in the splits: checked before a model of that context is built.
        self.train_batches = Batches(self.data.train, mc.block_size, tc.micro_batch_size, cfg.seed, self.device, "train",
                                     meta["vocab_size"])
        eval_seed = cfg.seed if tc.eval_seed is None else tc.eval_seed
        self.val_batches = Batches(self.data.val, mc.block_size, tc.micro_batch_size, eval_seed, self.device,
                                   "validation", meta["vocab_size"])
        self.model_config = GPTConfig.build(mc, meta["vocab_size"])
        torch.manual_seed(cfg.seed)
        self.model = build_model(self.model_config, self.device)  # the uncompiled module: checkpoints use it
        self.model.record_logz = cfg.monitor.logz
        for block in self.model.transformer.h:
            block.attn.record_max_logit = cfg.monitor.max_attn_logit
        self.init_origin: dict | None = None  # where the weights came from (trainer.init_from), for summary.json
        if init is not None:
            self.init_weights(*init)
        torch.manual_seed(cfg.seed + self.ddp.rank)  # dropout differs between ranks
        self.step_model, self.eval_model = self.runtime.wrap(self.model, tc)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

        # The run plan (batch, length, schedule, peak LR), checked before any compute is spent.
        self.plan = RunPlan.build(cfg, self.ddp.world_size, meta["train_tokens"])
        check_precision(cfg.optim, self.precision)  # fp16 (auto on an old GPU) with an optimizer torch has not fused
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device, self.plan.peak_lr,
                                         (self.plan.beta1, self.plan.beta2, self.plan.eps))
        self.params = list(self.model.parameters())  # tied weights once: what the optimizer and the average hold
        self.ema = WeightAverage(self.params, self.plan.ema_decay) if self.plan.ema_half_life else None
        self.total_steps = self.plan.total_steps
        self.monitor = Monitor(cfg.monitor, self.total_steps, meta.get("unigram_entropy_val"))
        if self.monitor.patience_note():
            self.say(self.monitor.patience_note())
        self.sharpness = None
        if cfg.monitor.sharpness_every:
            # One fixed training batch (that of step 0) for every measurement.
            self.sharpness = SharpnessProbe(cfg.monitor.sharpness_every, cfg.monitor.sharpness_iters,
                                            self.train_batches.train_batch(0, 0), seed=cfg.seed,
                                            until=cfg.monitor.sharpness_until, tol=cfg.monitor.sharpness_tol)
        self.flops_per_token = flops_per_token(self.model.num_params(), mc.n_layer, mc.n_embd, mc.block_size)
        self.peak_flops = peak_flops(self.device)
        self.flush_every = tc.flush_every or (32 if self.device.type == "cuda" else 1)

        # Progress through the run; a resume overwrites it. GI-Adam: the stepper sets v_0 at the
        # first update (of parameters without an optimizer state: not again after a resume).
        self.progress = Progress(second_moment_pending=cfg.optim.adam_init == "grad")
        self.val_history: list[tuple[int, float]] = []
        self.val_history_ema: list[tuple[int, float]] = []  # the weight average's (optim.ema)
        self.wandb_id: str | None = None
        self.elapsed_before = 0.0  # training seconds of earlier sessions of a resumed run
        self.resumed_from: Path | None = None
        self.branched_from: Path | None = None
        self.saved_step: int | None = None  # the step of the newest checkpoint of this run
        self.damaged: list = []  # newer checkpoints that resume=auto passed over, set aside at the start
        if tc.resume:
            self.resume(found)

        adam = {Key.BETA2: self.plan.beta2, Key.EPS: self.plan.eps} if self.plan.lr_scaling == "sqrt_adam" else {}
        self.records = StepRecords(RecordSchema.of_run(
            cfg, self.scaler is not None, self.flops_per_token,
            self.peak_flops * self.ddp.world_size if self.peak_flops else None, adam), self.device)
        self.flush_seconds = 0.0
        self.val_at: dict[int, Evaluation] = {}  # evaluations waiting for their step's record
        self.last_eval: Evaluation | None = None  # the newest evaluation (the final one, at the end)
        self.last_record = {}
        self.t0 = time.time()

    # --- the typed API's views ---

    @property
    def step(self) -> int:
        """Updates done (the progress's step)."""
        return self.progress.step

    @step.setter
    def step(self, value: int) -> None:
        self.progress.step = value

    @property
    def tokens_seen(self) -> int:
        return self.progress.tokens

    @property
    def adam_init_pending(self) -> bool:
        """GI-Adam: whether v_0 is still to be set at the next update."""
        return self.progress.second_moment_pending

    def step_parts(self) -> StepParts:
        """What a stepper uses of this run, typed; its progress is this run's own."""
        return StepParts(self.cfg, self.progress, self.plan, self.model, self.step_model, self.model_config,
                         self.optimizer, self.scaler, self.ema, self.train_batches, self.val_batches, self.runtime,
                         self.records, self.monitor, self.sharpness)

    def run(self) -> RunResult:
        if self.cfg.trainer.eval_only:
            return self.evaluate_only()
        finished = (completed_summary(self.run_dir, self.step) if self.resumed_from and not self.branched_from
                    and self.step >= self.total_steps else None)
        if finished is not None:  # e.g. a Slurm requeue of a job that had completed: change nothing
            self.say(f"resume: the run in {self.run_dir} is complete (step {self.step} of {self.total_steps}); "
                     "nothing to do")
            self.close()
            return RunResult(RunStatus.COMPLETED, finished.get("final_val_loss"), finished, self.run_dir,
                             self.resumed_from)
        return fit([self], ModelStepper(self))[0]

    def close(self) -> None:
        """Release the run folder (the lock); fit() does it when the run ends."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # --- the parts fit() calls ---

    def open(self, shared_process: bool = False) -> None:
        """The run folder's records made this run's, the run announced, its metrics opened (a
        stack's runs share one process, no bars)."""
        cfg = self.cfg
        if self.ddp.is_main:
            continue_records(self.run_dir, self.step, self.resumed_from, self.branched_from, self.damaged, self.say)
        self.say(f"device: {self.device}, precision {self.precision}, "
                 f"{self.ddp.world_size} rank(s), compile {'on' if cfg.trainer.compile else 'off'}")
        self.say(f"model: {self.model.describe()}")
        for line in self.plan.lines(cfg.trainer.micro_batch_size, self.ddp.world_size, self.data.meta["train_tokens"]):
            self.say(line)
        if self.ddp.is_main and cfg.trainer.schedule_plot:
            plot_schedule_curve(self.plan.schedule, self.plan.peak_lr, self.run_dir / "schedule.png")
        self.metrics = MetricsLogger(
            self.run_dir, cfg.logger, config=cfg.to_dict(), total_steps=self.total_steps, start_step=self.step,
            wandb_id=self.wandb_id, progress=cfg.trainer.progress and not shared_process, enabled=self.ddp.is_main,
            run_name=cfg.run_name, shared_process=shared_process)
        self.wandb_id = self.metrics.wandb_id

    def evaluation(self) -> Evaluation:
        """The mean cross-entropy over the fixed validation windows (split across ranks), at the
        optimizer's evaluation point (schedule-free AdamW's average; the weights otherwise), with
        its standard error and, when on, the z-loss term (not part of the loss); with optim.ema,
        the weight average's loss too."""
        with eval_point(self.optimizer, self.params):
            evaluation = self._val_loss()
        if self.ema is not None:
            with self.ema.swapped_in():
                evaluation.ema_loss = self._val_loss().loss  # val/z_loss and the standard error stay the weights' own
        self.last_eval = evaluation
        return evaluation

    def evaluate(self) -> float:
        """The validation loss (evaluation().loss)."""
        return self.evaluation().loss

    @torch.no_grad()
    def _val_loss(self) -> Evaluation:
        self.model.eval()
        z_on = self.cfg.model.z_loss > 0
        # cross-entropy sum, batch count, z sum, sum of squared batch cross-entropies
        total = torch.zeros(4, device=self.device, dtype=torch.float64)
        for i in range(self.ddp.rank, self.cfg.trainer.eval_iters, self.ddp.world_size):
            x, y = self.val_batches.eval_batch(i)
            with self.runtime.autocast():
                _, loss = self.eval_model(x, y, with_z_loss=False)
            total[0] += loss.double()
            total[1] += 1
            total[3] += loss.double() ** 2
            if z_on:
                total[2] += self.model.z_term.double()
        if self.ddp.enabled:
            dist.all_reduce(total)
        self.model.train()
        n, mean = float(total[1]), float(total[0] / total[1])
        return Evaluation(mean, batch_stderr(float(total[0]), float(total[3]), n),
                          float(total[2] / total[1]) if z_on else None)

    def evaluate_only(self) -> RunResult:
        """trainer.eval_only: the validation loss of init_from's weights (eval_iters batches, with
        its standard error), to metrics.jsonl, summary.json and the log; nothing is trained."""
        t0 = time.time()
        try:
            self.metrics = MetricsLogger(self.run_dir, self.cfg.logger, config=self.cfg.to_dict(), total_steps=0,
                                         progress=False, enabled=self.ddp.is_main, run_name=self.cfg.run_name)
            step = self.init_origin["step"]
            evaluation = self.evaluation()
            evaluation.ema_loss = None  # the weights of init_from are evaluated, no average of them
            loss = evaluation.loss
            self.metrics.log({Key.STEP: step, **evaluation.fields()})
            tc, entropy = self.cfg.trainer, self.data.meta.get("unigram_entropy_val")
            summary = {
                "status": RunStatus.COMPLETED.value, "task": "eval_only", "reason": "", "step": step,
                "total_steps": step, "final_val_loss": loss, "val_loss_stderr": evaluation.stderr,
                "final_val_z_loss": evaluation.z_loss, "best_val_loss": loss, "initial_val_loss": None,
                "unigram_entropy_val": entropy,
                "val_loss_over_unigram_entropy": round(loss / entropy, 4) if entropy else None,
                "eval_iters": tc.eval_iters, "eval_tokens": tc.eval_iters * tc.micro_batch_size * self.cfg.model.block_size,
                "tokens": 0, "wall_time_s": round(time.time() - t0, 2), "device": self.runtime.device_name(),
                "precision": self.precision, "world_size": self.ddp.world_size, "n_params": self.model.num_params(),
                "checkpoint": None, "init_from": self.init_origin,
            }
            if self.ddp.is_main:
                write_summary(self.run_dir, summary)
            self.metrics.close(summary)
            return RunResult(RunStatus.COMPLETED, loss, summary, self.run_dir)
        except BaseException:
            if hasattr(self, "metrics"):
                self.metrics.close(failed=True)
            raise
        finally:
            self.close()

    def evaluated(self, step: int, evaluation: Evaluation, final: bool = False) -> None:
        """Note the evaluation at `step`: the step's record takes it, or a record of its own at the end."""
        self.last_eval = evaluation
        if not final:
            self.val_at[step] = evaluation
            return
        self._note_evaluation(step, evaluation)
        record = {Key.STEP: step, Key.VAL_LOSS: evaluation.loss, Key.TOKENS: self.tokens_seen}
        record.update(evaluation.fields())
        self.metrics.log(record)

    def _note_evaluation(self, step: int, evaluation: Evaluation) -> None:
        self.val_history.append((step, evaluation.loss))
        if evaluation.ema_loss is not None:
            self.val_history_ema.append((step, evaluation.ema_loss))

    def flush(self, wait: bool = False) -> None:
        """Write the records whose values reached the host (all pending ones when `wait`)."""
        start = time.perf_counter()
        for record in self.records.flush(wait):
            evaluation = self.val_at.pop(record[Key.STEP], None)
            if evaluation is not None:
                record.update(evaluation.fields())
                self._note_evaluation(record[Key.STEP], evaluation)
            record.update(self.monitor.observe(record))
            self.metrics.log(record)
            for watch in self.watchers:
                self.stop_reason = self.stop_reason or watch(record)
            self.last_record = record
        self.metrics.flush()
        self.flush_seconds += time.perf_counter() - start

    def ended(self) -> RunStatus | None:
        """Diverged (when that stops the run) or stopped by a watcher: the run ends here."""
        if self.monitor.verdict.diverged and self.cfg.monitor.stop_on_divergence:
            return RunStatus.DIVERGED
        return RunStatus.STOPPED if self.stop_reason else None

    def resumed_here(self) -> bool:
        """Whether the newest checkpoint is of the current step (nothing new to save)."""
        return self.saved_step == self.step

    # --- checkpoints ---

    def init_weights(self, path: Path, state: dict) -> None:
        """trainer.init_from: this run's model takes the checkpoint's weights, nothing else of it."""
        check_tokenizer(state, path, (self.data.cache_dir / "tokenizer.json").read_text())
        saved_vocab = state.get("model_config", {}).get("vocab_size")
        if saved_vocab is not None and saved_vocab != self.model_config.vocab_size:
            raise UserError(f"trainer.init_from: {path} has a vocabulary of {saved_vocab} tokens, this run's data "
                            f"{self.model_config.vocab_size}; use the data settings it was trained with")
        self.model.load_state_dict(state["model"])
        self.init_origin = origin(path, state)
        self.say(f"init_from: the weights of {path} (step {state['step']}, config {self.init_origin['config_hash']})"
                 + ("; evaluating them, no training" if self.cfg.trainer.eval_only
                    else "; a fresh optimizer and this run's schedule, from step 0"))

    def save(self) -> Path | None:
        """Every rank calls it (the RNG states are gathered from all); rank 0 writes."""
        rng_ranks = rank_rng_states(self.ddp, self.device)
        if not self.ddp.is_main:
            return None
        if hasattr(self, "metrics"):
            self.metrics.sync()  # the records up to this step are on the disk before the checkpoint is
        # Schedule-free is saved at its average; the state holds the live tensors, so it is written inside.
        with eval_point(self.optimizer, self.params) as train_point:
            path = save_checkpoint(self.state_dict(rng_ranks, train_point), checkpoint_path(self.run_dir, self.step))
        prune_checkpoints(self.run_dir, self.cfg.trainer.keep_checkpoints)
        self.saved_step = self.step
        self.say(f"checkpoint: step {self.step} -> {path}")
        return path

    def resume(self, found: tuple[Path, dict, list] | None) -> None:
        path, state, self.damaged = found if found else (None, None, [])
        if state is None:
            return self.say(f"resume: no checkpoint in {self.run_dir}; starting from step 0")
        check_resume_step(path, state["step"], self.total_steps)
        check_compatible(state, path, vars(self.model_config), self.data.cache_dir.name, self.data.meta.get("sha256"))
        changed = verify_tokens(self.data.cache_dir, self.data.meta, full=True)  # every resume: the whole files
        if changed:
            raise UserError(f"trainer.resume: the token cache {self.data.cache_dir} changed after it was written: "
                            f"{changed}; delete it so that the next start rebuilds it, then resume")
        self.load_state_dict(state, path)
        self.resumed_from, self.saved_step = path, self.step
        self.branched_from = path if is_branch(path, self.run_dir) else None
        if self.branched_from:
            self.wandb_id = None  # a branch is a new run of its own

    def state_dict(self, rng_ranks: list[dict], train_point: list | None = None) -> dict:
        """Everything a resume of this run needs, as plain values (a checkpoint's content).
        `rng_ranks`: every rank's RNG state (runtime.rank_rng_states, gathered from all ranks).
        `train_point`: schedule-free AdamW's training weights (the model holds its evaluation
        point then: save() writes inside eval_point)."""
        return {
            "format_version": FORMAT_VERSION,  # metrics.FORMAT_VERSION; none in a checkpoint written before it: 0
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "train_point": train_point,
            "ema": self.ema.state_dict() if self.ema is not None else None,  # optim.ema's average
            "val_history_ema": [list(v) for v in self.val_history_ema],
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.progress.step,
            "tokens_seen": self.progress.tokens,
            "rng": rng_ranks[0],
            "rng_ranks": rng_ranks,
            "monitor": self.monitor.state_dict(),
            "val_history": [list(v) for v in self.val_history],
            "config": self.cfg.to_dict(),
            "model_config": vars(self.model_config).copy(),
            "data_key": self.data.cache_dir.name,
            "data_sha256": self.data.meta.get("sha256"),  # the token files' hashes: a resume trains on these tokens
            "tokenizer": (self.data.cache_dir / "tokenizer.json").read_text(),  # samplers need no data cache
            "wandb_id": self.wandb_id,
            "init_from": self.init_origin,  # where a run begun with trainer.init_from took its weights (or None)
            "elapsed": self.elapsed_before + (time.time() - self.t0),
        }

    def load_state_dict(self, state: dict, path: Path) -> None:
        """Take a checkpoint's state (checked by resume(); `path` names it in errors and notes):
        the parts' states, this rank's RNG state, the progress and the histories. A checkpoint
        of an earlier format lacks some keys (the weight average, its history, the elapsed
        time): their defaults."""
        for name, part in (("model", self.model), ("scaler", self.scaler), ("monitor", self.monitor)):
            if part is not None and state.get(name) is not None:
                part.load_state_dict(state[name])
        set_rng_state(own_rng_state(state, self.ddp), self.device)
        # After the model: schedule-free's weights go back from the saved average to the training point.
        load_optimizer_state(self.optimizer, state["optimizer"], path, self.params, state.get("train_point"))
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema.restart()
                self.say(f"resume: {path} holds no weight average; optim.ema starts from its weights")
        self.val_history_ema = [tuple(v) for v in state.get("val_history_ema") or []]
        self.progress.step, self.progress.tokens = state["step"], state["tokens_seen"]
        self.val_history = [tuple(v) for v in state["val_history"]]
        self.elapsed_before = state.get("elapsed", 0.0)
        self.wandb_id = state.get("wandb_id")
        self.init_origin = state.get("init_from")  # a run begun with trainer.init_from keeps saying so

    # --- the end ---

    def finish(self, status: RunStatus, checkpoint: Path | None, wall: float, stop_signal: int | None = None,
               **extra) -> RunResult:
        summary = self.summary(status, wall, checkpoint, stop_signal)
        summary.update(extra)
        if self.ddp.is_main:
            write_summary(self.run_dir, summary)
        self.metrics.close(summary)
        final = summary["final_val_loss"] if status == RunStatus.COMPLETED else math.inf
        return RunResult(status, final, summary, self.run_dir, checkpoint)


    def summary(self, status: RunStatus, wall: float, checkpoint: Path | None, stop_signal: int | None = None) -> dict:
        """summary.json's content (one flat dict; docs/reading_a_run.md lists the fields) for this
        run ending with `status` after `wall` seconds."""
        verdict = self.monitor.verdict
        vals = [v for _, v in self.val_history]
        final = self.val_history[-1][1] if self.val_history and status == RunStatus.COMPLETED else None
        last = self.last_eval if final is not None else None  # the final evaluation's
        entropy = self.data.meta.get("unigram_entropy_val")
        train_seconds = self.elapsed_before + (time.time() - self.t0)
        reasons = {RunStatus.DIVERGED: verdict.reason, RunStatus.STOPPED: self.stop_reason,
                   RunStatus.INTERRUPTED: f"stopped by {signal.Signals(stop_signal).name}" if stop_signal else ""}
        summary = {
            "format_version": FORMAT_VERSION,  # as write_summary puts it in the file: the result and the file agree
            "status": status.value,
            "reason": reasons.get(status, ""),
            "diverged_step": verdict.step if status == RunStatus.DIVERGED else None,
            "step": self.progress.step,
            "total_steps": self.plan.total_steps,
            "final_val_loss": final,  # cross-entropy; with the z-loss on, its term is final_val_z_loss
            # the final evaluation's standard error over its batches (val/loss_stderr), as eval_only's summary
            "val_loss_stderr": last.stderr if last is not None else None,
            "final_val_z_loss": last.z_loss if last is not None and self.cfg.model.z_loss > 0 else None,
            "best_val_loss": min(vals) if vals else None,
            # optim.ema: the weight average's validation loss (None without one)
            "final_val_loss_ema": self.val_history_ema[-1][1] if final is not None and self.val_history_ema else None,
            "best_val_loss_ema": min(v for _, v in self.val_history_ema) if self.val_history_ema else None,
            "initial_val_loss": self.val_history[0][1] if self.val_history and self.val_history[0][0] == 0 else None,
            "unigram_entropy_val": entropy,
            "val_loss_over_unigram_entropy": round(final / entropy, 4) if final and entropy else None,
            "final_train_loss": self.last_record.get(Key.LOSS),
            "tokens": self.progress.tokens,
            "peak_lr": self.plan.peak_lr,
            "configured_lr": self.cfg.optim.lr,
            "schedule": self.plan.schedule.name,
            "plan": self.plan.describe(),
            "wall_time_s": round(wall, 2),
            "train_time_s": round(train_seconds, 2),
            "tok_per_s": round(self.progress.tokens / train_seconds, 1) if train_seconds > 0 else None,
            "device": self.runtime.device_name(),
            "precision": self.precision,
            "world_size": self.ddp.world_size,
            "n_params": self.model.num_params(),
            "checkpoint": str(checkpoint) if checkpoint else None,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "branched_from": str(self.branched_from) if self.branched_from else None,
            "init_from": self.init_origin,  # trainer.init_from: {path, step, config_hash} of the weights it began with
        }
        summary.update(self.monitor.summary())
        return summary


def train(cfg: Config, run_dir: Path, quiet: bool = False) -> RunResult:
    return Trainer(cfg, run_dir, quiet=quiet).run()


def advance(stepper) -> None:
    """One update and the periodic hand-off of records: fit()'s loop body, what bench.py times."""
    with stepper.runs[0].runtime.sync_checked():  # trainer.sync_debug
        stepper.train_step()
        if stepper.step % stepper.runs[0].flush_every == 0:
            for r in stepper.runs:
                r.flush()


def fit(runs: list[Trainer], stepper, shared_process: bool = False, **extra) -> list[RunResult]:
    """Train `runs` (one, or a stack sharing their length and intervals) to the end, with
    `stepper` doing each update; `extra` goes into every summary. A run that diverges or is
    stopped by a watcher is finished at once and dropped from the stepper; the others go on.
    Each run's folder is released when fit() returns, whatever happened."""
    first, tc = runs[0], runs[0].cfg.trainer
    results: dict[int, RunResult] = {}

    def end(r: Trainer, status: RunStatus, stop_signal: int | None = None) -> None:
        ckpt = None
        if status in (RunStatus.COMPLETED, RunStatus.INTERRUPTED) and r.checkpoints:
            ckpt = r.resumed_from if r.resumed_here() else stepper.save(r)
        results[id(r)] = r.finish(status, ckpt, time.time() - t_start, stop_signal, **extra)
        stepper.drop(r)

    # The signal handlers go back only after every summary is written: a second signal while
    # they are written is still just a request.
    with StopSignals(first.ddp) as stop:
        try:
            for r in runs:
                r.open(shared_process)
            t_start = time.time()
            for r in runs:
                r.t0 = t_start  # training time starts now for all, not at each run's announcement
            while stepper.runs and stepper.step < first.total_steps:
                step = stepper.step
                if step % tc.eval_interval == 0:
                    for r, v in zip(list(stepper.runs), stepper.evaluate()):
                        r.evaluated(step, v)
                if stop.stop is not None:
                    break
                if first.checkpoints and tc.ckpt_interval and step % tc.ckpt_interval == 0 and step > 0:
                    for r in list(stepper.runs):
                        if not r.resumed_here():
                            # Every record up to here lands first: a divergence they reveal ends
                            # the run without a checkpoint of the diverged state (which resume=auto
                            # would take); the last good checkpoint stays the newest. Under DDP
                            # every rank has then seen the same records: they agree without a word.
                            r.flush(wait=True)
                            if (status := r.ended()) is not None:
                                end(r, status)
                            else:
                                stepper.save(r)
                    if not stepper.runs:
                        break
                advance(stepper)
                at_flush = stepper.step % first.flush_every == 0
                if first.ddp.enabled:
                    # Each rank sees the records that have landed on it, which may be a flush
                    # apart: the ranks decide together, at the flush steps they share, so that no
                    # rank leaves the loop alone (the others would wait in an all-reduce for ever).
                    if not at_flush:
                        continue
                    if not stop.agree(first.device, any(r.ended() is not None for r in stepper.runs)):
                        continue
                    for r in list(stepper.runs):
                        r.flush(wait=True)  # every rank now holds every record, and the same verdict
                        end(r, r.ended() or RunStatus.DIVERGED)
                    continue
                if at_flush:
                    stop.agree(first.device)
                for r in list(stepper.runs):
                    if (status := r.ended()) is not None:
                        r.flush(wait=True)
                        end(r, status)
            for r in list(stepper.runs):
                r.flush(wait=True)
                if r.ended() == RunStatus.DIVERGED:  # noticed when the last records landed
                    end(r, RunStatus.DIVERGED)
            if stepper.runs and stop.stop is None:
                for r, v in zip(list(stepper.runs), stepper.evaluate()):
                    r.evaluated(r.step, v, final=True)
            status = RunStatus.COMPLETED if stop.stop is None else RunStatus.INTERRUPTED
            for r in list(stepper.runs):
                end(r, status, stop.stop)
        finally:
            for r in runs:  # a crash: close what is still open, as failed
                if id(r) not in results and hasattr(r, "metrics"):
                    summary = {"status": RunStatus.FAILED.value, "step": r.step}
                    if r.ddp.is_main:
                        write_summary(r.run_dir, summary)
                    r.metrics.close(summary, failed=True)
                r.close()
    return [results[id(r)] for r in runs]


def build_model(model_config, device: torch.device):
    """The GPT on its device; an allocation that fails (a model the precheck's estimate let
    through, memory taken by others) is one line, not a traceback."""
    try:
        return GPT(model_config).to(device)
    except (MemoryError, torch.OutOfMemoryError) as e:
        reason = type(e).__name__
    except RuntimeError as e:
        if "alloc" not in str(e).lower():
            raise
        reason = str(e).splitlines()[0][:200]
    raise UserError(f"model: cannot allocate the model on {device} ({reason}); use a smaller model.n_layer / "
                    "model.n_embd / data.vocab_size, or free memory") from None
