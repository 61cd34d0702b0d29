"""`python -m hv1`: the same program as the `hv1` console script (hv1.cli.entry)."""

import os
import sys
import traceback

try:
    from hv1.cli import entry
except BaseException:  # hv1 cannot even be imported: still exit status 8, never Python's 1
    traceback.print_exc()
    sys.stderr.write("hv1: internal error: cannot import hv1.cli (exit status 8)\n")
    sys.stderr.flush()
    os._exit(8)

entry()
