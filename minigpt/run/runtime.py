"""Where a run executes: device, precision, DDP ranks, RNG state, and stop signals.

Everything here is about the process and the hardware, nothing about the model or the data:
the trainer asks for a `Runtime` once and reads it from then on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from minigpt.config import Config, TrainerConfig
from minigpt.errors import UserError

log = logging.getLogger("minigpt")

# SIGUSR2 is submitit's preemption / time-limit signal: under hydra/launcher=slurm the job then
# requeues itself (minigpt/launch/jobs.py) and continues from the checkpoint saved at the stop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
SYNC_DEBUG_AFTER = 3  # updates of a process that trainer.sync_debug leaves unchecked (compile, allocation)


@dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Distributed:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())


def check_cuda(name: str) -> None:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no CUDA GPU is visible (torch.cuda.is_available() is False); "
                        "use trainer.device=cpu or trainer.device=auto")


def resolve_device(name: str, ddp: Distributed) -> torch.device:
    check_cuda(name)
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(ddp.local_rank)
        return torch.device("cuda", ddp.local_rank)
    return torch.device("cpu")


def check_compile_backend(tc: TrainerConfig) -> None:
    """An unknown torch.compile backend fails only when the model first runs, after the data is
    prepared: refuse it up front. (The mode is checked with the config's other values.)"""
    if not tc.compile:
        return
    import torch._dynamo

    if tc.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):  # debug backends included
        import difflib

        usual = torch._dynamo.list_backends()
        close = difflib.get_close_matches(tc.compile_backend, usual, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"trainer.compile_backend: unknown torch.compile backend {tc.compile_backend!r}{hint}; "
                        f"valid: {', '.join(usual)}")


def native_bf16(device: torch.device) -> bool:
    """Whether the GPU computes in bf16 itself (compute capability 8.0 on: A100, H100, RTX 30xx
    on). torch.cuda.is_bf16_supported() also says yes where bf16 is only emulated (V100, T4),
    several times slower than fp16 there."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(name: str, device: torch.device, say=log.info) -> str:
    if device.type == "cuda":
        gpu, capability = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
        if native_bf16(device):
            return "bf16" if name == "auto" else name
        cc = f"compute capability {capability[0]}.{capability[1]}"
        if name == "auto":
            say(f"precision auto: {gpu} ({cc}) has no native bf16 (torch would emulate it); "
                "fp16 with loss scaling instead")
            return "fp16"
        if name == "bf16":
            raise UserError(f"trainer.precision=bf16 but {gpu} ({cc}) has no native bf16 (torch would emulate it, "
                            "slower than fp32); use trainer.precision=fp16 (or auto) on this GPU")
        return name
    if name == "fp16":
        raise UserError("trainer.precision=fp16 needs a CUDA GPU (on the CPU there is no fp16 loss scaling); "
                        "use trainer.precision=fp32 or bf16 on the CPU")
    return "fp32" if name == "auto" else name


def check_sync_debug(cfg: Config, precision: str) -> None:
    """trainer.sync_debug=error fails a run at its first host-device synchronisation in the step;
    options that synchronise there on purpose would fail it after a few updates: refused here,
    at the start, instead (docs/performance.md lists what synchronises and why)."""
    if cfg.trainer.sync_debug != "error":
        return
    fused = cfg.optim.fused == "on" or (cfg.optim.fused == "auto" and cfg.trainer.device != "cpu")
    on_purpose = [("monitor.skip_spikes=true", "it reads the step's loss and grad norm to decide the skip",
                   cfg.monitor.skip_spikes),
                  (f"monitor.sharpness_every={cfg.monitor.sharpness_every}", "each measurement reads its result",
                   bool(cfg.monitor.sharpness_every)),
                  ("trainer.precision=fp16 with optim.fused=off",
                   "the gradient scaler reads the inf check of an unfused optimizer", precision == "fp16" and not fused)]
    for name, why, on in on_purpose:
        if on:
            raise UserError(f"trainer.sync_debug=error with {name}: {why}, a synchronisation on purpose; "
                            "use trainer.sync_debug=warn or turn the option off")


@dataclass
class Runtime:
    ddp: Distributed
    device: torch.device
    precision: str  # fp32 | bf16 | fp16, resolved for the device
    sync_debug: str | None = None  # trainer.sync_debug: warn | error on a host-device sync in the step
    updates_run: int = 0  # updates this process has run (the first ones compile and allocate)

    @classmethod
    def start(cls, tc: TrainerConfig) -> "Runtime":
        ddp = setup_distributed(tc.device)
        device = resolve_device(tc.device, ddp)
        precision = resolve_precision(tc.precision, device)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # leftover fp32 matmuls on tensor cores
            torch.backends.cudnn.allow_tf32 = True
        check_compile_backend(tc)
        return cls(ddp, device, precision, tc.sync_debug)

    def wrap(self, model: torch.nn.Module, tc: TrainerConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(the module that trains: compiled and DDP-wrapped as configured, the module that
        evaluates: compiled only, as evaluation syncs nothing between ranks)."""
        step_model = model
        if tc.compile:
            step_model = torch.compile(model, backend=tc.compile_backend, mode=tc.compile_mode)
        eval_model = step_model
        if self.ddp.enabled:
            from torch.nn.parallel import DistributedDataParallel

            step_model = DistributedDataParallel(
                step_model, device_ids=[self.ddp.local_rank] if self.device.type == "cuda" else None)
        return step_model, eval_model

    def autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    @contextlib.contextmanager
    def sync_checked(self):
        """Around one update and its record hand-off: with trainer.sync_debug on CUDA, torch
        warns about (warn) or raises at (error) any operation that makes the host wait for the
        GPU. The first SYNC_DEBUG_AFTER updates of a process are left alone: compilation and
        first allocations may wait, and are not the loop being measured. No-op on a CPU."""
        self.updates_run += 1
        if self.sync_debug is None or self.device.type != "cuda" or self.updates_run <= SYNC_DEBUG_AFTER:
            yield
            return
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(self.sync_debug)
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)

    def device_name(self) -> str:
        return str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device)


