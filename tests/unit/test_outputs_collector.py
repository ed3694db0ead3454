"""UdpCollector against real loopback sockets: delivery, ICMP refusals, source binding.

``send`` says what became of each datagram: SENT, REFUSED (kept by the exporter,
sent again later) or DROPPED (counted)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator

import pytest

from nfflowd.outputs.collector import DROPPED, REFUSED, SENT, SNDBUF_BYTES, UdpCollector
from tests.needs import skip_outside_ci
from tests.udp_ports import closed_udp_port, udp_receiver


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


#: Outside CI the IPv6 tests skip on a host without ::1; under CI=true they run.
needs_ipv6_loopback = skip_outside_ci(
    None if _ipv6_loopback() else "no IPv6 loopback (::1) on this host"
)


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    yield from udp_receiver()


def test_datagrams_arrive_intact(receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    coll = UdpCollector("127.0.0.1", port)
    payloads = [os.urandom(n) for n in (1, 24, 72, 1464, 8000, 65507)]
    try:
        for p in payloads:
            assert coll.send(p) == SENT
        got = [receiver.recv(70000) for _ in payloads]
    finally:
        coll.close()
    assert got == payloads
    assert coll.counters["datagrams_sent"] == len(payloads)
    assert coll.counters["bytes_sent"] == sum(map(len, payloads))
    assert coll.counters["send_errors"] == 0
    assert coll.last_error is None


@needs_ipv6_loopback
def test_ipv6_collector() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx:
        rx.bind(("::1", 0))
        rx.settimeout(5)
        coll = UdpCollector("::1", rx.getsockname()[1])
        assert coll.target == f"[::1]:{rx.getsockname()[1]}"
        assert coll.send(b"v6 datagram") == SENT
        data, addr = rx.recvfrom(100)
        coll.close()
    assert data == b"v6 datagram"
    assert addr[0] == "::1"


def test_closed_port_never_raises_and_counts_refusals() -> None:
    coll = UdpCollector("127.0.0.1", closed_udp_port())
    results = [coll.send(b"x" * 100) for _ in range(500)]
    coll.close()
    c = coll.counters
    # On loopback the ICMP port unreachable is back before send() returns: SO_ERROR
    # tells, and the datagram is REFUSED (the exporter keeps it).  Were one late, the
    # next send would fail with ECONNREFUSED and be retried once: never an exception,
    # never a DROPPED.
    assert set(results) <= {SENT, REFUSED}
    assert results.count(REFUSED) >= 490
    assert c["refused"] >= results.count(REFUSED)
    assert c["datagrams_sent"] == results.count(SENT)
    assert c["send_errors"] == 0
    assert coll.last_error is not None and "refused" in coll.last_error


def test_first_datagram_after_collector_returns_is_not_lost() -> None:
    port = closed_udp_port()
    coll = UdpCollector("127.0.0.1", port)
    results = [coll.send(b"into the void") for _ in range(3)]
    assert REFUSED in results and set(results) <= {SENT, REFUSED}
    # Each refusal was read (and cleared) at once (a late one is cleared by the next
    # send, which is retried once); the collector comes back.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", port))
        rx.settimeout(5)
        assert coll.send(b"welcome back") == SENT
        assert rx.recv(100) == b"welcome back"
    coll.close()
    assert coll.counters["refused"] >= results.count(REFUSED)
    assert coll.counters["datagrams_sent"] == 1 + results.count(SENT)


def test_binds_to_a_local_source_address(receiver: socket.socket) -> None:
    coll = UdpCollector("127.0.0.1", receiver.getsockname()[1], source="127.0.0.2")
    assert coll.send(b"from .2") == SENT
    data, addr = receiver.recvfrom(100)
    coll.close()
    assert (data, addr[0]) == (b"from .2", "127.0.0.2")
    assert coll.counters["unbound_source"] == 0


def test_foreign_source_address_warns_once_and_sends_unbound(
    receiver: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="nfflowd.export")
    coll = UdpCollector("127.0.0.1", receiver.getsockname()[1], source="203.0.113.77")
    for _ in range(5):
        assert coll.send(b"unbound") == SENT
    data, addr = receiver.recvfrom(100)
    coll.close()
    assert (data, addr[0]) == (b"unbound", "127.0.0.1")
    warnings = [r for r in caplog.records if "203.0.113.77" in r.getMessage()]
    assert len(warnings) == 1
    assert "EADDRNOTAVAIL" in warnings[0].getMessage()
    assert "firewall" in warnings[0].getMessage()
    assert coll.counters["unbound_source"] == 1


@needs_ipv6_loopback
def test_source_of_the_wrong_family_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="nfflowd.export")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx:
        rx.bind(("::1", 0))
        rx.settimeout(5)
        coll = UdpCollector("::1", rx.getsockname()[1], source="127.0.0.1")
        assert coll.send(b"v6") == SENT
        assert rx.recv(10) == b"v6"
        coll.close()
    assert coll.counters["unbound_source"] == 1
    assert any("127.0.0.1" in r.getMessage() for r in caplog.records)


def test_oversize_datagram_is_counted_not_raised(receiver: socket.socket) -> None:
    coll = UdpCollector("127.0.0.1", receiver.getsockname()[1])
    assert coll.send(b"x" * 70000) == DROPPED
    assert coll.send(b"ok") == SENT
    assert receiver.recv(100) == b"ok"
    coll.close()
    assert coll.counters["send_errors"] == 1
    assert coll.last_error is not None and "70000 bytes" in coll.last_error


def test_send_after_close_and_bad_names_do_not_raise() -> None:
    coll = UdpCollector("127.0.0.1", closed_udp_port())
    coll.close()
    assert coll.send(b"late") == DROPPED
    assert coll.last_error is not None and "after close" in coll.last_error

    bad = UdpCollector("a..b", 2055)  # fails to resolve locally, no DNS query
    assert bad.send(b"x") == DROPPED
    assert bad.counters["resolve_errors"] == 1
    assert bad.counters["send_errors"] == 1
    assert bad.last_error is not None and "a..b" in bad.last_error
    bad.close()


def test_port_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="out of range"):
        UdpCollector("127.0.0.1", 0)


def test_send_buffer_is_generous(receiver: socket.socket) -> None:
    coll = UdpCollector("127.0.0.1", receiver.getsockname()[1])
    coll.close()
    with open("/proc/sys/net/core/wmem_max") as fh:
        wmem_max = int(fh.read())
    # Linux keeps twice the requested size, capped at net.core.wmem_max (socket(7)).
    assert coll.sndbuf == 2 * min(SNDBUF_BYTES, wmem_max)
