"""A partition's guest physical address map (TLFS PDF §5 "Guest Physical Address Space",
virtualization-host.md "Address Space Management", datatypes/hv_map_gpa_flags.md).

Each GPA page of a partition is mapped (to a backing page, with access rights), mapped to a special
page (no access, the shared zero page, the shared ones page), or unmapped. The backing page is a page
of the root partition's RAM: hv1's stand-in for a system physical address (SPA), so a mapping into a
grandchild still names the RAM it really uses, and the KVM backend can point a memory slot of any
partition straight into the root's mapping (zero copy).

An access a mapping does not allow, or an access to an unmapped page, is not an error of the VMM: it
is a memory intercept for the partition's parent (`GpaAccessFault`).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterator
from dataclasses import dataclass

from hv1.tlfs.virtualization_host import MAP_GPA_PERMISSIONS, MAP_GPA_SPECIAL_MASK, PAGE_SHIFT, MapGpaFlags

# Shared special pages (hv_map_gpa_flags.md "Special Page Encodings"): no backing RAM page.
BACKING_NONE = -1  # HV_MAP_GPA_NO_ACCESS
BACKING_ZERO = -2  # HV_MAP_GPA_ZEROED: reads and fetches see zeros
BACKING_ONES = -3  # HV_MAP_GPA_ONES: reads and fetches see all-ones
_SPECIAL_BACKING = {
    int(MapGpaFlags.NO_ACCESS): BACKING_NONE,
    int(MapGpaFlags.ZEROED): BACKING_ZERO,
    int(MapGpaFlags.ONES): BACKING_ONES,
}

# A second-level page table page covers this many GPA pages: hv1 charges the partition's memory pool
# one page per group in use (see hv1/hv/hypervisor.py POOL_COSTS), as a real hypervisor's SLAT does.
PAGES_PER_TABLE = 512


class Access(enum.IntFlag):
    """The kind of access checked against a mapping's rights."""

    READ = 1
    WRITE = 2
    EXECUTE = 4


def rights_valid(flags: int) -> bool:
    """PDF §5.1: the x64 access-right combinations are none, R, RX, RW and RWX. Write or execute
    without read is illegal (kernel and user execute are separate bits of X)."""
    perms = flags & MAP_GPA_PERMISSIONS
    return perms == 0 or bool(perms & MapGpaFlags.READABLE)


def special_backing(flags: int) -> int | None:
    """The shared backing a special encoding (bits 16-17) selects, or None for an ordinary mapping."""
    special = flags & MAP_GPA_SPECIAL_MASK
    return _SPECIAL_BACKING.get(special) if special else None


def allowed(flags: int, backing: int) -> Access:
    """The accesses a mapping permits. Special pages never take writes; NO_ACCESS takes nothing."""
    if backing == BACKING_NONE:
        return Access(0)
    out = Access(0)
    if flags & MapGpaFlags.READABLE:
        out |= Access.READ
    if flags & MapGpaFlags.WRITABLE and backing >= 0:
        out |= Access.WRITE
    if flags & (MapGpaFlags.KERNEL_EXECUTABLE | MapGpaFlags.USER_EXECUTABLE):
        out |= Access.EXECUTE
    return out


@dataclass(frozen=True)
class GpaMapping:
    """One mapped GPA page: the backing page (root RAM page number, or a BACKING_* special), the
    HV_MAP_GPA_FLAGS it was mapped with, and where it came from (the partition and page number in
    that partition's GPA space the parent named as the source; None for the root's own RAM)."""

    backing: int
    flags: int
    source: tuple[int, int] | None = None

    @functools.cached_property
    def access(self) -> Access:
        return allowed(self.flags, self.backing)

    @functools.cached_property
    def access_bits(self) -> int:
        """`access` as a plain int, computed once: `check` runs on every read the hypervisor makes
        of a child's memory, and each IntFlag operator costs ~2-5 us on this host (allowed() and the
        `~` of the check took ~17 us a page: a child's intercept read its code bytes twice)."""
        return int(self.access)


