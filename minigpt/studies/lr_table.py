"""A schedule given as a table: multipliers at a few knots, linear in between.

What `minigpt predict optimize` writes, and a way to run any hand-drawn curve:

    python train.py scheduler=custom scheduler.module=minigpt.studies.lr_table scheduler.name=table \\
        '+scheduler.knots=[0,0.1,0.8,1.0]' '+scheduler.values=[0.01,1.0,1.0,0.1]'

Knots are lengths like any schedule's (steps, fractions of the run, "2M tokens"), converted to
whole steps once; before the first knot the first value holds, after the last the last one. The
module registers the name when imported, so it is loaded through scheduler.module like any
schedule of your own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minigpt.errors import UserError
from minigpt.schedules import length_field, register_schedule


@dataclass(frozen=True)
class TableParams:
    knots: tuple[int, ...] = length_field((0,))  # where the values hold: increasing lengths
    values: tuple[float, ...] = (1.0,)  # the multiplier of the peak LR at each knot, >= 0

    def validate(self, total_steps: int) -> None:
        if len(self.knots) != len(self.values) or not self.knots:
            raise UserError(f"knots ({len(self.knots)}) and values ({len(self.values)}) must be lists of the same "
                            "length, at least one each")
        if any(b <= a for a, b in zip(self.knots, self.knots[1:])):
            raise UserError(f"knots={list(self.knots)} must increase strictly (after conversion to steps)")
        if any(not (v >= 0) for v in self.values):
            raise UserError(f"values={list(self.values)} must all be >= 0")
        if max(self.values) <= 0:
            raise UserError("values: at least one must be > 0")

    def phases(self, total_steps: int) -> dict[str, int]:
        return {"table": 0}


@register_schedule("table", TableParams)
def table(step: float, total_steps: int, p: TableParams) -> float:
    return float(np.interp(step, p.knots, p.values))
