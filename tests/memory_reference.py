"""Plain-Python models of the continual-learning parts (issue 14), for checking the real
buffer against, written from the documented rules (README "Continual learning"), apart
from the library.

Quotas (fifo=True below) are CBRS's shares with each group's newest items kept: the giving
group (drawn as for CBRS among the largest) loses its oldest item, and an item of a full
group replaces its own group's oldest (always stored).

Class-balanced reservoir (CBRS), decision for the n-th offer (0-based) of class c:
- room: the next free slot (slots in order); c's list gets it appended;
- full, c not full: among the classes tied for the largest held count, the one at position
  floor(r1 * tied / 2^64) of the class order; from its list, position floor(r2 * m / 2^64):
  that slot goes to c (the removed position is filled by the list's last entry, the new slot
  appended to c's list); the giving class is marked full;
- full, c full (marked, or holding the largest count now): kept iff
  floor(r1 * n_c / 2^64) < m_c, replacing position floor(r2 * m_c / 2^64) of c's list;
- r1, r2 = Philox4x32-10 (seed; counter (0xFFFFFFFE, lane 1 / 2, n low, n high)).
The class order is an array sorted by held count, descending: a new class is appended; when
a class's count grows it swaps with the first class of its count's block, when it shrinks
with the last (so the tie order is a fact of the history, stated here as the core keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
from policy_reference import random_bits

LANE = 0xFFFFFFFE


def water_filling(n: np.ndarray, capacity: int) -> np.ndarray:
    """min(n_c, tau) with tau the largest level whose fill fits the capacity: what CBRS and
    quotas hold (within 1) after offers n_c per class."""
    tau = max(t for t in range(capacity + 1) if np.minimum(n, t).sum() <= capacity)
    return np.minimum(n, tau)


def held_by_slot(buf: Any) -> Dict[int, int]:
    """slot -> id of every item a buffer (with an "id" field) holds."""
    keys = buf._table.stored_keys()
    return dict(zip(buf._table.slots_of(keys).tolist(), buf.get(keys)["id"].tolist()))


def _below(bits: int, n: int) -> int:
    return (bits * n) >> 64


@dataclass
class CBRSModel:
    capacity: int
    seed: int
    slots: List[Optional[int]] = field(default_factory=list)  # the id each slot holds
    labels: List[int] = field(default_factory=list)           # class index -> label
    index: Dict[int, int] = field(default_factory=dict)       # label -> class index
    members: List[List[int]] = field(default_factory=list)    # class -> its slots, in list order
    offered: List[int] = field(default_factory=list)
    full: List[bool] = field(default_factory=list)
    order: List[int] = field(default_factory=list)            # classes by held count, descending
    offers: int = 0
    filled: int = 0
    fifo: bool = False  # the quotas rule: the oldest item of a group leaves, never a drawn one

    def __post_init__(self) -> None:
        self.slots = [None] * self.capacity

    def held(self, c: int) -> int:
        return len(self.members[c])

    def largest(self) -> int:
        return self.held(self.order[0]) if self.order else 0

    def _block(self, k: int) -> range:
        pos = [p for p, c in enumerate(self.order) if self.held(c) == k]
        return range(pos[0], pos[-1] + 1)

    def _grow(self, c: int) -> None:
        q = self._block(self.held(c)).start
        p = self.order.index(c)
        self.order[p], self.order[q] = self.order[q], self.order[p]

    def _shrink(self, c: int) -> None:
        q = self._block(self.held(c)).stop - 1
        p = self.order.index(c)
        self.order[p], self.order[q] = self.order[q], self.order[p]

    def _append(self, c: int, slot: int) -> None:
        self._grow(c)  # swaps by the count before the change
        self.members[c].append(slot)

    def _remove_at(self, c: int, p: int) -> int:
        self._shrink(c)
        lst = self.members[c]
        slot = lst[p]
        lst[p] = lst[-1]
        lst.pop()
        return slot

    def _remove_oldest(self, c: int) -> int:
        self._shrink(c)
        return self.members[c].pop(0)

    def counts(self) -> Dict[int, int]:
        return {self.labels[c]: self.held(c) for c in range(len(self.labels))}

    def offer(self, item_id: int, label: int) -> bool:
        n = self.offers
        self.offers += 1
        if label not in self.index:
            self.index[label] = len(self.labels)
            self.labels.append(label)
            self.members.append([])
            self.offered.append(0)
            self.full.append(False)
            self.order.append(self.index[label])
        c = self.index[label]
        self.offered[c] += 1
        if self.filled < self.capacity:
            slot = self.filled
            self.filled += 1
            self._append(c, slot)
            self.slots[slot] = item_id
            return True
        r1, r2 = random_bits(self.seed, n, LANE, 1), random_bits(self.seed, n, LANE, 2)
        if not self.full[c] and self.held(c) == self.largest():
            self.full[c] = True
        if not self.full[c] or (self.fifo and self.held(c) == 0):
            top = self.largest()
            tied = sum(1 for k in self.order if self.held(k) == top)
            giver = self.order[_below(r1, tied)]
            self.full[giver] = True
            if self.fifo:
                slot = self._remove_oldest(giver)
            else:
                slot = self._remove_at(giver, _below(r2, self.held(giver)))
            self._append(c, slot)
            self.slots[slot] = item_id
            return True
        if self.fifo:  # at its share: the group's own oldest makes room
            slot = self._remove_oldest(c)
            self._append(c, slot)
            self.slots[slot] = item_id
            return True
        if _below(r1, self.offered[c]) >= self.held(c):
            return False
        slot = self.members[c][_below(r2, self.held(c))]
        self.slots[slot] = item_id
        return True


@dataclass
class ArchiveModel:
    """Keyed archive: entries rank by (score, tiebreak (negated for "min"), insertion); an
    item of a held key replaces it in its slot iff (score, tiebreak) >= the entry's; a new
    key takes the next never-used slot, else (full) the lowest-ranked entry's slot iff it
    ranks above it."""

    capacity: int
    tiebreak_min: bool = True
    entries: Dict[int, tuple] = field(default_factory=dict)  # key -> (score, tb, insertion, id, slot)
    written: int = 0
    filled: int = 0

    def offer(self, key: int, score: float, tb: float, item_id: int) -> bool:
        tb = -tb if self.tiebreak_min else tb
        held = self.entries.get(key)
        if held is not None:
            if (score, tb) < held[:2]:
                return False
            slot = held[4]
        elif self.filled < self.capacity:
            slot = self.filled
            self.filled += 1
        else:
            worst_key = min(self.entries, key=lambda k: self.entries[k][:3])
            worst = self.entries[worst_key]
            if (score, tb) < worst[:2]:
                return False
            slot = worst[4]
            del self.entries[worst_key]
        self.entries[key] = (score, tb, self.written, item_id, slot)
        self.written += 1
        return True

    def slots(self) -> Dict[int, int]:
        return {e[4]: e[3] for e in self.entries.values()}


@dataclass
class PinnedFifoModel:
    """The FIFO rule with pins (README "Pinned items"): items in insertion order; a new item
    takes a free slot, else evicts the oldest unpinned item; a write that would evict a
    pinned item is refused whole; with pin_all set every item is pinned as it is stored, and
    a call offering more items than free slots is refused whole. Unpinning changes no
    order: the oldest unpinned item is the next to go."""

    capacity: int
    items: List[int] = field(default_factory=list)  # ids, oldest first
    pinned: set = field(default_factory=set)
    pin_new: bool = False

    def extend(self, ids: List[int]) -> bool:
        free = self.capacity - len(self.items)
        if ids and (free < len(ids) if self.pin_new else free == 0 and self.pinned >= set(self.items)):
            return False  # refused: nothing stored
        for i in ids:
            if len(self.items) == self.capacity:
                self.items.remove(next(x for x in self.items if x not in self.pinned))
            self.items.append(i)
            if self.pin_new:
                self.pinned.add(i)
        return True

    def pin(self, ids: List[int], pin: bool) -> int:
        held = [i for i in dict.fromkeys(ids) if i in self.items]
        changed = [i for i in held if (i in self.pinned) != pin]
        (self.pinned.update if pin else self.pinned.difference_update)(changed)
        return len(changed)

    def pin_all(self, pin: bool) -> int:
        self.pin_new = pin
        return self.pin(list(self.items), pin)