class StopSignals:
    """SIGTERM, SIGINT and SIGUSR1 ask for a stop at the next step boundary, while installed.

    `received` is what this process caught; `stop` is the stop every rank agreed on (under DDP
    the ranks share what any of them caught at `agree`, so all of them stop at the same step)."""

    def __init__(self, ddp: Distributed):
        self.ddp = ddp
        self.received: int | None = None
        self.stop: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> "StopSignals":
        def request_stop(signum, frame):
            if self.received is not None:  # a second Ctrl-C: the stop is on its way, say so
                os.write(2, f"\n{signal.Signals(signum).name}: already stopping; the checkpoint is being saved at "
                            "the step boundary, then the run exits\n".encode())
            self.received = signum
            if not self.ddp.enabled:
                self.stop = signum

        for sig in STOP_SIGNALS:
            try:
                self.previous[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def agree(self, device: torch.device, ended: bool = False) -> bool:
        """At a step every rank shares (a flush step): the signal any rank caught becomes every
        rank's stop, and whether any rank's run ended (diverged, stopped by a watcher) is
        returned to all, so that no rank leaves the loop while the others wait in the next
        all-reduce. Without DDP: `ended` as given."""
        if not self.ddp.enabled:
            return ended
        flags = torch.tensor([self.received or 0, int(ended)], device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        signum, any_ended = flags.tolist()
        if signum:
            self.stop = int(signum)
        return bool(any_ended)


# --- RNG state (saved in checkpoints: a resumed run draws the same random numbers) --------------


# One process's generators: the CPU's, Python's, NumPy's and that of the one GPU it trains on
# (not every visible GPU's: a resume may see fewer, and under DDP each rank has its own). Under
# DDP a checkpoint holds every rank's state (gathered to rank 0) and each rank takes its own back.


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": _to_lists(random.getstate())}
    np_state = np.random.get_state()
    state["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # older checkpoints: every visible GPU's, in device order
        cuda = cuda[device.index or 0] if device.type == "cuda" and len(cuda) > (device.index or 0) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def rank_rng_states(ddp: Distributed, device: torch.device) -> list[dict]:
    """Every rank's rng_state, in rank order, on every rank (a collective under DDP: all ranks call it)."""
    own = rng_state(device)
    if not ddp.enabled:
        return [own]
    states: list = [None] * ddp.world_size
    dist.all_gather_object(states, own)
    return states


def own_rng_state(saved: dict, ddp: Distributed) -> dict:
    """This rank's state from a checkpoint: its own where the checkpoint holds one for its rank,
    else rank 0's (a resume with more ranks than the run had)."""
    ranks = saved.get("rng_ranks") or []
    return ranks[ddp.rank] if ddp.rank < len(ranks) else saved["rng"]


def _to_lists(x):  # a checkpoint holds lists, not tuples (weights_only loading)
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x
