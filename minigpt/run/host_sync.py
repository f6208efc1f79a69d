"""A host-sync detector: the CPU stand-in for `torch.cuda.set_sync_debug_mode("error")`.

On a GPU the host queues work and goes on; any read of a device value on the host (`.item()`,
`float(t)`, `if t:`, `.cpu()`, `.tolist()`, `.numpy()`) makes it wait until the GPU has caught
up, and `torch.tensor(value, device=...)` copies from pageable memory, which waits too. One of
them in the training step costs every step a round trip. torch's sync debug mode catches them,
but only on a GPU; this detector records the same operations on any device, with the file and
line of our code that asked for them, so a CPU test fails when a new one enters the step.

    with HostSyncDetector(device) as syncs:
        syncs.label = step              # optional: which update each sync belongs to
        ...                             # the code under test
    syncs.events                        # [HostSync(kind, where, origin, label), ...]

On a CUDA device it counts reads of CUDA tensors. On a CPU it emulates one: every tensor
counts as a device tensor except those marked as host memory with `mark_host` (what the
pinned-memory copy of the records is on a GPU; `EmulatedCudaEvents` marks its copies so).
`.to(device)` is checked on CUDA only: on a CPU standing in for a GPU, a move to the run's
device and a move to the host name the same device (`.cpu()` is still seen).

Two layers see the calls: a TorchFunctionMode the Python-level ones (`Tensor.item`,
`__bool__`, `cpu`, `tolist`, `torch.tensor(..., device=)`, ...), a TorchDispatchMode what
torch's own code does underneath (`aten._local_scalar_dense` from C++ code, and operators whose
output size depends on the data, which wait on CUDA: nonzero, masked_select, unique, ...).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
_THIS_FILE = str(Path(__file__).resolve())
_HOST_MARK = "_minigpt_host_memory"

# Python-level reads of a tensor's value on the host.
_READS = {
    torch.Tensor.item: "item", torch.Tensor.__float__: "float", torch.Tensor.__int__: "int",
    torch.Tensor.__bool__: "bool", torch.Tensor.__index__: "index", torch.Tensor.tolist: "tolist",
    torch.Tensor.numpy: "numpy", torch.Tensor.cpu: "cpu",
}
# Host data to the device through pageable memory: a copy the host waits for.
_FROM_HOST = {torch.tensor: "tensor(device=)", torch.as_tensor: "as_tensor(device=)",
              torch.asarray: "asarray(device=)"}
# Operators whose output size depends on the values: CUDA copies a count back to the host.
_DATA_DEPENDENT = {"aten::nonzero", "aten::masked_select", "aten::_unique2", "aten::unique_dim",
                   "aten::unique_consecutive", "aten::repeat_interleave"}


def mark_host(t: torch.Tensor) -> torch.Tensor:
    """Mark `t` as host memory (a pinned copy that has landed): reading it waits for nothing."""
    setattr(t, _HOST_MARK, True)
    return t


@dataclass(frozen=True)
class HostSync:
    kind: str  # item, float, bool, cpu, tolist, tensor(device=), _local_scalar_dense, nonzero, ...
    where: str  # "file.py:line" of the innermost frame outside torch: the code of ours that asked
    origin: str  # "file.py:line" of the innermost frame at all (inside torch when torch synced)
    label: object = None  # the detector's label when it happened (e.g. the step)

    def __str__(self) -> str:
        inner = f" (in {self.origin})" if self.origin != self.where else ""
        at = f" [{self.label}]" if self.label is not None else ""
        return f"{self.kind} at {self.where}{inner}{at}"


def _frames():
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if path != _THIS_FILE and not path.startswith("<frozen"):
            yield path, frame.f_lineno
        frame = frame.f_back


def _place(path: str, line: int) -> str:
    return f"{Path(path).name}:{line}"


class HostSyncDetector:
    """Records every host-device synchronisation inside its `with` block (see the module doc)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.emulated = self.device.type == "cpu"  # a CPU run stands in for a CUDA one
        self.events: list[HostSync] = []
        self.label = None
        self._quiet = 0  # > 0 while a read already recorded runs (its own _local_scalar_dense)
        self._function_mode = _FunctionMode(self)
        self._dispatch_mode = _DispatchMode(self)

    def __enter__(self) -> "HostSyncDetector":
        self._function_mode.__enter__()
        self._dispatch_mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._dispatch_mode.__exit__(*exc)
        self._function_mode.__exit__(*exc)

    def on_device(self, t) -> bool:
        if not isinstance(t, torch.Tensor) or getattr(t, _HOST_MARK, False) or getattr(t._base, _HOST_MARK, False):
            return False  # not a tensor, or host memory (or a view of it)
        return True if self.emulated else t.device.type == "cuda"

    def is_device(self, device) -> bool:
        if device is None:
            return False
        return True if self.emulated else torch.device(device).type == "cuda"

    def record(self, kind: str) -> None:
        frames = list(_frames())
        origin = _place(*frames[0]) if frames else "?"
        ours = next((f for f in frames if not f[0].startswith(_TORCH_DIR)), frames[0] if frames else None)
        self.events.append(HostSync(kind, _place(*ours) if ours else "?", origin, self.label))

    # --- what tests ask of it ---

    def report(self) -> str:
        return "\n".join(str(e) for e in self.events) or "no host syncs"


