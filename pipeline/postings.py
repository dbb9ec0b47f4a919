"""The inverted index of ROUGE-L dedup's prefix filter: items posted under (element, bucket), probed in compiled code.

An element is a token occurrence: the j-th occurrence of a token is its own element, so a text's tokens are a set of
elements. A text's prefix is its first elements in a global token order (the caller's, by token id; a token's
occurrences in turn). An item posts each element of its prefix once, in the bucket of its length and the element's
place. A probe looks up a text's prefix elements, keeps the entries whose bucket its plan allows at that
place, and counts per item how many elements it shares. Looking up and counting are numba-compiled loops over flat
arrays, one call per text: in Python, or as numpy's vectorised form (ragged gathers, ``np.unique``), they were most of
a large run's time.

Entries live in two parts. The frozen part is sorted by (element slot, bucket), so a probe binary-searches the
bucket range it may use. New entries go to a tail of singly linked lists (one per element), which a probe walks whole;
once the tail holds a fixed share of the items it is merged into the frozen part, which keeps both the walk and the
merges' cost (linear in the index each time) small. The layout never changes a result: every result is sorted.
"""

from __future__ import annotations

import numpy as np
from numba import njit, typed, types

#: Added to an item's count when it was found under the first element that found anything ("rarest").
_RAREST_FLAG = 1 << 24
_BUCKET_BITS = 24  # a frozen key is slot << _BUCKET_BITS | bucket
_OCCURRENCE_SHIFT = 21  # an element is token | occurrence << 21 (token ids stay below 2**21)
_NONE = np.zeros(0, dtype=np.int32)
_MIN_TAIL = 1024  # items in the tail before it is merged into the frozen part
_TAIL_FRACTION = 32  # ... or this share of the index, whichever is more


