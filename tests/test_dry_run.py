"""trainer.dry_run=true: the plan without the run (issue 27, item 4), in process."""

import atexit
import itertools
import json
import signal
import sys

import pytest

from helpers import ROOT, hydra_args
from minigpt.data.cache import prepare_data
from minigpt.model import GPT, GPTConfig
from minigpt.run.dry_run import dry_run, memory_estimate


def run_train_main(monkeypatch, args: list[str]) -> None:
    """`python train.py <args>` in this process: minigpt/launch/train.py's main(), its stop-signal
    handlers put back afterwards."""
    import minigpt.launch.train as entry

    atexit.unregister(entry._ignore_stop_signals)  # the entry's exit handler is for its own process
    monkeypatch.setattr(sys, "argv", [str(ROOT / "train.py"), *args])
    handlers = {s: signal.getsignal(s) for s in entry.STOP_SIGNALS}
    try:
        entry.main()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def test_parameter_count_from_the_config_is_the_built_models():
    for bias, qk, norm, vocab in itertools.product([False, True], [False, True], ["pre", "post"], [257, 1000]):
        config = GPTConfig(vocab_size=vocab, n_layer=2, n_head=4, n_embd=32, block_size=16, bias=bias,
                           qk_layernorm=qk, norm_position=norm)
        model = GPT(config)
        assert config.num_params() == model.num_params() and config.num_params(False) == model.num_params(False)


def test_memory_estimate_adds_adamw_state_and_activations():
    config = GPTConfig(vocab_size=1000, n_layer=2, n_head=4, n_embd=64, block_size=32)
    m = memory_estimate(config, micro_batch_size=8, precision="bf16")
    assert m["weights_grads_adamw"] == 16 * config.num_params(non_embedding=False)
    per_layer = 32 * 8 * 64 * (34 + 5 * 4 * 32 / 64)  # Korthikanti et al. 2022, 16-bit activations
    assert m["activations"] == int(2 * per_layer + 2 * 4 * 8 * 32 * 1024)
    assert memory_estimate(config, 8, "fp32")["activations"] == int(4 * per_layer + 2 * 4 * 8 * 32 * 1024)


def test_dry_run_plans_without_data_or_model(make_config, cache_dir, monkeypatch):
    import minigpt.data.cache
    import minigpt.run.dry_run

    cfg = make_config(trainer__max_steps=200, optim__lr=2e-3, scheduler={"name": "wsd", "decay": 0.2})
    meta = prepare_data(cfg.data, log=lambda m: None, progress=False).meta  # a built cache: the epochs are known
    monkeypatch.setattr(minigpt.data.cache, "prepare_data", lambda *a, **k: pytest.fail("data prepared"))
    monkeypatch.setattr(minigpt.run.dry_run, "GPT", lambda *a, **k: pytest.fail("model built"), raising=False)
    r = dry_run(cfg)
    assert r.train_tokens == meta["train_tokens"] and r.vocab_size == meta["vocab_size"]
    assert r.n_params == GPTConfig.build(cfg.model, meta["vocab_size"]).num_params()
    assert r.plan.total_steps == 200 and r.plan.total_tokens == 200 * 4 * 32
    text = "\n".join(r.lines)
    assert f"{200 * 4 * 32 / meta['train_tokens']:.2f} epochs" in text and "global batch 4 sequences" in text
    assert "schedule: wsd (200 steps): warmup 0..39, stable 40..159, decay 160..199" in text
    assert "floor 0.0002 at step 199" in text and "memory: about" in text
    assert r.line.startswith("wsd (warmup 0..39, stable 40..159, decay 160..199), 200 steps x 4 sequences = 25,600 tokens")

    no_cache = make_config(trainer__max_steps=None, trainer__epochs=2.0, data__vocab_size=700)
    r = dry_run(no_cache)
    assert r.plan is None and r.train_tokens is None and r.vocab_size == 700
    assert "2 epochs; the steps, tokens and schedule are known once the data is prepared" in "\n".join(r.lines)


@pytest.mark.slow  # train.py's main() twice in process (Hydra, a 4-job sweep): about 10 s of CPU
def test_dry_run_from_the_command_line_prints_the_plan_and_draws_the_schedule(monkeypatch, cache_dir, tmp_path,
                                                                             capsys):
    run_dir = tmp_path / "run"
    args = hydra_args(cache_dir, run_dir, **{"trainer.dry_run": True, "trainer.max_steps": 100})
    run_train_main(monkeypatch, args)  # returns: exit status 0
    text = capsys.readouterr().out
    assert "schedule: cosine_warmup (100 steps): warmup 0..19, decay 20..99" in text and "floor 0.0005 at step 99" in text
    assert "dry run: nothing prepared, built or trained" in text
    # Nothing of a run: no data, records, checkpoints or summary (.hydra/ and the folder's lock aside)
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == \
        ["plan.json", "schedule.png", "train.log"]
    assert json.loads((run_dir / "plan.json").read_text())["plan"]["total_steps"] == 100

    sweep = tmp_path / "sweep"
    args = [a for a in args if not a.startswith("hydra.run.dir")]
    run_train_main(monkeypatch, ["-m", *args, "scheduler=cosine_warmup,wsd", "optim.lr=1e-3,3e-3",
                                 f"hydra.sweep.dir={sweep}"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dry run, job")]
    assert len(lines) == 4
    assert lines[3].startswith("dry run, job 3 (optim.lr=0.003,scheduler=wsd): "
                               "wsd (warmup 0..19, stable 20..79, decay 80..99), 100 steps")
    assert "peak 0.003 at step 19" in lines[3] and "floor 0.0003 at step 99" in lines[3]
    assert all((sweep / d / "schedule.png").is_file() for d in ("0_optim.lr=0.001,scheduler=cosine_warmup",
                                                                "3_optim.lr=0.003,scheduler=wsd"))
