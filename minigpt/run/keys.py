"""The record schema: every key a record of metrics.jsonl (and wandb, tensorboard) can have.

The writers (records.RecordSchema for a step, monitor.Monitor for the spike flags,
records.Evaluation for an evaluation) and the readers (the progress bar, the LR range test,
the sweep reports, the loss prediction, `minigpt plot-run`) use these names. Free of torch,
so that the tools reading runs import it cheaply. (plots.py, a layer below run/, spells the
keys it draws; the test below holds them to this list.)
tests/test_keys.py checks that a real run writes no key outside `RECORD_KEYS` and that
every key written in the package is one of them.
"""

from __future__ import annotations


class Key:
    """Every key of a metrics record (metrics.jsonl, wandb, tensorboard), by what writes it."""

    STEP = "step"
    # a step's values and facts (RecordSchema.record)
    LR = "train/lr"
    LOSS = "train/loss"  # the cross-entropy of the step's batch (the z-loss term apart)
    LOSS_MAX = "train/loss_max"
    GRAD_NORM = "train/grad_norm"
    CLIPPED = "train/clipped"
    TOKENS = "train/tokens"
    BATCH_SIZE = "train/batch_size"
    BETA1 = "train/beta1"
    BETA2 = "train/beta2"  # sqrt_adam's scaled betas and eps (constants of the run)
    EPS = "train/eps"
    SKIPPED = "train/skipped"  # monitor.skip_spikes
    SCALER_SKIPPED = "train/scaler_skipped"  # fp16's gradient scaler
    Z_LOSS = "train/z_loss"
    UPDATE_RATIO = "train/update_ratio"
    MAX_ATTN_LOGIT = "train/max_attn_logit"
    LOGZ = "train/logz"
    SHARPNESS = "train/sharpness"
    SHARPNESS_THRESHOLD = "train/sharpness_threshold"
    STEP_MS = "perf/step_ms"
    TOK_PER_S = "perf/tok_per_s"
    MFU = "perf/mfu"
    # the spike monitor (Monitor.observe)
    SPIKE = "train/spike"
    SPIKE_LOSS = "spike/loss"
    SPIKE_LOSS_Z = "spike/loss_z"
    SPIKE_GRAD_NORM = "spike/grad_norm"
    SPIKE_GRAD_NORM_Z = "spike/grad_norm_z"
    # the evaluations (Evaluation.fields)
    VAL_LOSS = "val/loss"
    VAL_LOSS_STDERR = "val/loss_stderr"
    VAL_Z_LOSS = "val/z_loss"
    VAL_LOSS_EMA = "val/loss_ema"

    @staticmethod
    def spike(series: str) -> str:
        """spike/<series> (a flag); spike/<series>_z is its z-score."""
        return f"spike/{series}"

    @staticmethod
    def train(field: str) -> str:
        """train/<field>: where an optional per-step value (RecordSchema.fields) goes."""
        return f"train/{field}"


RECORD_KEYS = frozenset(v for k, v in vars(Key).items() if k.isupper())
