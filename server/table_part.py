"""TablePart: the rows of one hash-keyed table that one shard holds.

Rows live in growable arrays (``value`` and one array per slot, plus the
row's key, liveness, last update and update count) found through an
open-addressing index (``hash_index``). A push is planned first (which keys
have rows, which new keys are admitted, which rows must go to make room, how
much memory growth costs) without changing anything, so a push refused for
memory changes nothing; then committed. Every method is called with the
shard's lock held. Evicted rows are reused, so a table at its capacity stops
growing: its memory is flat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adamax_ps.server import adamax, hash_index
from adamax_ps.server.admission import CountingFilter, admitted_by_chance
from adamax_ps.server.errors import ResourceExhaustedError
from adamax_ps.server.table_config import TableConfig

TOMBSTONES = 1 << 14  # evictions remembered per part, for delta exports
ROOM = 0.90  # a full part evicts down to this share of its capacity
GROWTH = 1.25  # allocations grow by this factor (and at least 64 rows)
MAX_ROWS = (1 << 31) - 1  # the index holds int32 row numbers
_ROW_META = 8 + 1 + 8 + 8 + 8 + 8  # key, live, updated, count, version, free list


@dataclass
class PartPlan:
    """What a push does to one part, decided before anything changes."""

    positions: np.ndarray  # where the part's keys are in the gradient
    rows: np.ndarray  # their rows now (-1: none)
    admit: np.ndarray  # bool: the key has (or gets) a row and its update
    victims: np.ndarray  # keys evicted first, to make room
    grow_to: int  # rows allocated after the push
    grow_bytes: int  # memory the growth costs
    version: int = 0  # the table's change number it commits as


class TablePart:
    """One shard's rows of a table (see the module docstring)."""

    def __init__(
        self, name: str, shard: int, config: TableConfig, parts: int, seed: int
    ) -> None:
        self.variable = name
        self.shard = shard
        self.config = config
        self.capacity = config.part_capacity(parts)
        self.dim = config.dim
        self.dtype = config.dtype
        self.seed = seed
        self.initializer = config.key_initializer()
        self.alloc = 0
        self.high = 0  # rows [0, high) were ever used
        self.size = 0  # live rows
        self.keys = np.empty(0, np.int64)
        self.live = np.empty(0, np.uint8)
        self.updated = np.empty(0, np.int64)  # iterations after the last update
        self.count = np.empty(0, np.int64)  # updates applied to the row
        self.version = np.empty(0, np.int64)  # the table's change that last set it
        self.value = np.empty((0, self.dim), self.dtype)
        self.slots: dict[tuple[str, str], np.ndarray] = {}
        self.free = np.empty(0, np.int64)
        self.free_top = 0
        self.index = hash_index.empty_index(hash_index.buckets_for(0))
        admission = config.admission
        self.filter = (
            CountingFilter(max(1024, admission.filter_bytes // parts))
            if admission is not None and admission.min_count
            else None
        )
        self.admitted = self.evicted = self.filtered = 0
        self.latest = 0  # the newest ``updated`` (the step: TTL counts from it)
        # Tombstones of a table that evicts, allocated (and counted) at once.
        size = TOMBSTONES if config.eviction is not None else 0
        self.tomb_keys = np.zeros(size, np.int64)
        self.tomb_versions = np.zeros(size, np.int64)
        self.tomb_total = 0
        self.dropped_through = 0  # tombstones up to this version were overwritten

    @staticmethod
    def initial_bytes(config: TableConfig, parts: int) -> int:
        """Bytes of an empty part: its admission filter and empty index."""
        admission = config.admission
        extra = 16 * TOMBSTONES if config.eviction is not None else 0
        if admission is not None and admission.min_count:
            extra += CountingFilter.bytes_for(
                max(1024, admission.filter_bytes // parts)
            )
        return extra + 4 * hash_index.buckets_for(0)

    # Memory ---------------------------------------------------------------------

    def row_bytes(self, slots: int | None = None) -> int:
        slots = len(self.slots) if slots is None else slots
        return _ROW_META + self.dim * self.dtype.itemsize * (1 + slots)

    def bytes_for(self, rows: int, slots: int | None = None) -> int:
        """Bytes of a part of ``rows`` allocated rows (index included)."""
        return rows * self.row_bytes(slots) + 4 * hash_index.buckets_for(rows)

    @property
    def nbytes(self) -> int:
        """Bytes this part holds: rows, index, filter and tombstones."""
        extra = self.filter.nbytes if self.filter is not None else 0
        extra += self.tomb_keys.nbytes + self.tomb_versions.nbytes
        return self.bytes_for(self.alloc) + extra

    # Lookups ----------------------------------------------------------------------

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """Each key's row, or -1."""
        out = np.empty(len(keys), np.int64)
        if len(keys):
            hash_index.lookup(self.index, self.keys, keys, out)
        return out

    def gather(self, keys: np.ndarray, slot: tuple[str, str] | None) -> np.ndarray:
        """Copies of the keys' rows of the value (missing keys: their initial
        rows) or of a slot (missing: zeros)."""
        rows = self.rows_of(keys)
        found = rows >= 0
        everywhere = bool(found.all())
        source = self.value if slot is None else self.slots.get(slot)
        if everywhere and source is not None:
            return np.take(source, rows, axis=0)  # one pass, no masks
        out = np.zeros((len(keys), self.dim), self.dtype)
        if slot is None:
            missing = np.flatnonzero(~found)
            out[missing] = self.initializer.rows(keys[missing], self.dim, self.dtype)
        if source is not None:
            hit = np.flatnonzero(found)
            out[hit] = source[rows[hit]]
        return out

    # Pushes -----------------------------------------------------------------------

    def plan(
        self,
        keys: np.ndarray,
        positions: np.ndarray,
        step: int,
        new_slots: int,
        decided: tuple[np.ndarray, np.ndarray] | None = None,
        admit_all: bool = False,
    ) -> PartPlan:
        """Plan a push of ``keys[positions]`` at ``step``; nothing changes.
        ``decided``: the admission mask (bool, over all of ``keys``) and this
        part's evicted keys a logged push recorded, used instead of deciding.
        ``admit_all``: no admission test (an assignment); the capacity holds."""
        mine = keys[positions]
        rows = self.rows_of(mine)
        missing = rows < 0
        if decided is not None:
            admit = decided[0][positions]
            victims = decided[1]
        else:
            admit = (
                np.ones(len(mine), bool)
                if admit_all
                else ~missing | self._admits(mine, missing, step)
            )
            victims = np.empty(0, np.int64)
            if self.capacity is not None:
                admit, victims = self._make_room(rows, missing, admit)
        live_after = self.size - len(victims) + int((admit & missing).sum())
        if live_after >= MAX_ROWS:
            raise ResourceExhaustedError(
                f"a part of table {self.variable!r} would hold {live_after} rows; "
                f"one part holds fewer than {MAX_ROWS} (2**31): start the server "
                "with more --shards, or add servers"
            )
        grow_to = self.alloc
        if live_after > self.alloc:
            grow_to = max(live_after, int(GROWTH * self.alloc), self.alloc + 64)
            grow_to = min(grow_to, MAX_ROWS - 1)
            if self.capacity is not None:
                grow_to = max(live_after, min(grow_to, self.capacity))
        slots = len(self.slots) + new_slots
        grow_bytes = self.bytes_for(grow_to, slots) - self.bytes_for(self.alloc)
        return PartPlan(positions, rows, admit, victims, grow_to, max(grow_bytes, 0))

    def _admits(self, keys: np.ndarray, missing: np.ndarray, step: int) -> np.ndarray:
        admission = self.config.admission
        if admission is None or not missing.any():
            return missing.copy()
        out = np.zeros(len(keys), bool)
        where = np.flatnonzero(missing)
        if admission.min_count:
            counts = self.filter.counts(keys[where])
            out[where] = counts + 1 >= admission.min_count
        else:
            out[where] = admitted_by_chance(
                keys[where], self.seed, step, admission.probability
            )
        return out

    def _make_room(
        self, rows: np.ndarray, missing: np.ndarray, admit: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Victims (lowest policy score, never rows this push updates) so the
        admitted new keys fit the capacity; new keys beyond what eviction can
        free are not admitted (their gradients are dropped)."""
        new = np.flatnonzero(admit & missing)
        over = self.size + len(new) - self.capacity
        if over <= 0:
            return admit, np.empty(0, np.int64)
        candidate = self.live[: self.high].astype(bool)
        candidate[rows[~missing]] = False  # never a row this push updates
        candidates = np.flatnonzero(candidate)
        if over > len(candidates):
            admit = admit.copy()
            admit[new[len(new) - (over - len(candidates)) :]] = False
            over = len(candidates)
        # Room for the next pushes too, down to the evictor's low mark: the
        # scan below is then paid once in many pushes when the evictor lags.
        extra = self.capacity - int(ROOM * self.capacity)
        chosen = self.lowest(candidates, min(over + extra, len(candidates)))
        return admit, self.keys[chosen].copy()

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """The policy's score of rows: the lowest are evicted first (LRU:
        the step last updated; LFU: the update count, then that step)."""
        policy = self.config.eviction.policy if self.config.eviction else "lru"
        if policy == "lru":
            return self.updated[rows]
        count = np.minimum(self.count[rows], (1 << 31) - 1)
        return (count << 32) | np.minimum(self.updated[rows], (1 << 32) - 1)

    def lowest(self, rows: np.ndarray, n: int) -> np.ndarray:
        """The ``n`` of ``rows`` the policy evicts first (LRU: oldest update;
        LFU: fewest updates, then oldest), ties broken by the smaller key: the
        choice depends on the rows' keys and counts, never on where they lie
        (so a restored table evicts as the original would)."""
        if n <= 0:
            return rows[:0]
        if n >= len(rows):
            return rows
        score = self.scores(rows)
        kth = np.partition(score, n - 1)[n - 1]
        below, tied = rows[score < kth], rows[score == kth]
        need = n - len(below)
        if need < len(tied):
            tied = tied[np.argsort(self.keys[tied], kind="stable")[:need]]
        return np.concatenate([below, tied])

    def commit(
        self,
        plan: PartPlan,
        keys: np.ndarray,
        values: np.ndarray,
        optimizer: str,
        scalars: adamax.StepScalars,
        step: int,
    ) -> None:
        """Apply a planned push: evict, grow, admit, count, update (every
        change stamped with the plan's ``version``)."""
        self.evict(plan.victims, plan.version)
        self.grow(plan.grow_to)
        for name in ("m", "v"):
            if (optimizer, name) not in self.slots:
                self.slots[(optimizer, name)] = np.zeros_like(self.value)
        rows = plan.rows.copy()
        new = plan.admit & (rows < 0)
        if new.any():
            rows[new] = self._admit(keys[plan.positions[new]])
        refused = ~plan.admit
        if refused.any():
            dropped = keys[plan.positions[refused]]
            self.filtered += len(dropped)
            if self.filter is not None:
                self.filter.add(dropped)
        applied = rows[plan.admit]
        full = np.full(len(keys), -1, np.int64)
        full[plan.positions[plan.admit]] = applied
        adamax.sparse_rows_update(
            self.value,
            self.slots[(optimizer, "m")],
            self.slots[(optimizer, "v")],
            full,
            values,
            scalars,
        )
        self.updated[applied] = step + 1
        self.version[applied] = plan.version
        self.count[applied] += 1
        self.latest = max(self.latest, step + 1)

    def _admit(self, keys: np.ndarray) -> np.ndarray:
        """Rows for new keys: initial values, zero slots, indexed."""
        rows = self._take_rows(keys)
        self.updated[rows] = 0
        self.count[rows] = 0
        self.value[rows] = self.initializer.rows(keys, self.dim, self.dtype)
        for array in self.slots.values():
            array[rows] = 0
        self.admitted += len(keys)
        return rows

    def restore_rows(
        self,
        keys: np.ndarray,
        value: np.ndarray,
        slots: dict[tuple[str, str], np.ndarray],
        updated: np.ndarray,
        count: np.ndarray,
        version: np.ndarray,
    ) -> None:
        """Add rows exactly as a checkpoint saved them."""
        self.grow(self.size + len(keys))
        rows = self._take_rows(keys)
        self.value[rows] = value
        for key in set(slots) | set(self.slots):
            if key not in self.slots:
                self.slots[key] = np.zeros_like(self.value)
            self.slots[key][rows] = slots.get(key, 0)
        self.updated[rows] = updated
        self.count[rows] = count
        self.version[rows] = version
        self.latest = max(self.latest, int(updated.max()) if len(updated) else 0)

    def _take_rows(self, keys: np.ndarray) -> np.ndarray:
        """Free rows (reused first) given to new keys, indexed and live."""
        n = len(keys)
        reused = min(n, self.free_top)
        rows = np.empty(n, np.int64)
        rows[:reused] = self.free[self.free_top - reused : self.free_top][::-1]
        self.free_top -= reused
        rows[reused:] = np.arange(self.high, self.high + n - reused)
        self.high += n - reused
        self.keys[rows] = keys
        self.live[rows] = 1
        hash_index.insert_rows(self.index, self.keys, rows)
        self.size += n
        return rows

    def assign(self, keys: np.ndarray, values: np.ndarray, version: int) -> None:
        """Set the keys' rows (new keys get rows, zero slots, no admission
        test); the caller planned the room. They count as updated now (the
        current step, for the time to live) at change ``version``."""
        rows = self.rows_of(keys)
        new = rows < 0
        if new.any():
            rows[new] = self._admit(keys[new])
        self.value[rows] = values
        self.updated[rows] = self.latest
        self.version[rows] = version

    # Eviction ---------------------------------------------------------------------

    def evict(self, keys: np.ndarray, version: int) -> int:
        """Remove the keys' rows (value and slots); how many were there. Their
        tombstones are stamped ``step``: a delta since any earlier step
        lists them."""
        if not len(keys):
            return 0
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        rows = np.empty(len(keys), np.int64)
        hash_index.remove_keys(self.index, self.keys, keys, rows)
        gone = rows[rows >= 0]
        self.live[gone] = 0
        self.free[self.free_top : self.free_top + len(gone)] = gone
        self.free_top += len(gone)
        self.size -= len(gone)
        self.evicted += len(gone)
        self._tombstones(keys[rows >= 0], version)
        return len(gone)

    def _tombstones(self, keys: np.ndarray, version: int) -> None:
        if not len(keys):
            return
        if not len(self.tomb_keys):
            self.tomb_keys = np.zeros(TOMBSTONES, np.int64)
            self.tomb_versions = np.zeros(TOMBSTONES, np.int64)
        if len(keys) > TOMBSTONES:
            self.dropped_through = max(self.dropped_through, version)
            keys = keys[-TOMBSTONES:]
        at = (self.tomb_total + np.arange(len(keys))) % TOMBSTONES
        overwritten = at[self.tomb_total + np.arange(len(keys)) >= TOMBSTONES]
        if len(overwritten):
            self.dropped_through = max(
                self.dropped_through, int(self.tomb_versions[overwritten].max())
            )
        self.tomb_keys[at] = keys
        self.tomb_versions[at] = version
        self.tomb_total += len(keys)

    def grow(self, rows: int) -> None:
        """Allocate ``rows`` rows (copying the used ones) and re-index."""
        if rows <= self.alloc:
            return
        high = self.high

        def grown(array: np.ndarray) -> np.ndarray:
            out = np.empty((rows, *array.shape[1:]), array.dtype)
            out[:high] = array[:high]
            return out

        self.keys, self.updated, self.count, self.version = (
            grown(self.keys),
            grown(self.updated),
            grown(self.count),
            grown(self.version),
        )
        live = np.zeros(rows, np.uint8)
        live[:high] = self.live[:high]
        self.live = live
        self.value = grown(self.value)
        self.slots = {key: grown(array) for key, array in self.slots.items()}
        free = np.empty(rows, np.int64)
        free[: self.free_top] = self.free[: self.free_top]
        self.free = free
        self.alloc = rows
        buckets = hash_index.buckets_for(rows)
        if buckets != len(self.index):
            self.index = hash_index.empty_index(buckets)
            hash_index.rebuild(self.index, self.keys, self.live)
