"""A pure-Python model of a TrajectoryBuffer's contents (which items it holds after each
write: the FIFO item bound plus the arena's byte ring) and helpers that make recognisable
items, for tests/test_trajectory.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

import reverie as rv

# Two groups: a prompt (one field) and a response (ids, logprobs, a per-token pair).
SPEC = {
    "item": rv.Field("int64"),
    "reward": rv.Field("float32"),
    "prompt_ids": rv.Field("int32", (None,), group="prompt", pad=7),
    "ids": rv.Field("int64", (None,), group="response", pad=-1),
    "logp": rv.Field("float32", (None,), group="response"),
    "pair": rv.Field("int16", (None, 2), group="response", pad=3),
}
RAGGED = ["prompt_ids", "ids", "logp", "pair"]
GROUP = {"prompt_ids": 0, "ids": 1, "logp": 1, "pair": 1}
TOKEN_BYTES = {"prompt_ids": 4, "ids": 8, "logp": 4, "pair": 4}


def item_values(i: int, prompt_len: int, response_len: int) -> Dict[str, np.ndarray]:
    """Item i's ragged values: every token names its item, so a torn or foreign copy shows."""
    r = np.arange(response_len)
    return {
        "prompt_ids": (i * 1000 + np.arange(prompt_len)).astype(np.int32),
        "ids": (i * 1000 + r).astype(np.int64),
        "logp": (i + r / 1000.0).astype(np.float32),
        "pair": np.stack([(i + r) % 30000, (i * 7 + r) % 30000], axis=1).astype(np.int16),
    }


def block_bytes(prompt_len: int, response_len: int) -> int:
    """The arena bytes of one item (each field's run padded to 8 bytes, at least 8)."""
    total = 0
    for name in RAGGED:
        n = (prompt_len if GROUP[name] == 0 else response_len) * TOKEN_BYTES[name]
        total += (n + 7) // 8 * 8
    return max(8, total)


@dataclass
class ArenaModel:
    """Which items a FIFO TrajectoryBuffer holds: the byte ring of arena.h (blocks never split
    across the end, the oldest released until a new one fits, and until the item bound
    holds), with add_group's groups released whole."""

    capacity: int
    size: int  # arena bytes
    head: int = 0
    tail: int = 0
    queue: List[Tuple[int, int, int, int]] = field(default_factory=list)  # (position, bytes, item, group)
    held: List[int] = field(default_factory=list)  # items, oldest first
    held_bytes: Dict[int, int] = field(default_factory=dict)
    evicted: int = 0
    serial: int = 0

    def write(self, items: Sequence[Tuple[int, int]], ids: Sequence[int], group: bool = False) -> None:
        """A call storing items (prompt_len, response_len) with ids `ids` (one group: add_group)."""
        self.write_blocks([block_bytes(pl, rl) for pl, rl in items], ids, group)

    def write_blocks(self, blocks: Sequence[int], ids: Sequence[int], group: bool = False) -> None:
        """A call storing items of the given block bytes."""
        pending: Dict[int, bool] = {}
        serial = 0
        if group:
            self.serial += 1
            serial = self.serial
        live = [len(self.held)]

        def pop_one() -> int:
            pos, nbytes, victim, g = self.queue.pop(0)
            if victim in pending:
                if pending[victim]:
                    pending[victim] = False
                    self.evicted += 1
                    live[0] -= 1
            elif victim in self.held_bytes:
                self.held.remove(victim)
                del self.held_bytes[victim]
                self.evicted += 1
                live[0] -= 1
            self.tail = pos + nbytes
            if not self.queue:
                self.tail = self.head
            return g

        for b, i in zip(blocks, ids):
            at = self.head
            if at % self.size + b > self.size:
                at += self.size - at % self.size
            while self.queue and (at + b - self.tail > self.size or len(self.queue) >= max(16, 2 * self.capacity)
                                  or live[0] + 1 > self.capacity):
                g = pop_one()
                while g and self.queue and self.queue[0][3] == g:
                    pop_one()
            if not self.queue:
                self.tail = at
            self.queue.append((at, b, i, serial))
            self.head = at + b
            pending[i] = True
            live[0] += 1
        for i, b in zip(ids, blocks):
            if pending[i]:
                self.held.append(i)
                self.held_bytes[i] = b