def grown(array: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
    """``array`` itself if it holds ``size`` entries, else a copy at least doubled, the new entries ``fill``."""
    if size <= array.size:
        return array
    return np.concatenate([array, np.full(max(size - array.size, array.size), fill, dtype=array.dtype)])


@njit(cache=True, nogil=True)
def _prefix_slots(ids, count, order, slot_of, create):  # pragma: no cover - compiled
    """The slots of the first ``count`` elements of ``ids`` in ``order``; unknown elements get a new slot if
    ``create``, else -1."""
    size = min(count, ids.shape[0])
    slots = np.empty(max(size, 0), np.int64)
    if size <= 0:
        return slots
    positions = np.argsort(order[ids], kind="mergesort")  # a token's occurrences are adjacent: one order key
    previous = -1
    occurrence = 0
    for i in range(size):
        token = ids[positions[i]]
        occurrence = occurrence + 1 if token == previous else 0
        previous = token
        element = token | occurrence << _OCCURRENCE_SHIFT
        slot = slot_of.get(element, -1)
        if slot < 0 and create:
            slot = len(slot_of)
            slot_of[element] = slot
        slots[i] = slot
    return slots


@njit(cache=True, nogil=True)
def _post(ids, count, order, slot_of, head, item_of, bucket_of, next_of, start, index, length_bucket, shared_places,
          middle):  # pragma: no cover - compiled
    slots = _prefix_slots(ids, count, order, slot_of, True)
    for position in range(slots.shape[0]):
        entry = start + position
        slot = slots[position]
        item_of[entry] = index
        if position < shared_places:
            bucket_of[entry] = length_bucket
        elif position < middle:
            bucket_of[entry] = length_bucket + 1
        else:
            bucket_of[entry] = length_bucket + 2
        next_of[entry] = head[slot]
        head[slot] = entry
    return slots.shape[0], len(slot_of)


@njit(cache=True, nogil=True)
def _tail_keys(head, bucket_of, next_of, count):  # pragma: no cover - compiled
    """The frozen key of every tail entry, by entry."""
    keys = np.empty(count, np.int64)
    for slot in range(head.shape[0]):
        entry = head[slot]
        while entry >= 0:
            keys[entry] = slot << _BUCKET_BITS | bucket_of[entry]
            entry = next_of[entry]
    return keys


@njit(cache=True, nogil=True, inline="always")
def _count(item, place, rarest_place, found, hits, touched):  # pragma: no cover - compiled
    """Count a hit of ``item`` at ``place``; the first place with a hit is the rarest. Returns both counters."""
    if rarest_place < 0:
        rarest_place = place
    if hits[item] == 0:
        touched[found] = item
        found += 1
    hits[item] += 1 + _RAREST_FLAG if place == rarest_place else 1
    return rarest_place, found


@njit(cache=True, nogil=True)
def _gather(ids, count, order, slot_of, low, width, high, allowed, shared, keys, items, head, item_of, bucket_of,
            next_of, hits, touched, rarest_only):  # pragma: no cover - compiled
    slots = _prefix_slots(ids, count, order, slot_of, False)
    found = 0
    rarest_place = -1
    for place in range(slots.shape[0]):
        if rarest_only and rarest_place >= 0:
            break
        slot = slots[place]
        if slot < 0:
            continue
        top = high[place]
        row = place * width - low
        first = np.searchsorted(keys, slot << _BUCKET_BITS | low)
        last = np.searchsorted(keys, slot << _BUCKET_BITS | top, side="right")
        for position in range(first, last):
            bucket = keys[position] & ((1 << _BUCKET_BITS) - 1)
            if allowed[row + bucket]:
                rarest_place, found = _count(items[position], place, rarest_place, found, hits, touched)
        entry = head[slot] if slot < head.shape[0] else -1
        while entry >= 0:
            bucket = bucket_of[entry]
            if low <= bucket <= top and allowed[row + bucket]:
                rarest_place, found = _count(item_of[entry], place, rarest_place, found, hits, touched)
            entry = next_of[entry]
    rarest = np.empty(found, np.int32)
    others = np.empty(found, np.int32)
    n_rarest = 0
    n_others = 0
    for i in range(found):
        item = touched[i]
        count = hits[item]
        hits[item] = 0
        if count >= _RAREST_FLAG:
            rarest[n_rarest] = item
            n_rarest += 1
        elif count >= shared:
            others[n_others] = item
            n_others += 1
    return np.sort(rarest[:n_rarest]), np.sort(others[:n_others])


class Postings:
    """Items posted under (element, bucket); a bucket is ``length * 4 + tier``, the tier being that of the place."""

    def __init__(self) -> None:
        self._slot_of = typed.Dict.empty(types.int64, types.int64)  # element -> its list's number ("slot")
        self._slots = 0  # len(self._slot_of), which costs microseconds to ask from Python
        self._keys = np.zeros(0, dtype=np.int64)  # frozen: slot << _BUCKET_BITS | bucket, ascending
        self._items = np.zeros(0, dtype=np.int32)
        self._head = np.full(1024, -1, dtype=np.int64)  # tail: the newest entry by slot
        self._item_of = np.zeros(4096, dtype=np.int32)
        self._bucket_of = np.zeros(4096, dtype=np.int32)
        self._next_of = np.zeros(4096, dtype=np.int64)
        self._tail_entries = 0
        self._tail_items = 0
        self._hits = np.zeros(1024, dtype=np.int32)  # scratch of _gather, all zero between calls
        self._touched = np.zeros(1024, dtype=np.int32)

    def __len__(self) -> int:
        return self._keys.size + self._tail_entries

    def clear(self) -> None:
        """Drop every entry."""
        self._keys, self._items = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
        self._head.fill(-1)
        self._tail_entries = self._tail_items = 0

    def post(self, index: int, ids: list[int], count: int, order: np.ndarray, length_bucket: int,
             shared_places: int, middle: int) -> None:
        """Post item ``index`` (token ``ids``) under the first ``count`` elements in ``order``: places below
        ``shared_places`` in tier 0, below ``middle`` in tier 1, the rest in tier 2 of ``length_bucket``.
        Items are posted in increasing ``index``."""
        if count > 0 and ids:
            # Room for the worst case: every element new, every one posted.
            self._head = grown(self._head, self._slots + len(ids), fill=-1)
            start = self._tail_entries
            self._item_of = grown(self._item_of, start + len(ids))
            self._bucket_of = grown(self._bucket_of, start + len(ids))
            self._next_of = grown(self._next_of, start + len(ids))
            self._hits = grown(self._hits, index + 1)
            self._touched = grown(self._touched, index + 1)
            posted, self._slots = _post(np.asarray(ids, dtype=np.int64), count, order, self._slot_of, self._head,
                                        self._item_of, self._bucket_of, self._next_of, start, index, length_bucket,
                                        shared_places, middle)
            self._tail_entries = start + posted
        self._tail_items += 1
        if self._tail_items >= max(_MIN_TAIL, (index + 1) // _TAIL_FRACTION):
            self.freeze()

    def freeze(self) -> None:
        """Merge the tail into the frozen part (a sort of the tail and one insert: linear in the index)."""
        count = self._tail_entries
        if count:
            keys = _tail_keys(self._head, self._bucket_of, self._next_of, count)
            order = np.argsort(keys, kind="stable")
            keys, items = keys[order], self._item_of[:count][order]
            at = self._keys.searchsorted(keys, side="right")
            self._keys, self._items = np.insert(self._keys, at, keys), np.insert(self._items, at, items)
            self._head.fill(-1)
        self._tail_entries = self._tail_items = 0

    def candidates(self, ids: list[int], count: int, order: np.ndarray, low: int, width: int, high: np.ndarray,
                   allowed: np.ndarray, shared: int, rarest_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Of the items sharing elements with the first ``count`` elements of ``ids`` in ``order``: those found under
        the first element that finds any ("rarest"), and the others found under at least ``shared`` elements. At
        place ``b`` an entry counts iff its bucket is in ``low .. high[b]`` and ``allowed[b * width + bucket - low]``.
        Both ascending, int32. With ``rarest_only`` the walk stops after the rarest element: others come back
        empty, at a fraction of the cost."""
        if count <= 0 or not ids or not len(self):
            return _NONE, _NONE
        rarest, others = _gather(np.asarray(ids, dtype=np.int64), count, order, self._slot_of, low, width, high, allowed,
                                 shared, self._keys, self._items, self._head, self._item_of, self._bucket_of,
                                 self._next_of, self._hits, self._touched, rarest_only)
        return rarest, others
