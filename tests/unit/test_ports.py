"""Ports for servers a test or the demo starts: never from the ephemeral range that outgoing
connections take their local ports from (the "address already in use" race), never twice."""

from __future__ import annotations

import socket

import pytest

from streams import ports
from streams.ports import _ephemeral_range, free_port


def test_ports_are_outside_the_ephemeral_range_distinct_and_bindable() -> None:
    low, high = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports), "a port was handed out twice"
    assert all(not low <= port <= high for port in ports)
    for port in ports[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_someone_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held, socket.socket() as probe:
        held.bind(("127.0.0.1", 0))
        held.listen()
        probe.bind(("127.0.0.1", 0))
        busy, free = held.getsockname()[1], probe.getsockname()[1]
        probe.close()
        monkeypatch.setattr(ports, "_candidates", lambda: [busy, free])
        assert free_port() == free
        with pytest.raises(RuntimeError, match="no free TCP port"):
            free_port()  # busy is listened on, free was handed out already
