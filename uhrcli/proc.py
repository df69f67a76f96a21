"""Facts about this process that reports need."""
from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """This process's peak resident set, in MB.

    Linux's VmHWM belongs to the current address space, so a freshly exec'd
    worker reports only its own peak; ru_maxrss would also count the parent's
    pages that the child inherited before exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / 1024.0 if sys.platform != "darwin" else ru / 2**20  # macOS reports bytes
