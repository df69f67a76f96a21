"""The mode a new file gets from the umask (0644 under umask 022), for files made private by their writer.

Writers that create files under a temporary name with mkstemp or similar get 0600: a checkpoint or map moved
into place like that would be unreadable to colleagues sharing the folder.
"""
from __future__ import annotations

import os


def current_umask() -> int:
    """The process umask, read without changing it where Linux says it (/proc, kernel >= 4.7)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # elsewhere: set and restore; a file made meanwhile by another thread is private, not open
    os.umask(mask)
    return mask


def usual_mode(path: str | os.PathLike) -> None:
    """Give a finished file the mode open() would have given it (0666, or 0777 for a folder, less the umask)."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~current_umask())


__all__ = ["current_umask", "usual_mode"]
