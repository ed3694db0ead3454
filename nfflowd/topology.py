"""The pipeline's shape: its stage processes, the links between them, how shards are named.

A leaf module (no ZeroMQ, no supervisor, no I/O), so that the configuration, the
metrics and the operator's commands can name stages and links without pulling
in the machinery that runs them.  :mod:`nfflowd.pipeline.endpoints` adds to each
link its socket types and address; :mod:`nfflowd.pipeline.shards` routes events
to correlator shards.

::

    ingest --events--> correlate --flows.export--> export --> UDP collectors
                                 \\-flows.mirror--> mirror --> screen / syslog
    every stage --notices--> (replay / tests, when listening)

Shards (``<daemon> correlators N exporters M``): shard 0 keeps the unsharded link
names (``events``, ``flows.export``), shard *i* > 0 appends ``.i`` (``events.1``);
processes are ``correlate``/``export`` when single, else ``correlate-i``/
``export-j`` (supervisord's ``%(program_name)s-%(process_num)d``).  Correlator *i*
feeds exporter ``i % M`` and the single mirror, each over a link of its own, so
every link keeps exactly one sender and one receiver.
"""

from __future__ import annotations

from typing import Final, NamedTuple

#: The stage processes, in pipeline order.
STAGES: Final = ("ingest", "correlate", "export", "mirror")


class Link(NamedTuple):
    """A data link: batches go from *sender* to *receiver*, acknowledgements come back."""

    name: str
    sender: str
    receiver: str


#: The acknowledged data links (the endpoints that may cross hosts), in pipeline order.
DATA_LINKS: Final = (
    Link("events", "ingest", "correlate"),
    Link("flows.export", "correlate", "export"),
    Link("flows.mirror", "correlate", "mirror"),
)
LINKS: Final = tuple(link.name for link in DATA_LINKS)
BY_NAME: Final = {link.name: link for link in DATA_LINKS}
#: Out-of-band notices: every stage publishes, whoever listens binds.
NOTICES: Final = "notices"


def side_of(name: str, stage: str) -> str | None:
    """Which side ("sender"/"receiver") of data link *name* *stage* is (None: neither)."""
    link = BY_NAME[base_link(name)]
    return "sender" if link.sender == stage else "receiver" if link.receiver == stage else None


def link(base: str, shard: int) -> str:
    """The link of correlator *shard* on *base* (``events`` -> ``events.1``)."""
    return base if shard == 0 else f"{base}.{shard}"


def base_link(name: str) -> str:
    """``events.1`` -> ``events`` (counters are named after the base link)."""
    base, _, num = name.rpartition(".")
    return base if num.isdigit() else name


def exporter_of(correlator: int, exporters: int) -> int:
    return correlator % exporters


def correlators_of(exporter: int, correlators: int, exporters: int) -> list[int]:
    """The correlators that feed *exporter*."""
    return [i for i in range(correlators) if exporter_of(i, exporters) == exporter]


def process_name(stage: str, shard: int | None) -> str:
    """``correlate`` (unsharded) or ``correlate-1``."""
    return stage if shard is None else f"{stage}-{shard}"


def stage_of(process: str) -> str:
    """``correlate-1`` -> ``correlate``; unsharded names are returned as they are."""
    base, _, num = process.rpartition("-")
    return base if base and num.isdigit() else process
