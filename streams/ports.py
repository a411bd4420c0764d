"""A free TCP port on 127.0.0.1 for a server that another process will bind soon after.

A port the kernel hands out for port 0 comes from the ephemeral range, the same range every
outgoing connection takes its local port from: between the check and the server's bind, a Kafka
or S3 client of any process on the machine can take it ("address already in use"). Ports are
picked outside that range instead, where only a server asking for that very port can collide;
within one process a port is never handed out twice.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

# Below the ephemeral range (Linux: 32768-60999 unless changed) and above the well-known ports.
_LOW_DEFAULT = 20000
_handed_out: set[int] = set()
_lock = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _candidates() -> list[int]:
    low, high = _ephemeral_range()
    if low - _LOW_DEFAULT >= 1000:
        return list(range(_LOW_DEFAULT, low))
    return list(range(high + 1, 65536))  # an unusual range: the ports above it


def free_port() -> int:
    """A port nobody listens on now, outside the ephemeral range, not handed out before here."""
    candidates = _candidates()
    random.shuffle(candidates)
    with _lock:
        for port in candidates:
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    raise RuntimeError("no free TCP port outside the ephemeral range on 127.0.0.1")
