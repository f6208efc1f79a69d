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


def first_session(make_config, run_dir) -> dict:
    cfg = make_config(logger__tensorboard=True, trainer__max_steps=6, trainer__eval_interval=3, trainer__ckpt_interval=3)
    assert train(cfg, run_dir, quiet=True).status == "completed"
    tb, jsonl = scalars(run_dir), jsonl_scalars(run_dir)
    assert {"train/loss", "train/lr", "train/grad_norm", "val/loss", "train/spike"} <= set(tb)
    assert [s for s, _ in tb["val/loss"]] == [0, 3, 6]
    assert_same(tb, jsonl)
    return tb


def test_tensorboard_holds_the_records_of_metrics_jsonl(make_config, tmp_path):
    first_session(make_config, tmp_path)


@pytest.mark.slow
def test_tensorboard_holds_the_records_of_metrics_jsonl_across_a_rewind(make_config, tmp_path):
    first_lrs = dict(first_session(make_config, tmp_path)["train/lr"])

    # Rewind to the checkpoint of step 3 and run on with another LR: metrics.jsonl drops steps 3-5 of
    # the first session, and so does TensorBoard's reader (the purge marker at step 3).
    resumed = make_config(logger__tensorboard=True, trainer__max_steps=6, trainer__eval_interval=3,
                          trainer__resume=str(tmp_path / "checkpoints" / "step_0000003.pt"), optim__lr=1e-3)
    train(resumed, tmp_path, quiet=True)
    tb, jsonl = scalars(tmp_path), jsonl_scalars(tmp_path)
    assert [s for s, _ in tb["train/loss"]] == list(range(6))
    assert all(v != pytest.approx(first_lrs[s]) for s, v in tb["train/lr"] if s >= 3)  # the second session's
    assert_same(tb, jsonl)


def test_a_missing_tensorboard_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    with pytest.raises(UserError, match="logger=tensorboard needs the tensorboard package: pip install tensorboard"):
        check_tensorboard()
