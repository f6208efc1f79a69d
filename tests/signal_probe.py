"""A Hydra callback for tests: a simulated Slurm preemption. In the first attempt of a job it
sends SIGUSR2 (submitit's preemption / time-limit signal) to the job's own process once the run
has written `after` training records. Used as +hydra.callbacks.sig._target_=signal_probe.SignalOnce."""

import json
import os
import signal
import threading
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback


class SignalOnce(Callback):
    def __init__(self, marker: str, after: int = 5):
        self.marker, self.after = Path(marker), after

    def on_job_start(self, config, **kwargs) -> None:
        if self.marker.exists():  # the requeued attempt: no second signal
            return
        metrics = Path(HydraConfig.get().runtime.output_dir) / "metrics.jsonl"

        def watch():
            while True:
                lines = metrics.read_text().splitlines() if metrics.exists() else []
                if sum("train/loss" in json.loads(line) for line in lines if line.strip()) >= self.after:
                    self.marker.write_text(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGUSR2)
                    return
                time.sleep(0.02)

        threading.Thread(target=watch, daemon=True).start()
