"""The time basis shared by every format that speaks in sysUptime.

NetFlow v5 (and the flow-tools CSV line that mirrors it) carries a flow's
FIRST/LAST as 32-bit milliseconds of the exporter's ``sysUptime``, plus, in the
header, the export time as ``unix_secs``/``unix_nsecs`` and the ``sysUptime``
at that moment.  A collector recovers absolute times as::

    boot_ms  = unix_secs * 1000 + unix_nsecs // 1_000_000 - SysUptime
    first_ms = boot_ms + FIRST
    last_ms  = boot_ms + LAST

nfdump 1.7 (``src/netflow/netflow_v5_v7.c``, ``Process_v5``) does exactly that,
in unsigned 64-bit arithmetic, with two wrap corrections on top:

* ``FIRST > LAST`` is read as "sysUptime wrapped during the flow":
  ``first = boot - 2**32 + FIRST``;
* ``LAST > SysUptime + 100000`` is read as "sysUptime wrapped after the flow
  ended but before export": both times move back by ``2**32``.

Neither correction fires, and both times decode exactly, when for every record
of a datagram::

    0 <= FIRST <= LAST <= SysUptime <= 2**32 - 1

with ``base = export_ms - SysUptime`` the epoch ms that plays "boot time".
Every exporter here keeps that invariant:

1. ``base`` is at or below the datagram's earliest ``first_ms``
   (so ``FIRST >= 0``);
2. the export time is at or after its latest ``last_ms`` (``LAST <= SysUptime``);
3. ``export_ms - base <= 2**32 - 1``, hence everything fits in 32 bits.

:func:`uptime_base` picks ``base``.  It prefers the host's real boot time
(``/proc/stat`` ``btime``, identical for every process), advanced by whole
``2**32`` ms periods when the host has been up longer than 49.7 days — so the
exported sysUptime is the host's uptime modulo ``2**32``, as on a real router.
When a flow started before that epoch (a connection older than the exporter's
host, or a replayed log from days or weeks ago), it falls back to the earliest
first time itself: ``FIRST`` is then 0 for that flow and the decoded times are
still exact.  A single flow longer than ``2**32 - 1`` ms cannot be carried;
:func:`clamp_span` shortens it (the start moves forward) and callers count it.
"""

from __future__ import annotations

import time

#: Largest value of a 32-bit sysUptime / FIRST / LAST field, in ms (~49.7 days).
UPTIME_MAX = 2**32 - 1
#: Length of one sysUptime wrap period.
UPTIME_PERIOD = 2**32

PROC_STAT = "/proc/stat"


def host_boot_ms(path: str = PROC_STAT) -> int:
    """The host's boot time in epoch ms, as the kernel reports it (``btime``).

    ``btime`` is whole seconds, so every process on the host gets the same
    value.  Without ``/proc`` (not Linux), falls back to the realtime clock
    minus ``CLOCK_BOOTTIME``, rounded down to the second.
    """
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith("btime "):
                    return int(line.split()[1]) * 1000
    except (OSError, ValueError, IndexError):
        pass
    up_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    return (time.time_ns() - up_ns) // 1_000_000_000 * 1000


def uptime_base(min_first_ms: int, now_ms: int, boot_ms: int) -> int:
    """Epoch ms that plays "boot time" for flows starting at/after ``min_first_ms``.

    ``now_ms`` is the export time (the header's unix_secs/unix_nsecs), which the
    caller keeps at or after every flow's end.  Returns ``boot_ms`` (advanced by
    whole 2**32 ms periods when ``now_ms - boot_ms`` exceeds 32 bits) if that
    lies at or below ``min_first_ms``; otherwise ``min_first_ms`` itself.  In both
    cases ``now_ms - base`` fits in 32 bits whenever ``now_ms - min_first_ms``
    does, and ``min_first_ms - base >= 0``.
    """
    up = now_ms - boot_ms
    if up >= 0:
        epoch = boot_ms + (up >> 32 << 32)
        if epoch <= min_first_ms:
            return epoch
    return min_first_ms


def clamp_span(first_ms: int, last_ms: int) -> int:
    """``first_ms`` adjusted so that ``0 <= last_ms - first <= UPTIME_MAX``.

    A start after the end becomes the end; a flow longer than ~49.7 days
    starts ``UPTIME_MAX`` ms before its end.  Returns ``first_ms`` unchanged
    in the normal case (compare to detect and count a clamp).
    """
    if first_ms > last_ms:
        return last_ms
    if last_ms - first_ms > UPTIME_MAX:
        return last_ms - UPTIME_MAX
    return first_ms
