"""The global batch of each update, with an optional batch-size ramp.

GPT-3 (Brown et al. 2020, section 2.3) grows the batch linearly from a small value to its
full size over the first tokens of training. Here the batch grows from
`trainer.batch_ramp_start` sequences to the configured global batch over
`trainer.batch_ramp_tokens` tokens, by raising the accumulation count: the micro-batch (and so
the memory) never changes, and the batch moves in steps of micro_batch_size x ranks.

The batch is a pure function of the tokens seen before the update, so a resumed run needs
nothing but its token count to continue the ramp exactly. Without a ramp every update has the
full batch and all of this reduces to `ceil(tokens / tokens_per_step)` updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from minigpt.config import TrainerConfig, parse_count
from minigpt.errors import UserError


@dataclass(frozen=True)
class BatchPlan:
    final: int  # global sequences per update once the ramp is over (the configured batch)
    start: int  # ... at token 0 (== final without a ramp)
    ramp_tokens: int  # tokens over which the batch grows linearly from start to final (0: no ramp)
    quantum: int  # micro_batch_size x ranks: the batch grows one micro-batch per rank at a time
    block_size: int

    @classmethod
    def from_config(cls, tc: TrainerConfig, world_size: int, block_size: int) -> "BatchPlan":
        quantum = tc.micro_batch_size * world_size
        final = quantum * tc.grad_accum_for(world_size)
        if tc.batch_ramp_start is None:
            return cls(final, final, 0, quantum, block_size)
        if tc.batch_ramp_start > final:
            raise UserError(f"trainer.batch_ramp_start ({tc.batch_ramp_start} sequences) is larger than the global batch "
                            f"it ramps up to ({final} = micro_batch_size x grad_accum x ranks); give a smaller start, "
                            "e.g. trainer.batch_ramp_start=" + str(max(quantum, final // 4 // quantum * quantum)))
        start = max(quantum, tc.batch_ramp_start // quantum * quantum)
        return cls(final, start, parse_count(tc.batch_ramp_tokens, "trainer.batch_ramp_tokens"), quantum, block_size)

    @property
    def final_tokens(self) -> int:
        """Tokens per update at the full batch."""
        return self.final * self.block_size

    def batch_at(self, tokens_seen: int) -> int:
        """Global sequences of the update that starts after `tokens_seen` training tokens."""
        if tokens_seen >= self.ramp_tokens:
            return self.final
        size = self.start + (self.final - self.start) * tokens_seen / self.ramp_tokens
        return min(self.final, max(self.start, int(size) // self.quantum * self.quantum))

    def accum_at(self, tokens_seen: int) -> int:
        """Micro-batches per rank of that update."""
        return self.batch_at(tokens_seen) // self.quantum

    def updates_for(self, tokens: int) -> int:
        """How many updates it takes to see at least `tokens` tokens (at least one)."""
        seen, updates = 0, 0
        while seen < min(tokens, self.ramp_tokens):
            seen += self.batch_at(seen) * self.block_size
            updates += 1
        return max(1, updates + max(0, math.ceil((tokens - seen) / self.final_tokens)))

    def tokens_after(self, updates: int) -> int:
        """Tokens seen after `updates` updates."""
        seen, done = 0, 0
        while done < updates and seen < self.ramp_tokens:
            seen += self.batch_at(seen) * self.block_size
            done += 1
        return seen + (updates - done) * self.final_tokens

    def schedule_steps(self, updates: int, unit: str) -> int:
        """The length the schedule is built for: the updates, or (unit "tokens") the run's tokens
        in full-batch steps, so the LR at every token is the planned one whatever the batch."""
        if unit == "steps":
            return updates
        return max(1, round(self.tokens_after(updates) / self.final_tokens))

    def schedule_position(self, step: int, tokens_seen: int, unit: str) -> float:
        """Where the schedule is read for the update after `step` updates and `tokens_seen` tokens."""
        return step if unit == "steps" else tokens_seen / self.final_tokens