class _FunctionMode(TorchFunctionMode):
    def __init__(self, detector: HostSyncDetector):
        super().__init__()
        self.d = detector

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = None
        if func in _READS and args and self.d.on_device(args[0]):
            kind = _READS[func]
        elif (func is torch.Tensor.to and not self.d.emulated and args and self.d.on_device(args[0])
              and _to_host(args, kwargs)):
            kind = "to(cpu)"
        elif func in _FROM_HOST and self.d.is_device(kwargs.get("device")) and not (
                args and isinstance(args[0], torch.Tensor)):
            kind = _FROM_HOST[func]
        if kind is None:
            return func(*args, **kwargs)
        self.d.record(kind)
        self.d._quiet += 1
        try:
            return func(*args, **kwargs)
        finally:
            self.d._quiet -= 1


def _to_host(args, kwargs) -> bool:
    """Tensor.to(...) towards the CPU, and waiting (non_blocking copies into pinned memory do not)."""
    target = kwargs.get("device")
    for a in args[1:]:
        if isinstance(a, (str, torch.device)):
            target = a
    if target is None or kwargs.get("non_blocking") or (len(args) > 2 and args[-1] is True):
        return False
    return torch.device(target).type == "cpu"


class _DispatchMode(TorchDispatchMode):
    def __init__(self, detector: HostSyncDetector):
        super().__init__()
        self.d = detector

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if not self.d._quiet:
            if name == "aten::_local_scalar_dense" and self.d.on_device(args[0]):
                self.d.record("_local_scalar_dense")
            elif name in _DATA_DEPENDENT and args and self.d.on_device(args[0]) and not (
                    name == "aten::repeat_interleave" and kwargs.get("output_size") is not None):
                self.d.record(name.split("::")[1])
        return func(*args, **kwargs)


class EmulatedCudaEvents:
    """records.StepRecords' CUDA events, for a CPU run under the detector: the copy to the host
    is a clone marked as host memory, every event has completed, and the step's time is measured
    on the host. (Tests that need events still in flight use their own stand-in.)"""

    class _Event:
        def __init__(self):
            self.t = 0.0

        def record(self):
            self.t = time.perf_counter()

        def query(self) -> bool:
            return True

        def synchronize(self) -> None:
            pass

        def elapsed_time(self, end) -> float:
            return (end.t - self.t) * 1000

    def timing(self) -> tuple:
        return self._Event(), self._Event()

    def to_host(self, values: torch.Tensor) -> torch.Tensor:
        return mark_host(values.detach().clone())

    def copy_done(self):
        return self._Event()
