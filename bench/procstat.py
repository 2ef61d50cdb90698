"""CPU time of a process or thread from Linux ``/proc``, for the benchmarks that measure it.

CPU time, unlike wall time, does not stretch when the machine's other jobs take the cores.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def stat_fields(stat: Path) -> list[str]:
    """The fields of a ``/proc/PID/stat`` (or ``/proc/PID/task/TID/stat``) file after the command
    name, which may hold spaces and parentheses: index 0 is the state, 1 the parent's pid, 11 and
    12 user and system time. Raises ``OSError`` when the process or thread is gone.

    >>> fields = stat_fields(Path("/proc/self/stat"))
    >>> int(fields[1]) == os.getppid()
    True
    """
    return stat.read_text().rsplit(")", 1)[1].split()


def cpu_seconds(fields: list[str], children: bool = False) -> float:
    """User + system CPU seconds in :func:`stat_fields`' ``fields``; with ``children``, those of the
    children the process has reaped too (a Faust worker serialises checkpoints in forked children).

    >>> fields = stat_fields(Path("/proc/self/stat"))
    >>> 0 <= cpu_seconds(fields) <= cpu_seconds(fields, children=True)
    True
    """
    return sum(int(value) for value in fields[11 : 15 if children else 13]) / TICKS_PER_SECOND
