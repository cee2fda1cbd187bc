"""TLSSocket: TLS over a connected socket, through an ``ssl.SSLObject`` and memory BIOs.

``ssl.SSLSocket`` hides what it has read from the socket but not decrypted
yet, so ``poll()`` and ``wait()`` could not tell that a message is waiting;
it takes no send flags (no MSG_NOSIGNAL); and its blocking mode is the
socket's. Here the raw bytes pass through our hands: ``pending()`` is exact,
writes never raise SIGPIPE, and the raw socket can be shut down from another
thread to wake a blocked call, as for a plain socket.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading

__all__ = ["TLSSocket"]

_READ_SIZE = 65536


class TLSSocket:
    """A connected socket wrapped in TLS; enough of the socket API for a Connection."""

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.sock = sock
        self.family = sock.family
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        # A receiving and a sending thread share the SSLObject; each call is short.
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        self.sock.setsockopt(level, option, value)

    def detach(self) -> int:
        return self.sock.detach()

    def close(self) -> None:
        self.sock.close()

    def pending(self) -> bool:
        """Whether received bytes wait inside TLS (decrypted or not) for recv_into()."""
        return self._tls.pending() > 0 or self._incoming.pending > 0

    def do_handshake(self) -> None:
        """Run the TLS handshake.

        On a non-blocking socket, BlockingIOError means: call again once
        readable. A refused certificate raises ssl.SSLError (after telling
        the peer why).
        """
        while True:
            try:
                with self._lock:
                    self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
            except ssl.SSLError:
                with contextlib.suppress(OSError):
                    self._flush()  # the alert that tells the peer why
                raise
            else:
                self._flush()
                return
            if not self._fill():
                raise ssl.SSLEOFError(
                    ssl.SSL_ERROR_EOF, "the peer hung up during the TLS handshake"
                )

    def recv_into(self, buffer: memoryview) -> int:
        """Decrypted bytes into ``buffer``; 0 when the peer has closed."""
        while True:
            with self._lock:
                try:
                    return self._tls.read(len(buffer), buffer)  # type: ignore[return-value]
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return 0  # close_notify, or a bare end of stream: the framing tells which
            if not self._fill():
                with self._lock:
                    self._incoming.write_eof()

    def send(self, data: bytes | memoryview, flags: int = 0) -> int:
        """Encrypt all of ``data`` and send it; return its length.

        Only one thread sends at a time (the Connection's send gate), so the
        records leave in order. ``flags`` are ignored: sends never raise SIGPIPE.
        """
        with self._lock:
            sent = self._tls.write(data)
        self._flush()
        return sent

    def _fill(self) -> int:
        """Receive raw bytes into the incoming BIO; 0 at the end of the stream."""
        data = self.sock.recv(_READ_SIZE)
        if data:
            with self._lock:
                self._incoming.write(data)
        return len(data)

    def _flush(self) -> None:
        with self._lock:
            data = self._outgoing.read()
        if data:
            self.sock.sendall(data, socket.MSG_NOSIGNAL)
