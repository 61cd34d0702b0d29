"""Overlay pages: hypervisor pages laid over guest RAM (PDF §5.2.1; inventory §6.1 "Overlay pages").

An overlay "covers whatever else is mapped to the GPA range"; disabling or moving it uncovers the
old mapping again, and its contents follow it. hv1 makes this with copy-swap over guest RAM:

- map(gpfn): save the 4 KiB of RAM underneath, then show the overlay's content there;
- unmap(): take the (possibly guest-modified) content back out of RAM, restore the saved RAM;
- a move is unmap + map, so the content follows the overlay.

While mapped, the content *is* that RAM page: guest reads and writes (SIMP, SIEFP, VP assist page)
need no exits. `data()` gives a view of the content wherever it currently lives.

A GPFN that is not backed by guest RAM cannot be shown: "If the specified base address is beyond the
end of the partition's GPA space, the page will not be accessible" (no fault; the content is kept
aside). The HYPERCALL MSR alone rejects such a GPFN with #GP (hv/hypercall_page.py).

Several overlays on one GPFN ("only one of them is visible, order undefined") are handled by an
`OverlayLayer` shared by all overlays of a partition: the most recently mapped one is visible, the
RAM underneath is saved once, and unmapping any of them restores what is below it. A partition reset
drops every overlay without touching RAM (`OverlayLayer.reset`). Create overlays
with `Partition.new_overlay()` (or `OverlayPage(memory, layer)`) so that they share the layer.
All calls must be made under the partition lock.
"""

from __future__ import annotations

from hv1.hv.interfaces import PAGE_SHIFT, PAGE_SIZE, GuestMemory


class OverlayLayer:
    """The stack of overlays over each guest page, for one guest memory."""

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self._stacks: dict[int, list[OverlayPage]] = {}  # gpfn -> overlays, top (visible) last
        self._under: dict[int, bytearray] = {}  # gpfn -> the RAM below the lowest overlay
        self.pages: list[OverlayPage] = []  # every overlay created on this layer

    def visible(self, gpfn: int) -> OverlayPage | None:
        stack = self._stacks.get(gpfn)
        return stack[-1] if stack else None

    def guest_writable(self, gpa: int, length: int) -> bool:
        """Whether the guest may write every byte of [gpa, gpa + length): False where the visible
        overlay is one the guest can only read (the hypercall page: "Its contents are readable and
        executable by the guest. Attempts to write to the hypercall page will result in a protection
        (#GP) exception", hypercall-interface.md "Hypercall Page"). Host writes on the guest's behalf
        (hypercall output blocks) check this first: the host never writes where the guest may not."""
        if length <= 0:
            return True
        for gpfn in range(gpa >> PAGE_SHIFT, ((gpa + length - 1) >> PAGE_SHIFT) + 1):
            top = self.visible(gpfn)
            if top is not None and not top.guest_writable:
                return False
        return True

    def _show(self, page: OverlayPage, gpfn: int) -> None:
        gpa = gpfn << PAGE_SHIFT
        stack = self._stacks.setdefault(gpfn, [])
        if stack:
            stack[-1]._hide_from_ram(gpa)
        else:
            self._under[gpfn] = bytearray(self.memory.read(gpa, PAGE_SIZE))
        stack.append(page)
        self.memory.write(gpa, page._content)
        page._in_ram = True

    def _remove(self, page: OverlayPage, gpfn: int) -> None:
        gpa = gpfn << PAGE_SHIFT
        stack = self._stacks[gpfn]
        top = stack[-1] is page
        if top:
            page._hide_from_ram(gpa)
        stack.remove(page)
        if not top:
            return
        if stack:
            self.memory.write(gpa, stack[-1]._content)
            stack[-1]._in_ram = True
        else:
            self.memory.write(gpa, self._under.pop(gpfn))
            del self._stacks[gpfn]

    def reset(self) -> None:
        """Partition reset: every overlay unmapped and zeroed, and guest RAM left exactly as it is.

        The saved copies of the RAM under the overlays are dropped, not written back: a partition
        reset (HV_X64_MSR_RESET) comes with a platform reset that gives the guest fresh RAM (the
        machine reloads the boot image), and those copies belong to the previous boot. Writing them
        back would put old RAM into the new boot wherever an overlay was mapped. After this, mapping
        an overlay saves whatever RAM is there then, so nothing from before the reset can resurface."""
        for page in self.pages:
            page.gpfn = None
            page._in_ram = False
            page._content[:] = bytes(PAGE_SIZE)
        self._stacks.clear()
        self._under.clear()


