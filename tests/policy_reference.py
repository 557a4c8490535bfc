"""A plain-Python model of a table's policies (the table issue's parts), for checking the
real buffer against: which items a writer keeps and evicts (FIFO, reservoir, keep-top-k), what
an admission rule drops (threshold), when a remover takes an item (max times sampled), and
what the item metadata says. Draws are not modelled: the tests feed the model the items a
real sample returned, and the model says whether they may have been returned and what
follows from it.

Written from the documented rules (README "Replay policies"), independently of the library:
- keys: slot + generation (tests/keys.py's encoding); a slot's generation counts its writes;
- FIFO: insertion n in slot n % capacity;
- reservoir: offer n (0-based) fills slot n while n < capacity, else replaces slot
  j = floor(r_n * (n + 1) / 2^64) when j < capacity, r_n = Philox4x32-10(key = seed,
  counter = (0xFFFFFFFF, 1, n low, n high)) as (c0 << 32) | c1 (the reservoir's own stream);
- keep-top-k: fresh slots first, then freed ones (most recently freed first); once full an
  item enters iff score >= the lowest held score, evicting the lowest by (score, insertion);
  by priority, a new item ranks above every held one while its write lasts (so it enters)
  and then by the priority it got, the running max (alpha = 1, eps = 0 here: q = p);
- threshold: admitted iff score >= value;
- max times sampled N: an item leaves after its N-th sample; its slot is free for the next
  item (keep-top-k) or written again in ring order (FIFO).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

M32 = 0xFFFFFFFF


def philox4x32(ctr: Tuple[int, int, int, int], key: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """Philox4x32-10 (Salmon et al. 2011), the core's generator (philox.h), on Python ints."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        hi0, lo0 = p0 >> 32, p0 & M32
        hi1, lo1 = p1 >> 32, p1 & M32
        c0, c1, c2, c3 = (hi1 ^ c1 ^ k0) & M32, lo1, (hi0 ^ c3 ^ k1) & M32, lo0
        k0 = (k0 + 0x9E3779B9) & M32
        k1 = (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


def random_bits(seed: int, call: int, index: int, lane: int = 0) -> int:
    out = philox4x32((index & M32, lane & M32, call & M32, (call >> 32) & M32), (seed & M32, (seed >> 32) & M32))
    return (out[0] << 32) | out[1]


def reservoir_replaces(seed: int, offer: int, capacity: int) -> int:
    """The slot offer `offer` (0-based, >= capacity) replaces, or -1 (dropped)."""
    r = random_bits(seed, offer, M32, 1)
    j = (r * (offer + 1)) >> 64
    return j if j < capacity else -1


def slot_bits(capacity: int) -> int:
    return (capacity - 1).bit_length()


@dataclass
class Item:
    key: int
    row: Dict[str, Any]
    insertion: int
    score: float = 0.0
    version: int = 0
    priority: float = 1.0
    times: int = 0
    last: int = -1


@dataclass
class PolicyModel:
    capacity: int
    seed: int
    writer: str = "fifo"           # "fifo", "reservoir", "keep_top_k"
    score: Optional[str] = None    # keep_top_k / threshold field
    threshold: Optional[float] = None
    max_times: Optional[int] = None
    threshold_field: Optional[str] = None  # default: `score`
    keep: Optional[Callable[[Dict[str, Any]], bool]] = None  # a caller's predicate
    slots: List[Optional[Item]] = field(default_factory=list)
    generations: List[int] = field(default_factory=list)  # writes of each slot so far
    removed: List[bool] = field(default_factory=list)
    written: int = 0               # items ever stored
    offers: int = 0                # items ever offered to the writer
    filled: int = 0                # slots written at least once (locked writers)
    free: List[int] = field(default_factory=list)  # freed slots (stack)
    version: int = 0
    dropped: int = 0               # by admission
    max_p: float = 1.0             # running max priority (new items get it)
    stale: int = 0                 # priority updates of items that had left

    def __post_init__(self) -> None:
        self.slots = [None] * self.capacity
        self.generations = [0] * self.capacity
        self.removed = [False] * self.capacity

    # ---- keys ----

    def key_of(self, slot: int, generation: int) -> int:
        return (generation << slot_bits(self.capacity)) | slot

    def stored(self) -> List[Item]:
        return [it for it in self.slots if it is not None]

    def __len__(self) -> int:
        return len(self.stored())

    def item(self, key: int) -> Optional[Item]:
        slot = key & ((1 << slot_bits(self.capacity)) - 1)
        if slot >= self.capacity:
            return None
        it = self.slots[slot]
        return it if it is not None and it.key == key else None

    def was_written(self, key: int) -> bool:
        if key < 0:
            return False
        slot = key & ((1 << slot_bits(self.capacity)) - 1)
        if slot >= self.capacity:
            return False
        return (key >> slot_bits(self.capacity)) < self.generations[slot]

    # ---- writing ----

    def _store(self, slot: int, row: Dict[str, Any]) -> None:
        gen = self.generations[slot]
        self.generations[slot] += 1
        if self.score == "priority":
            score = math.inf  # ranked above every held item until the write ends
        else:
            score = float(row[self.score]) if self.score else 0.0
        self.slots[slot] = Item(self.key_of(slot, gen), dict(row), self.written, score,
                                self.version, self.max_p)
        self.removed[slot] = False
        self.written += 1

    def offer(self, rows: Sequence[Dict[str, Any]]) -> int:
        """Offers items in order; returns how many were stored."""
        stored = 0
        field = self.threshold_field or self.score
        for row in rows:
            if self.keep is not None and not self.keep(row):
                continue
            if self.threshold is not None and not (float(row[field]) >= self.threshold):
                self.dropped += 1
                continue
            slot = self._place(row)
            if slot is not None:
                self._store(slot, row)
                stored += 1
        if self.score == "priority":  # the write is over: new items rank by their priority
            for it in self.stored():
                if it.score == math.inf:
                    it.score = it.priority
        return stored

    def update(self, keys: Sequence[int], priorities: Sequence[float]) -> int:
        """update_priorities with distinct keys (alpha = 1, eps = 0: q = p); returns how many
        were stale (the item left since)."""
        stale = 0
        for key, p in zip(keys, priorities):
            it = self.item(int(key))
            if it is None:
                stale += 1
                continue
            it.priority = float(p)
            self.max_p = max(self.max_p, float(p))
            if self.score == "priority":
                it.score = float(p)
        self.stale += stale
        return stale

    def update_fields(self, keys: Sequence[int], **values: Sequence[Any]) -> int:
        """update_fields: each held item's fields get the values at its position (a repeated
        key keeps the last); returns how many keys were stale."""
        stale = 0
        for j, key in enumerate(keys):
            it = self.item(int(key))
            if it is None:
                stale += 1
                continue
            for name, v in values.items():
                it.row[name] = v[j]
        self.stale += stale
        return stale

    def _next_free(self) -> Optional[int]:
        if self.filled < self.capacity:
            return self.filled
        return self.free[-1] if self.free else None

    def _take_free(self, slot: int) -> None:
        if slot == self.filled and self.filled < self.capacity:
            self.filled += 1
        else:
            self.free.pop()

    def _place(self, row: Dict[str, Any]) -> Optional[int]:
        if self.writer == "fifo":
            return self.written % self.capacity
        offer = self.offers
        self.offers += 1
        free = self._next_free()
        if self.writer == "reservoir":
            if free is not None:
                self._take_free(free)
                return free
            j = reservoir_replaces(self.seed, offer, self.capacity)
            return None if j < 0 else j
        assert self.writer == "keep_top_k"
        if free is not None:
            self._take_free(free)
            return free
        score = math.inf if self.score == "priority" else float(row[self.score])
        low = min(self.stored(), key=lambda it: (it.score, it.insertion))
        if score < low.score:
            return None
        return low.key & ((1 << slot_bits(self.capacity)) - 1)

    # ---- sampling ----

    def sampled(self, keys: Sequence[int], call: int) -> None:
        """The real buffer returned these keys in sample call `call`: count them, and remove
        the ones that reached max_times."""
        used_up: List[int] = []  # in the order their last sample came in the batch
        for key in keys:
            it = self.item(int(key))
            assert it is not None, f"key {key} was sampled but is not stored"
            if self.max_times is not None:
                assert it.times < self.max_times, f"key {key} was sampled more than {self.max_times} times"
            it.times += 1
            it.last = call
            if self.max_times is not None and it.times == self.max_times:
                used_up.append(int(key))
        for key in used_up:  # removed after the batch; freed slots stack up in this order
            slot = key & ((1 << slot_bits(self.capacity)) - 1)
            self.slots[slot] = None
            self.removed[slot] = True
            if self.writer != "fifo":
                self.free.append(slot)

    def samples_left(self) -> float:
        if self.max_times is None:
            return math.inf
        return sum(self.max_times - it.times for it in self.stored())