@dataclass(frozen=True)
class GpaRun:
    """Consecutive GPA pages backed by consecutive RAM pages with equal rights: one memory slot."""

    first_page: int
    backing_first: int
    count: int
    flags: int


class GpaAccessFault(Exception):
    """An access the partition's GPA map does not allow: an unmapped-GPA or GPA intercept for the
    parent (HvMessageTypeUnmappedGpa / HvMessageTypeGpaIntercept), never a host error."""

    def __init__(self, page: int, access: Access, mapped: bool) -> None:
        super().__init__(f"GPA page {page:#x}: {access.name} {'denied' if mapped else 'unmapped'}")
        self.page = page
        self.access = access
        self.mapped = mapped


class GpaMap:
    """The GPA map of one partition. Not thread-safe: the hypervisor lock guards it."""

    def __init__(self) -> None:
        self._pages: dict[int, GpaMapping] = {}
        self._tables: dict[int, int] = {}  # page >> 9 -> mapped pages in that table

    def __len__(self) -> int:
        return len(self._pages)

    def __contains__(self, page: int) -> bool:
        return page in self._pages

    def get(self, page: int) -> GpaMapping | None:
        return self._pages.get(page)

    def items(self) -> Iterator[tuple[int, GpaMapping]]:
        return iter(sorted(self._pages.items()))

    @property
    def tables_in_use(self) -> int:
        return len(self._tables)

    def new_tables_for(self, pages: list[int]) -> int:
        """How many table pages mapping `pages` (all currently unmapped) would add."""
        groups = {p // PAGES_PER_TABLE for p in pages}
        return sum(1 for g in groups if g not in self._tables)

    def map(self, page: int, mapping: GpaMapping) -> None:
        """Map an unmapped page (callers check; mapping over a mapped page is their bug)."""
        assert page not in self._pages, f"page {page:#x} already mapped"
        self._pages[page] = mapping
        group = page // PAGES_PER_TABLE
        self._tables[group] = self._tables.get(group, 0) + 1

    def modify(self, page: int, flags: int) -> GpaMapping:
        old = self._pages[page]
        new = GpaMapping(old.backing, flags, old.source)
        self._pages[page] = new
        return new

    def unmap(self, page: int) -> GpaMapping:
        """Unmap a mapped page; returns what was there."""
        old = self._pages.pop(page)
        group = page // PAGES_PER_TABLE
        left = self._tables[group] - 1
        if left:
            self._tables[group] = left
        else:
            del self._tables[group]
        return old

    def clear(self) -> list[GpaMapping]:
        out = list(self._pages.values())
        self._pages.clear()
        self._tables.clear()
        return out

    def check(self, gpa: int, length: int, access: Access) -> list[GpaMapping]:
        """The mappings behind [gpa, gpa+length), or GpaAccessFault for the first page that does
        not allow `access` (PDF §5: an access crossing a page boundary is validated completely
        before any byte is written)."""
        if length <= 0:
            return []
        first, last = gpa >> PAGE_SHIFT, (gpa + length - 1) >> PAGE_SHIFT
        out = []
        want = int(access)
        for page in range(first, last + 1):
            m = self._pages.get(page)
            if m is None:
                raise GpaAccessFault(page, access, mapped=False)
            if want & ~m.access_bits:
                raise GpaAccessFault(page, access, mapped=True)
            out.append(m)
        return out

    def runs(self) -> list[GpaRun]:
        """Coalesced runs of ordinary mappings: what a backend turns into memory slots."""
        out: list[GpaRun] = []
        for page, m in sorted(self._pages.items()):
            if m.backing < 0:
                continue
            perms = m.flags & MAP_GPA_PERMISSIONS
            if out:
                r = out[-1]
                if (
                    r.first_page + r.count == page
                    and r.backing_first + r.count == m.backing
                    and r.flags & MAP_GPA_PERMISSIONS == perms
                ):
                    out[-1] = GpaRun(r.first_page, r.backing_first, r.count + 1, r.flags)
                    continue
            out.append(GpaRun(page, m.backing, 1, m.flags))
        return out
