"""The host-sync detector (minigpt/run/host_sync.py) and what it finds in the real training step.

On a GPU a host read of a device value in the step (`.item()`, `if t:`, `.tolist()`, ...) makes
every step wait for the GPU; trainer.sync_debug=error catches that on a GPU only. Here the same
step runs on the CPU under the detector, standing in for CUDA (every tensor a device tensor but
the records' host copy), with trainer.flush_every=32 as on CUDA so the delayed hand-off of the
records is inside the watched steps. The step must show exactly the syncs docs/performance.md
lists ("Host-device synchronisation"), and nothing more.
"""

from __future__ import annotations

import inspect
import linecache
import re
from pathlib import Path

import pytest
import torch

from minigpt.run.host_sync import HostSyncDetector, mark_host
from minigpt.run.stack import StackedStepper
from minigpt.run.stepper import ModelStepper
from minigpt.run.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
ON_CUDA = {"optim__fused": "on", "trainer__flush_every": 32, "trainer__max_steps": 60, "trainer__eval_interval": 1000}


def here(offset: int) -> str:
    """'test_host_sync.py:<line>' of the caller's line plus offset."""
    return f"{Path(__file__).name}:{inspect.currentframe().f_back.f_lineno + offset}"


def planted(kind: str, loss: torch.Tensor) -> str:
    """One sync of each kind, as a careless edit of the step would write it; returns its place."""
    if kind == "item":
        loss.item(); return here(0)  # noqa: E702
    if kind == "float":
        float(loss); return here(0)  # noqa: E702
    if kind == "bool":
        if loss > 0: return here(0)  # noqa: E701
    if kind == "cpu":
        loss.cpu(); return here(0)  # noqa: E702
    if kind == "tolist":
        loss.reshape(1).tolist(); return here(0)  # noqa: E702
    if kind == "tensor(device=)":
        torch.tensor(0.5, device=loss.device); return here(0)  # noqa: E702
    raise AssertionError(kind)


KINDS = ["item", "float", "bool", "cpu", "tolist", "tensor(device=)"]


def test_each_kind_of_sync_planted_in_the_step_is_reported_with_its_line(make_config, tmp_path, step_syncs):
    trainer = Trainer(make_config(**ON_CUDA), tmp_path, quiet=True)
    places = []
    model = trainer.step_model

    def forward_with_syncs(x, y):
        logits, loss = model(x, y)
        if trainer.step >= 30:  # the steps the fixture watches (30..33 of 4 around the flush at 32)
            places.append([planted(kind, loss.detach()) for kind in KINDS])
        return logits, loss

    trainer.step_model = forward_with_syncs
    syncs = step_syncs(ModelStepper(trainer), steps=4)
    assert len(places) == 4 and all(p == places[0] for p in places)
    assert [(e.kind, e.where) for e in syncs.events] == list(zip(KINDS, places[0])) * 4, syncs.report()
    assert [e.label for e in syncs.events] == [s for s in (30, 31, 32, 33) for _ in KINDS]


def test_host_memory_and_host_only_code_are_not_syncs():
    with HostSyncDetector("cpu") as syncs:
        host = mark_host(torch.arange(4.0))
        assert host.tolist() == [0.0, 1.0, 2.0, 3.0] and host[1].item() == 1.0 and float(host[2:3]) == 2.0
        torch.tensor([1.0, 2.0])  # a host tensor from host data: no copy to a device
        device = torch.arange(3.0)
        device.nonzero()  # output size from the data: CUDA reads a count back
    assert [e.kind for e in syncs.events] == ["nonzero"]


def test_records_read_from_device_memory_would_be_caught(make_config, tmp_path):
    """The records' CPU branch reads its values directly (.tolist()); on a GPU that would be a
    sync at every flush: under the detector without the CUDA-like host copy it is reported."""
    trainer = Trainer(make_config(**ON_CUDA), tmp_path, quiet=True)
    stepper = ModelStepper(trainer)
    stepper.train_step()
    with HostSyncDetector(trainer.device) as syncs:
        trainer.records.flush(wait=True)
    assert [(e.kind, e.where.split(":")[0]) for e in syncs.events] == [("tolist", "records.py")], syncs.report()


# --- the real step, per option: the documented syncs and nothing more ----------------------------

