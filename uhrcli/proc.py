"""Facts about this process that reports need."""
from __future__ import annotations

import resource
import sys
import time


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


_libc: object | None = None
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters
M_ARENA_MAX = -8


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                lib = ctypes.CDLL("libc.so.6")
                lib.malloc_trim.argtypes = [ctypes.c_size_t]
                lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                _libc = lib
            except (OSError, AttributeError):
                pass
    return _libc


_last_trim = 0.0
_bounded = False


def trim_heap(min_interval: float = 1.0) -> None:
    """Once `bound_heap` has been called: hand freed heap pages back to the OS (glibc's malloc_trim).

    A large tile allocates and frees hundreds of MB per layer; glibc keeps the
    freed pages of its arenas, so RSS creeps up tile after tile. Trimming is not
    free (the next tile faults the pages in again, and a trim itself takes ~10 ms),
    so it runs only for runs that asked for a bounded heap, at most once per
    `min_interval` seconds.
    """
    global _last_trim
    lib = _glibc()
    now = time.monotonic()
    if _bounded and lib and now - _last_trim >= min_interval:
        lib.malloc_trim(0)
        _last_trim = time.monotonic()


def bound_heap(mmap_threshold: int = 4 << 20) -> None:
    """Serve allocations above `mmap_threshold` from their own mappings, returned whole when freed.

    glibc raises this threshold as large blocks are freed (up to 32 MB), after
    which layer outputs of a few MB land in the arenas and fragment them: on a
    144 MP two-scale run peak RSS was 2.0 GB by default, 1.73 GB with trimming
    alone and 1.39 GB with a fixed 4 MB threshold and trimming (`trim_heap`, enabled by this call). The
    price is 10-20% of speed on a 2-core CPU (36 MP, six runs each: 33.6 s against 30.2 s), as fresh pages
    are zeroed by the kernel; so `segment` asks for it only on rasters where RSS growth threatens the bound.
    """
    global _bounded
    lib = _glibc()
    if lib:
        lib.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))
        _bounded = True


def limit_arenas(n: int = 2) -> None:
    """At most `n` malloc arenas for the threads of this process (glibc gives each thread its own, up to 8 per
    core). The reader, writer, scratch and model threads each kept freed tile buffers in an arena of their own:
    identity on a 1 GP raster peaked at 953 MB with glibc's default, 895 MB with two arenas, as fast."""
    lib = _glibc()
    if lib:
        lib.mallopt(M_ARENA_MAX, int(n))
