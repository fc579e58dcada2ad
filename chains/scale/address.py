"""``--ray-address``: what the user typed, checked, and the cluster asked whether it is there before Ray is.

``ray.init(address=...)`` with nothing (or something else) listening at the address does not fail: it retries
for minutes.  So the address is parsed here (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``) and the host is
asked, with a short timeout, whether it speaks gRPC (Ray's GCS and its client server do): a refused connection,
a timeout or an HTTP server there is one line naming the fix, at once.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from dataclasses import dataclass

from chains.errors import UsageError, clip

MAX_ADDRESS_CHARS = 300
PROBE_TIMEOUT_S = 5.0
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?$")
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + an empty SETTINGS
_SETTINGS = 4
_FIX = "use the head node's HOST:PORT (`ray start --head` prints it; the port is 6379 by default), or ray://HOST:10001"


@dataclass(frozen=True)
class RayAddress:
    """A parsed ``--ray-address``: ``auto`` (the cluster ``ray start`` left on this machine) has no host."""

    text: str
    host: str | None = None
    port: int | None = None
    client: bool = False
    """``ray://``: through Ray Client (needs ``ray[client]``)."""


def parse_address(text: str) -> RayAddress:
    """``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``; anything else is one ``UsageError`` line."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_ADDRESS_CHARS:
        raise _bad(text, "is empty or too long")
    raw = text.strip()
    if raw == "auto":
        return RayAddress(raw)
    client = raw.startswith("ray://")
    rest = raw[len("ray://") :] if client else raw
    host, port = _host_port(rest, text)
    return RayAddress(raw, host, port, client)


def _host_port(rest: str, text: str) -> tuple[str, int]:
    if rest.startswith("["):  # [IPv6]:PORT
        host, sep, tail = rest[1:].partition("]")
        if not sep or not tail.startswith(":"):
            raise _bad(text, "has an unclosed [IPv6] host or no :PORT")
        port_text = tail[1:]
        if not _is_ip(host, 6):
            raise _bad(text, "has a host that is not an IPv6 address")
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise _bad(text, "has no :PORT")
        if not (_is_ip(host, 4) or _HOST.match(host)) or len(host) > 253:
            raise _bad(text, "has a host that is not a name or an IP address")
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise _bad(text, "has a port that is not a number from 1 to 65535")
    return host, int(port_text)


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def _bad(text: object, problem: str) -> UsageError:
    shown = clip(text) if isinstance(text, str) else type(text).__name__
    return UsageError(f"--ray-address {shown!r} {problem}; {_FIX}")


def speaks_grpc(reply: bytes) -> bool:
    """Whether the first bytes a server sent after the HTTP/2 preface are an HTTP/2 SETTINGS frame (gRPC), or a
    TLS record (a cluster with TLS on: Ray will do the handshake)."""
    if len(reply) >= 9 and reply[3] == _SETTINGS and reply[5:9] == b"\0\0\0\0":
        return True
    return len(reply) >= 2 and reply[0] in (0x15, 0x16) and reply[1] == 0x03


def probe(address: RayAddress, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Refuse, as one line, an address where no Ray cluster answers (``auto`` is Ray's own to find)."""
    if address.host is None or address.port is None:
        return
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(_HTTP2_PREFACE)
            reply = _read_some(conn, 9, time.monotonic() + timeout)
    except OSError as exc:  # refused, unreachable, unknown host, timed out
        raise UsageError(
            f"--ray-address {address.text}: no Ray cluster answers there ({type(exc).__name__}); "
            f"start one (`ray start --head`) or fix the address: {_FIX}"
        ) from exc
    if not speaks_grpc(reply):
        raise UsageError(
            f"--ray-address {address.text}: something answers there, but not a Ray cluster (no gRPC); {_FIX}"
        )


def _read_some(conn: socket.socket, size: int, deadline: float) -> bytes:
    """Up to ``size`` bytes, fewer if the server closes first; a server trickling bytes is cut off at ``deadline``."""
    data = b""
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer in time")
        conn.settimeout(left)
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


__all__ = ["RayAddress", "parse_address", "probe", "speaks_grpc"]
