"""Joining a Ray cluster by address, with an answer in seconds.

``ray.init(address="host:port")`` with no cluster there retries for minutes and ignores SIGTERM
meanwhile. :func:`check_address` asks the address first (a TCP connection with a timeout) and raises
ValueError naming it when nothing answers; ``auto`` and ``local`` are Ray's own words (find the running
cluster, start one here) and are left to Ray, which answers them at once.
"""
from __future__ import annotations

import socket
from typing import Tuple

CONNECT_TIMEOUT_S = 10.0
GCS_PORT, CLIENT_PORT = 6379, 10001          # Ray's defaults: the cluster's GCS, the Ray Client server


def host_port(address: str) -> Tuple[str, int]:
    """``host[:port]`` or ``ray://host[:port]`` -> (host, port), with Ray's default port."""
    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not host or (port and not port.isdigit()):
        raise ValueError(f"--address {address!r}: expected host:port, ray://host:port, auto or local")
    return host.strip("[]"), int(port) if port else (CLIENT_PORT if client else GCS_PORT)


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raises ValueError within ``timeout`` seconds when no Ray cluster answers at ``address``."""
    if address in ("auto", "local"):
        return
    host, port = host_port(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise ValueError(f"--address {address!r}: no Ray cluster answers at {host}:{port} ({err}); start one "
                         f"with `ray start --head` or check the address") from None