# The options that synchronise on purpose, and where (docs/performance.md says why). Every other
# option below must show none.
CASES = {
    "default": ({}, None),
    "bf16": ({"trainer__precision": "bf16"}, None),
    "fp16 stand-in": ({"trainer__precision": "bf16"}, None),  # + a CPU GradScaler, as CUDA fp16 has one
    "model.z_loss": ({"model__z_loss": 1e-4}, None),
    "optim.ema": ({"optim__ema": 10}, None),
    "monitor.skip_spikes": ({"monitor__skip_spikes": True}, "every"),
    "monitor.update_ratio": ({"monitor__update_ratio": True}, None),
    "monitor.max_attn_logit": ({"monitor__max_attn_logit": True}, None),
    "monitor.logz": ({"monitor__logz": True}, None),
    "monitor.sharpness_every": ({"monitor__sharpness_every": 5}, "measurements"),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c == "default" else pytest.mark.slow) for c in CASES])
def test_the_step_syncs_only_where_documented(case, make_config, tmp_path, step_syncs):
    overrides, expected = CASES[case]
    trainer = Trainer(make_config(**ON_CUDA, **overrides), tmp_path, quiet=True)
    if case == "fp16 stand-in":  # CUDA's fp16 path: loss scaling with fused AdamW
        trainer.scaler = torch.amp.GradScaler("cpu")
        trainer.records.fields.append("scaler_skipped")
    syncs = step_syncs(ModelStepper(trainer), steps=6)
    watched = list(range(29, 35))
    if expected is None:
        assert syncs.events == [], syncs.report()
    elif expected == "every":  # the skip decision reads the loss and the grad norm of each step
        assert [e.label for e in syncs.events] == [s for s in watched for _ in range(2)], syncs.report()
        for e in syncs.events:
            assert e.kind == "item" and e.where.startswith("stepper.py:")
            assert "should_skip" in linecache.getline(str(ROOT / "minigpt" / "run" / "stepper.py"),
                                                      int(e.where.split(":")[1]))
    else:  # sharpness: only the steps that measure (30 of 29..34), none in between
        assert {e.label for e in syncs.events} == {30}, syncs.report()
        assert {e.where.split(":")[0] for e in syncs.events} <= {"sharpness.py", "stepper.py"}
    assert trainer.last_record["step"] == 31  # the flush at step 32 was among the watched steps


@pytest.mark.slow  # a stack of two runs: seconds
def test_the_stacked_step_does_not_sync(make_config, tmp_path, step_syncs):
    configs = [make_config(**ON_CUDA, trainer__precision="bf16", seed=s) for s in (1, 2)]
    stepper = StackedStepper(configs, [tmp_path / "a", tmp_path / "b"], quiet=True)
    syncs = step_syncs(stepper, steps=6)
    assert syncs.events == [], syncs.report()
    assert [r.last_record["step"] for r in stepper.runs] == [31, 31]


@pytest.mark.slow
def test_an_unfused_optimizer_under_the_scaler_syncs_as_the_precheck_says(make_config, tmp_path, step_syncs):
    """Why trainer.sync_debug=error refuses fp16 with optim.fused=off: GradScaler reads the inf
    check of an unfused optimizer on the host at every step."""
    trainer = Trainer(make_config(**{**ON_CUDA, "optim__fused": "off"}), tmp_path, quiet=True)
    trainer.scaler = torch.amp.GradScaler("cpu")
    trainer.records.fields.append("scaler_skipped")
    syncs = step_syncs(ModelStepper(trainer), steps=4)
    assert {e.label for e in syncs.events} == {30, 31, 32, 33}
    assert {e.where.split(":")[0] for e in syncs.events} == {"stepper.py"}


def test_the_docs_list_what_syncs():
    """docs/performance.md's table says yes for exactly the options that sync above."""
    text = (ROOT / "docs" / "performance.md").read_text()
    rows = dict(re.findall(r"^\| `([\w.=]+)[^|]*\| (yes|no)\b", text, re.M))
    for case, (_, expected) in CASES.items():
        if case.startswith(("monitor.", "model.")):
            assert rows.get(case) == ("no" if expected is None else "yes"), case
    assert rows.get("optim.fused=off") == "yes"
