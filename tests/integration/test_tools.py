"""Issue 14's tools end to end on KVM: `--inject` against a guest that retries (guests/tests/synic.c
"inject-every=N"), with `--trace-json`, `--trace-perfetto` and `hv1 stats` on the same run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import requires_kvm, run_hv1

pytestmark = [requires_kvm, pytest.mark.timeout(240)]

Guest = Callable[[str], Path]
EVERY = 3


@pytest.mark.parametrize("apic", ["kernel", "user"])
def test_inject_post_message_insufficient_buffers_guest_retries(
    guest: Guest, apic: str, tmp_path: Path
) -> None:
    """HvCallPostMessage Return Values: INSUFFICIENT_BUFFERS. The guest sees exactly calls 3, 6, 9, ...
    refused; the trace has one 'inject' event per refusal; the timeline and the stats agree."""
    jsonl, timeline = tmp_path / "trace.jsonl", tmp_path / "timeline.json"
    r = run_hv1(
        "run", str(guest("synic")), "--apic", apic, "--append", f"inject-every={EVERY}",
        "--inject", f"hypercall=HvCallPostMessage:status=INSUFFICIENT_BUFFERS:every={EVERY}",
        "--trace-json", str(jsonl), "--trace-perfetto", str(timeline), "--timeout", "200",
    )  # fmt: skip
    assert r.status == 1 and not r.failed, r.describe()
    assert r.results.get("synic.inject.retry-sees-exactly-the-injected-failures") == "PASS", r.describe()
    assert r.results.get("synic.inject.every-message-once-in-order") == "PASS", r.describe()

    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    posts = [x for x in records if x["cat"] == "hypercalls" and x["event"] == "HvCallPostMessage"]
    refused = [x for x in posts if x["status"] == "INSUFFICIENT_BUFFERS"]
    injected = [x for x in records if x["cat"] == "inject"]
    assert len(refused) == len(posts) // EVERY == len(injected) > 0

    events = json.loads(timeline.read_text())["traceEvents"]
    slices = [e for e in events if e["ph"] == "X" and e["name"] == "HvCallPostMessage"]
    assert len(slices) == len(posts) and {e["tid"] for e in slices} == {1}  # VP 0

    s = run_hv1("stats", str(jsonl))
    assert s.status == 0, s.describe()
    line = next(x for x in s.stdout.splitlines() if x.startswith("hypercall") and "HvCallPostMessage" in x)
    assert line.split()[2] == str(len(posts)) and f"INSUFFICIENT_BUFFERS={len(refused)}" in line
