"""A worker's resident memory, for the heartbeat (``--max-memory``, ``cluster-ctl status``)."""

from __future__ import annotations

import os
import resource
import sys

_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class ResidentMemory:
    """This process's resident memory in KiB, for the heartbeat.

    ``/proc/self/statm`` is opened once, in the worker, and read again with ``pread``: a worker
    at its descriptor limit (EMFILE) still reports its memory, and the heartbeat never raises
    out of the loop. Where there is no ``/proc`` (macOS), the peak resident size stands in.
    """

    def __init__(self) -> None:
        try:
            self.fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = -1

    def kib(self) -> int:
        if self.fd >= 0:
            try:
                return int(os.pread(self.fd, 128, 0).split()[1]) * _PAGE_KIB
            except (OSError, ValueError, IndexError):
                pass
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak
