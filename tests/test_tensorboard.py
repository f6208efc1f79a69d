"""logger.tensorboard: the records of metrics.jsonl as TensorBoard scalars (minigpt/run/metrics.py)."""

from __future__ import annotations

import sys

import pytest

from minigpt.errors import UserError
from minigpt.run.metrics import TENSORBOARD_DIR, check_tensorboard, read_metrics
from minigpt.run.trainer import train

pytest.importorskip("tensorboard")


def scalars(run_dir) -> dict:
    """{tag: [(step, value), ...]} as TensorBoard itself reads the event files (purges included)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def jsonl_scalars(run_dir) -> dict:
    out: dict = {}
    for record in read_metrics(run_dir):
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                out.setdefault(key, []).append((record["step"], float(value)))
    return out


def assert_same(tb: dict, jsonl: dict) -> None:
    assert sorted(tb) == sorted(jsonl)
    for tag, points in jsonl.items():
        assert [s for s, _ in tb[tag]] == [s for s, _ in points], tag
        # event files hold float32
        assert [v for _, v in tb[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-30), tag


def test_tensorboard_holds_the_records_of_metrics_jsonl_across_a_resume(make_config, tmp_path):
    cfg = make_config(logger__tensorboard=True, trainer__max_steps=6, trainer__eval_interval=3)
    first = train(cfg, tmp_path, quiet=True)
    tb, jsonl = scalars(tmp_path), jsonl_scalars(tmp_path)
    assert {"train/loss", "train/lr", "train/grad_norm", "val/loss", "train/spike"} <= set(tb)
    assert [s for s, _ in tb["val/loss"]] == [0, 3, 6]
    assert_same(tb, jsonl)

    # Rewind to the checkpoint of step 3 and run on with another LR: metrics.jsonl drops steps 3-5 of
    # the first session, and so does TensorBoard's reader (the purge marker at step 3).
    ckpt = make_config(logger__tensorboard=True, trainer__max_steps=6, trainer__eval_interval=3, trainer__ckpt_interval=3)
    train(ckpt, tmp_path / "b", quiet=True)
    resumed = make_config(logger__tensorboard=True, trainer__max_steps=6, trainer__eval_interval=3,
                          trainer__resume=str(tmp_path / "b" / "checkpoints" / "step_0000003.pt"), optim__lr=1e-3)
    train(resumed, tmp_path / "b", quiet=True)
    tb, jsonl = scalars(tmp_path / "b"), jsonl_scalars(tmp_path / "b")
    assert [s for s, _ in tb["train/loss"]] == list(range(6))
    assert [v for s, v in tb["train/lr"] if s >= 3] == pytest.approx([v for s, v in jsonl["train/lr"] if s >= 3])
    assert_same(tb, jsonl)
    assert first.status == "completed"


def test_a_missing_tensorboard_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    with pytest.raises(UserError, match="logger=tensorboard needs the tensorboard package: pip install tensorboard"):
        check_tensorboard()