class OverlayPage:
    """One 4 KiB hypervisor page that can be laid over a guest page. Its content is zero at first,
    follows the page across map/move/unmap, and survives unmap (the caller zeroes it when the TLFS
    says so, e.g. on enable or reset)."""

    def __init__(
        self, memory: GuestMemory, layer: OverlayLayer | None = None, *, guest_writable: bool = True
    ) -> None:
        self.layer = layer if layer is not None else OverlayLayer(memory)
        # False: the guest may only read/execute the page (the hypercall page); see
        # OverlayLayer.guest_writable. The machine enforces it for guest writes (a read-only slot).
        self.guest_writable = guest_writable
        self.memory = self.layer.memory
        self.layer.pages.append(self)
        self._content = bytearray(PAGE_SIZE)  # authoritative while not shown in RAM
        self._in_ram = False
        self.gpfn: int | None = None  # where it is mapped (shown or, beyond RAM, not accessible)

    # --- placement ---------------------------------------------------------------------------------
    @property
    def mapped(self) -> bool:
        return self.gpfn is not None

    @property
    def accessible(self) -> bool:
        """True when the guest can see the page (mapped over RAM)."""
        return self.gpfn is not None and self.memory.contains(self.gpfn << PAGE_SHIFT, PAGE_SIZE)

    def map(self, gpfn: int) -> None:
        """Lay the page over `gpfn` (moving it if mapped elsewhere). Beyond RAM: mapped but not
        accessible."""
        if self.gpfn == gpfn:
            return
        self.unmap()
        self.gpfn = gpfn
        if self.memory.contains(gpfn << PAGE_SHIFT, PAGE_SIZE):
            self.layer._show(self, gpfn)

    def unmap(self) -> None:
        if self.gpfn is None:
            return
        gpfn, self.gpfn = self.gpfn, None
        if gpfn in self.layer._stacks and self in self.layer._stacks[gpfn]:
            self.layer._remove(self, gpfn)

    def _hide_from_ram(self, gpa: int) -> None:
        if self._in_ram:
            self._content[:] = self.memory.read(gpa, PAGE_SIZE)
            self._in_ram = False

    # --- content -----------------------------------------------------------------------------------
    def data(self) -> memoryview:
        """A writable view of the content wherever it lives now (guest RAM while visible). Valid
        until the next map/unmap of any overlay on the same layer."""
        if self._in_ram and self.gpfn is not None:
            return self.memory.view(self.gpfn << PAGE_SHIFT, PAGE_SIZE)
        return memoryview(self._content)

    def read(self, offset: int = 0, length: int = PAGE_SIZE) -> bytes:
        if offset < 0 or length < 0 or offset + length > PAGE_SIZE:
            raise ValueError(f"overlay read {offset:#x}+{length:#x} outside the page")
        return bytes(self.data()[offset : offset + length])

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if offset < 0 or offset + len(data) > PAGE_SIZE:
            raise ValueError(f"overlay write {offset:#x}+{len(data):#x} outside the page")
        self.data()[offset : offset + len(data)] = data

    def fill(self, content: bytes | bytearray) -> None:
        """Replace the whole content (shorter content is padded with zeros)."""
        if len(content) > PAGE_SIZE:
            raise ValueError("overlay content larger than a page")
        view = self.data()
        view[: len(content)] = content
        view[len(content) :] = bytes(PAGE_SIZE - len(content))

    def zero(self) -> None:
        self.fill(b"")
