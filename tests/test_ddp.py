"""Data-parallel training on the CPU (gloo, 2 processes): the same run as one process.

Two ranks with the same global batch must take the same steps as one process: the same
windows (each rank a slice of the global batch), gradients averaged across ranks, one
all-reduce per optimizer step however many micro-batches it accumulates, and records,
checkpoints and summaries written by rank 0 alone.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from helpers import ROOT, hydra_args

from minigpt.config import config_from_dict
from minigpt.run.metrics import read_metrics
from minigpt.run.trainer import Trainer, train

# The ranks of the in-process DDP tests start as children of multiprocessing's fork server,
# which has torch and the package imported once, rather than each as a fresh interpreter
# (about 4 s of CPU apiece). Only where that server is single-threaded (one OpenMP thread, as
# under pytest-xdist): forking a process with OpenMP threads can hang the child.
START = "forkserver" if os.environ.get("OMP_NUM_THREADS") == "1" else "spawn"
if START == "forkserver":
    mp.set_forkserver_preload(["torch", "torch._dynamo", "torch.distributed", "minigpt.run.trainer", "helpers"])

pytestmark = pytest.mark.slow

# Global batch 8 sequences: one process does 4 micro-batches of 2; two ranks do 2 each.
GLOBAL = {"trainer__batch_size": 8, "trainer__micro_batch_size": 2, "trainer__max_steps": 5,
          "trainer__eval_interval": 2, "trainer__eval_iters": 4, "trainer__threads": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_records(run_dir):
    return [r for r in read_metrics(run_dir) if "train/loss" in r]


def _rank_main(rank, world, port, cfg_dict, run_dirs, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    trainer = Trainer(config_from_dict(cfg_dict), Path(run_dirs[rank]), quiet=True)
    reductions = []

    def counting_hook(state, bucket):
        reductions.append(trainer.step)
        return allreduce_hook(None, bucket)

    trainer.step_model.register_comm_hook(None, counting_hook)
    result = trainer.run()
    params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    torch.save({"params": params, "reductions": reductions, "grad_accum": trainer.plan.grad_accum,
                "status": result.status.value}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_take_the_same_steps_as_one_process(make_config, tmp_path):
    single = train(make_config(**GLOBAL), tmp_path / "single", quiet=True)
    assert single.status == "completed"

    cfg = make_config(**GLOBAL)
    run_dirs = [str(tmp_path / "rank0"), str(tmp_path / "rank1")]
    mp.start_processes(_rank_main, args=(2, free_port(), cfg.to_dict(), run_dirs, str(tmp_path)), nprocs=2, join=True,
                       start_method=START)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # The same losses, grad norms and LRs at every step, and the same weights at the end.
    one, two = train_records(tmp_path / "single"), train_records(tmp_path / "rank0")
    assert [r["step"] for r in two] == list(range(5))
    for a, b in zip(one, two):
        assert b["train/loss"] == pytest.approx(a["train/loss"], abs=1e-5)
        assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-4)
        assert b["train/lr"] == a["train/lr"] and b["train/tokens"] == a["train/tokens"]
        assert b["train/batch_size"] == a["train/batch_size"] == 8
    vals_one = [r["val/loss"] for r in read_metrics(tmp_path / "single") if "val/loss" in r]
    vals_two = [r["val/loss"] for r in read_metrics(tmp_path / "rank0") if "val/loss" in r]
    assert vals_two == pytest.approx(vals_one, abs=1e-5) and len(vals_two) == 4  # steps 0, 2, 4 and the end
    single_params = torch.cat([p.detach().flatten() for p in torch.load(single.checkpoint)["model"].values()])
    saved = torch.load(next((tmp_path / "rank0" / "checkpoints").glob("*.pt")))
    assert torch.allclose(torch.cat([p.flatten() for p in saved["model"].values()]), single_params, atol=1e-5)
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])  # the ranks stay in lockstep

    # Each rank accumulates 2 micro-batches but all-reduces once per step (no_sync on the first);
    # the tiny model fits in one gradient bucket.
    for r in ranks:
        assert r["grad_accum"] == 2 and r["status"] == "completed"
        assert r["reductions"] == [0, 1, 2, 3, 4]

    # Rank 0 alone writes records, summary, checkpoints and the schedule plot.
    summary = json.loads((tmp_path / "rank0" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "completed"
    assert summary["final_val_loss"] == pytest.approx(single.final_val_loss, abs=1e-5)
    assert sorted(p.name for p in (tmp_path / "rank1").iterdir()) == []


def test_torchrun_command_line(cache_dir, tmp_path):
    """`torchrun --standalone --nproc_per_node=2 train.py ...`: one run directory, shared by both
    ranks, logged once, with the losses of one process at the same global batch."""
    args = [a for a in hydra_args(cache_dir, tmp_path) if not a.startswith("hydra.run.dir")]
    args += ["trainer.batch_size=8", "trainer.micro_batch_size=2", "trainer.max_steps=4", "trainer.threads=1",
             "run_name=ddp"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "train.py"), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "ddp").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("torchrun-"), runs  # both ranks agreed on it
    output = proc.stdout + proc.stderr
    assert output.count("2 rank(s)") == 1 and output.count("final val loss") == 1  # rank 0 speaks for both

    # One process, the config the ranks ran with.
    config = OmegaConf.to_container(OmegaConf.load(runs[0] / ".hydra" / "config.yaml"), resolve=True)
    single = train(config_from_dict(config), tmp_path / "single", quiet=True)
    one, two = train_records(tmp_path / "single"), train_records(runs[0])
    assert [r["step"] for r in two] == [0, 1, 2, 3]
    assert [r["train/loss"] for r in two] == pytest.approx([r["train/loss"] for r in one], abs=1e-5)
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["final_val_loss"] == pytest.approx(single.final_val_loss, abs=1e-5)


def _rank_with_late_records(rank, world, port, cfg_dict, run_dirs, out):
    """Rank 1's records land a flush later than rank 0's (CUDA's asynchronous copies can); the
    weights turn NaN after update 8 on both ranks, so the loss is NaN from step 9."""
    import math

    from test_gpu_paths import LateEvents

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    trainer = Trainer(config_from_dict(cfg_dict), Path(run_dirs[rank]), quiet=True)
    if rank == 1:
        trainer.records.events = LateEvents()
    trainer.model.transformer.wte.weight.register_hook(lambda g: g * math.nan if trainer.step == 8 else g)
    seen = []
    trainer.watchers.append(lambda record: seen.append(record["step"]))
    result = trainer.run()
    torch.save({"status": result.status.value, "step": trainer.step, "seen": seen}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_ranks_that_see_a_divergence_a_flush_apart_stop_together(make_config, tmp_path):
    """Each rank decides "diverged" from the records that reached it. Rank 0 sees steps 8-11
    at the flush of step 12, rank 1 only at step 16: alone, rank 0 would leave the loop and
    rank 1 wait in the next all-reduce until the timeout. The ranks agree at the flush steps
    instead, and both end at step 12, diverged."""
    cfg = make_config(**GLOBAL | {"trainer__max_steps": 24, "trainer__eval_interval": 100}, trainer__flush_every=4,
                      trainer__ckpt_interval=0)
    run_dirs = [str(tmp_path / "rank0"), str(tmp_path / "rank1")]
    ctx = mp.start_processes(_rank_with_late_records, args=(2, free_port(), cfg.to_dict(), run_dirs, str(tmp_path)),
                             nprocs=2, join=False, start_method=START)
    deadline = time.time() + 300
    while not ctx.join(timeout=5):
        if time.time() > deadline:  # a hang: the bug this test is about
            for p in ctx.processes:
                p.kill()
            pytest.fail("the ranks did not finish within 300 s: one left the loop, the other waits")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["status"] for r in ranks] == ["diverged", "diverged"]
    assert [r["step"] for r in ranks] == [12, 12]
    assert ranks[0]["seen"] == ranks[1]["seen"] == list(range(12))  # every record, on both, by the end
    summary = json.loads((tmp_path / "rank0" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] == 9 and summary["step"] == 12
