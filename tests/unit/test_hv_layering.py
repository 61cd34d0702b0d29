"""Layering rules of hv1/hv that a reader relies on (issue 10 "Architecture"): one trace-sink
protocol for every subsystem (hv/interfaces.py TraceSink, implemented by hv1.trace.Tracer), and the
TLFS layouts in hv1/tlfs, not redefined inside hv1/hv."""

from __future__ import annotations

import ast
from pathlib import Path

from hv1.hv.interfaces import TraceSink
from hv1.trace import NULL_TRACER, Tracer

HV = Path(__file__).resolve().parents[2] / "hv1" / "hv"


def _protocols_with(method: str) -> list[str]:
    """`file:Class` for every Protocol class under hv1/hv that declares `method`."""
    found = []
    for path in sorted(HV.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            if not any(isinstance(b, ast.Name) and b.id == "Protocol" for b in node.bases):
                continue
            if any(isinstance(f, ast.FunctionDef) and f.name == method for f in node.body):
                found.append(f"{path.relative_to(HV)}:{node.name}")
    return found


def test_one_trace_sink_protocol() -> None:
    assert _protocols_with("emit") == ["interfaces.py:TraceSink"]


def test_the_tracer_is_a_trace_sink() -> None:
    sink: TraceSink = Tracer()  # mypy --strict checks the structure; this checks it at run time
    assert not sink.wants("synic")
    sink.emit("synic", 0, "post", sint=2)
    assert NULL_TRACER.wants("timers") is False


# Names of TLFS register bits and layouts that live in hv1/tlfs (synic, timers, messages, vp,
# virtual_mmu): hv1/hv imports them and never assigns its own.
SPEC_PREFIXES = ("SINT_", "STIMER_", "SCONTROL_", "MESSAGE_", "INPUT_VTL", "VTL_", "TRANSLATE_FLAGS")
SPEC_CLASSES = ("TranslateFlags", "TranslateResult")


def test_spec_layouts_live_in_tlfs() -> None:
    found = []
    for path in sorted(HV.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            names: list[str] = []
            if isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            elif isinstance(node, ast.ClassDef) and node.name in SPEC_CLASSES:
                names = [node.name]
            found += [
                f"{path.relative_to(HV)}:{n}" for n in names if n.startswith(SPEC_PREFIXES + SPEC_CLASSES)
            ]
    assert found == []
