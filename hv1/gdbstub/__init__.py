"""A GDB Remote Serial Protocol server for hv1 guests (`hv1 run --gdb HOST:PORT`).

`server.GdbServer` speaks the protocol (GDB manual, Appendix E "Remote Serial Protocol") against a
`target.DebugTarget`: the machine's adapter (hv1/machine/debug.py) or a fake CPU in the tests. Every
VP is a gdb thread (thread ID = VP index + 1) and registers travel in the layout of the target
description in `registers.py`.
"""
