"""Addresses and families: which socket an address names, and fresh addresses.

``(host, port)`` is TCP (IPv6 when the host is an IPv6 literal such as
``'::1'``), a ``str`` or path-like is a Unix socket path, and a name starting
with a NUL byte is a Linux abstract socket.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import tempfile
import warnings
from multiprocessing import util
from typing import Any

from ..exceptions import InsecureListenerWarning
from .tls import TLSSocket

__all__ = [
    "BUFSIZE",
    "CONNECTION_TIMEOUT",
    "RETRY_CONNECT",
    "address_type",
    "arbitrary_address",
    "default_family",
    "families",
    "is_abstract",
    "is_tcp",
    "listening_socket",
    "open_socket",
    "set_nodelay",
    "unlink_on_close",
    "validate_family",
]

RETRY_CONNECT = (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN)
"""connect() errors meaning the listener is not up (yet): a connect timeout retries them."""

BUFSIZE = 8192
CONNECTION_TIMEOUT = 20.0

families = ["AF_INET", "AF_UNIX"]
default_family = "AF_UNIX"


def is_abstract(address: object) -> bool:
    """Whether ``address`` names a Linux abstract socket (a leading NUL byte)."""
    return isinstance(address, (str, bytes)) and address[:1] in ("\0", b"\0")


def address_type(address: object) -> str:
    """The family an address belongs to: 'AF_INET', 'AF_UNIX' or 'AF_PIPE'."""
    if isinstance(address, tuple):
        return "AF_INET"
    if isinstance(address, str) and address.startswith("\\\\"):
        return "AF_PIPE"
    if isinstance(address, (str, os.PathLike)) or is_abstract(address):
        return "AF_UNIX"
    raise ValueError(f"address type of {address!r} unrecognized")


def validate_family(family: str) -> None:
    """Raise ValueError unless this platform supports ``family``."""
    if family not in families:
        raise ValueError(f"Family {family} is not recognized.")


def arbitrary_address(family: str) -> Any:
    """A fresh address of ``family`` (a Unix socket in a private folder)."""
    validate_family(family)
    if family == "AF_INET":
        return ("localhost", 0)
    return tempfile.mktemp(prefix="listener-", dir=util.get_temp_dir())


def open_socket(address: Any, family: str) -> tuple[socket.socket, Any]:
    """A blocking socket for ``address``, and the address in the form bind/connect take."""
    if family == "AF_INET":
        host = address[0]
        af = socket.AF_INET6 if isinstance(host, str) and ":" in host else socket.AF_INET
        sock = socket.socket(af, socket.SOCK_STREAM)
    else:
        if not is_abstract(address):
            address = os.fspath(address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if socket.getdefaulttimeout() is not None:
        # A default timeout (socket.setdefaulttimeout) would leave the fd
        # non-blocking, and the Connection reads it directly.
        sock.setblocking(True)
    return sock, address


def listening_socket(
    address: Any, family: str | None, backlog: int, authkey: bytes | None, tls: object = None
) -> tuple[socket.socket, Any]:
    """A bound, listening, non-blocking socket, and the address it is bound to.

    ``address`` None picks a fresh one of ``family`` (default: a Unix socket).
    An IPv6 address is given as ``(host, port)``, as the caller wrote it.
    Warns (InsecureListenerWarning) if anyone on the network can connect and
    neither an ``authkey`` nor ``tls`` (an SSL context) keeps them out.
    """
    family = family or (address and address_type(address)) or default_family
    validate_family(family)
    address = address or arbitrary_address(family)
    sock, address = open_socket(address, family)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        bound = sock.getsockname()
        _warn_if_exposed(sock, bound, authkey is not None or tls is not None)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    if sock.family == socket.AF_INET6 and bound[3] == 0:
        bound = bound[:2]
    return sock, bound


def unlink_on_close(owner: object, sock: socket.socket, bound: Any) -> util.Finalize | None:
    """Remove a Unix socket's file when ``owner`` is closed (call the result) or at exit."""
    if sock.family != socket.AF_UNIX or is_abstract(bound):
        return None
    return util.Finalize(owner, _remove, args=(bound,), exitpriority=0)


def _remove(path: str) -> None:
    # asyncio (3.13 and later) may have removed it already.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _warn_if_exposed(sock: socket.socket, bound: Any, guarded: bool) -> None:
    """Warn if a TCP listener outside loopback lets anyone in (no authkey, no TLS)."""
    if guarded or not is_tcp(sock):
        return
    if not ipaddress.ip_address(bound[0].partition("%")[0]).is_loopback:
        warnings.warn(
            f"listening on {bound[0]!r} (not loopback) with no authkey or TLS: anyone who "
            "can reach this address can send pickles, which run code in this process",
            InsecureListenerWarning,
            stacklevel=4,
        )


def is_tcp(sock: socket.socket | TLSSocket) -> bool:
    """Whether ``sock`` is a TCP socket."""
    return sock.family in (socket.AF_INET, socket.AF_INET6)


def set_nodelay(fd: int, on: bool) -> None:
    """Turn Nagle's algorithm off (``on``) or back on for the TCP socket ``fd``."""
    sock = socket.socket(fileno=fd)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(on))
    finally:
        sock.detach()
