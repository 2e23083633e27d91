"""Small TCP port helpers for the embedded services."""

from __future__ import annotations

import contextlib
import socket
import time

_POLL_INTERVAL = 0.05


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that nothing listens on right now.

    The kernel picks it (bind to port 0), so it never collides with a busy port;
    the usual race (someone else grabs it before we use it) remains, callers
    that care retry.
    """
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return `count` distinct free ports.

    All sockets are held open until every port is chosen; calling free_port()
    in a loop could hand out the same port twice.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a listening socket could be bound to host:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR so that TIME_WAIT leftovers of closed connections do not
        # count as "busy": servers set it too, so they could bind as well.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a server accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout) as sock:
        # With nothing listening on a port from the ephemeral range, the kernel
        # may pick that very port as our source port and "connect" the socket
        # to itself (TCP simultaneous open); that is no server.
        return sock.getsockname() != sock.getpeername()
    return False


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until host:port accepts TCP connections; raise TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout:.1f}s")
        if port_accepts(host, port, timeout=min(0.5, remaining)):
            return
        time.sleep(min(_POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
