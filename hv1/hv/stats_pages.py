"""Statistics counters and the stats pages that show them (HvCallMapStatsPage2 /
HvCallUnmapStatsPage; counter numbers in hv1/tlfs/stats.py).

`Counters` is what the running layer bumps (`Hypervisor.count(partition_id, vp_index, name)`, e.g. on
every hypercall or intercept of a child VP); the engine adds the counters it derives from its own
state (VP count, deposited pages, mapped GPA pages) when it renders a page. A stats page is 512 u64
counters indexed by counter number. The TLFS makes it an overlay the hypervisor keeps current; hv1
writes it into the caller's RAM page when it is mapped, whenever a counter of its object is bumped,
and on `Hypervisor.refresh_stats_pages()` (after every virtualization-host hypercall): a reader sees
values at most one event old.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from dataclasses import dataclass, field

from hv1.tlfs.stats import STATS_PAGE_COUNTERS, PartitionCounter, StatsObjectType, VpCounter

STATS_PAGE = struct.Struct(f"<{STATS_PAGE_COUNTERS}Q")
U64_MAX = (1 << 64) - 1

# What `count` accepts: the counter names of hv1/tlfs/stats.py (VP counters with a VP index, partition
# counters without).
VP_COUNTERS = {c.name: int(c) for c in VpCounter}
PARTITION_COUNTERS = {c.name: int(c) for c in PartitionCounter}

# The object a stats page shows: (HV_STATS_OBJECT_TYPE, partition id or 0, VP index or 0).
StatsObject = tuple[StatsObjectType, int, int]


@dataclass(frozen=True)
class StatsMapping:
    """A mapped stats page: who mapped it, at which of its GPA pages, over which root RAM page."""

    caller: int
    obj: StatsObject
    area: int
    gpa_page: int
    backing: int


@dataclass
class Counters:
    """Bumped counters: per partition and per (partition, VP), by counter number."""

    partition: defaultdict[int, defaultdict[int, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    vp: defaultdict[tuple[int, int], defaultdict[int, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )

    def bump(
        self, partition_id: int, vp_index: int | None, name: str, n: int = 1
    ) -> tuple[StatsObject, int, int]:
        """Add n; returns (object, counter number, new value). KeyError for a name that is not a
        counter of that kind (a caller's bug, not a guest's)."""
        if vp_index is None:
            index = PARTITION_COUNTERS[name]
            table = self.partition[partition_id]
            obj: StatsObject = (StatsObjectType.PARTITION, partition_id, 0)
        else:
            index = VP_COUNTERS[name]
            table = self.vp[(partition_id, vp_index)]
            obj = (StatsObjectType.VP, partition_id, vp_index)
        table[index] = (table[index] + n) & U64_MAX
        return obj, index, table[index]

    def values(self, obj: StatsObject) -> dict[int, int]:
        kind, pid, vp = obj
        if kind is StatsObjectType.PARTITION:
            return dict(self.partition.get(pid, {}))
        if kind is StatsObjectType.VP:
            return dict(self.vp.get((pid, vp), {}))
        return {}

    def drop(self, partition_id: int, vp_index: int | None = None) -> None:
        if vp_index is None:
            self.partition.pop(partition_id, None)
            for key in [k for k in self.vp if k[0] == partition_id]:
                del self.vp[key]
        else:
            self.vp.pop((partition_id, vp_index), None)


def render(values: dict[int, int]) -> bytes:
    """The 4096-byte page: counter n at offset 8 n, every other counter 0."""
    page = [0] * STATS_PAGE_COUNTERS
    for index, value in values.items():
        if 0 < index < STATS_PAGE_COUNTERS:
            page[index] = value & U64_MAX
    return STATS_PAGE.pack(*page)
