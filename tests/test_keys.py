"""The one record schema (minigpt/run/keys.py): every key a record can have, and no other."""

from __future__ import annotations

import ast
import re

import pytest

from helpers import ROOT
from minigpt.run.keys import RECORD_KEYS, Key
from minigpt.run.metrics import read_metrics
from minigpt.run.trainer import train

# Reached only on a GPU (the MFU needs the device's peak) or with fp16's gradient scaler.
GPU_ONLY = {Key.MFU, Key.SCALER_SKIPPED}
RECORD_KEY = re.compile(r"^(train|perf|val|spike)/\w+$")


def written_keys(run_dir) -> set[str]:
    return {k for r in read_metrics(run_dir) for k in r}


@pytest.mark.slow
def test_a_real_run_writes_only_schema_keys_and_every_one_of_them(make_config, tmp_path):
    # Every per-step option on (sqrt_adam's betas and eps, the z-loss, the weight average, the
    # spike skipping, sharpness and the monitors), then a schedule that cycles beta1.
    every = make_config(trainer__max_steps=3, trainer__eval_interval=2, optim__lr_scaling="sqrt_adam",
                        optim__reference_batch_tokens=64, model__z_loss=1e-4, optim__ema=2, monitor__skip_spikes=True,
                        monitor__sharpness_every=2, monitor__sharpness_iters=2, monitor__update_ratio=True,
                        monitor__max_attn_logit=True, monitor__logz=True)
    assert train(every, tmp_path / "a", quiet=True).status == "completed"
    cycled = make_config(trainer__max_steps=4, scheduler__name="one_cycle", scheduler__pct_start=0.5)
    assert train(cycled, tmp_path / "b", quiet=True).status == "completed"
    written = written_keys(tmp_path / "a") | written_keys(tmp_path / "b")
    assert written - RECORD_KEYS == set()  # nothing outside the schema
    assert RECORD_KEYS - GPU_ONLY - written == set()  # and no key of the schema that a run never writes


def test_the_schema_names_each_key_once():
    values = [v for k, v in vars(Key).items() if k.isupper()]
    assert len(values) == len(set(values)) == len(RECORD_KEYS)
    assert Key.spike("loss") == Key.SPIKE_LOSS and Key.spike("grad_norm") + "_z" == Key.SPIKE_GRAD_NORM_Z
    assert Key.train("logz") == Key.LOGZ


def test_every_record_key_spelled_in_the_code_is_in_the_schema():
    """A key written out as a string anywhere in the package or the scripts (plots.py, below
    run/, spells the ones it draws) must be one of the schema's: a misspelt reader fails here."""
    spelled = {}
    for path in [*ROOT.joinpath("minigpt").rglob("*.py"), *ROOT.joinpath("scripts").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and RECORD_KEY.match(node.value):
                spelled.setdefault(node.value, f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(spelled) > 10  # plots.py and the GPU suite spell some
    assert {k: where for k, where in spelled.items() if k not in RECORD_KEYS} == {}
