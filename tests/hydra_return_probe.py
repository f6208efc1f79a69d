"""A Hydra callback for tests: writes the task function's return value (what a sweeper would
optimise) to a JSON file. Used as +hydra.callbacks.probe._target_=hydra_return_probe.ReturnProbe."""

import json
from pathlib import Path

from hydra.experimental.callback import Callback


class ReturnProbe(Callback):
    def __init__(self, path: str):
        self.path = Path(path)

    def on_job_end(self, config, job_return, **kwargs) -> None:
        self.path.write_text(json.dumps({"return_value": repr(job_return.return_value)}))
