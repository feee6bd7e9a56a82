"""What keeps slow or numerous clients from tying up the HTTP server: a cap on open connections and a deadline on
each request's arrival.

A socket timeout bounds each read, not a request: a client sending one byte every few seconds (slowloris) would
hold its thread forever. Here a request's line and headers, and then its body, must each arrive within
`read_timeout_s` in all; a watchdog thread shuts the reading side of a late connection, so its handler's read ends
and it answers 408 (or closes, if nothing usable arrived). Idle keep-alive connections end the same way.
"""
from __future__ import annotations

import socket
import threading
import time

MAX_CONNECTIONS = 1024  # open client connections (each holds a thread); more are answered 503 and closed
WATCH_S = 0.25  # how often the watchdog looks for late connections

BUSY_RESPONSE = (b'{"error": {"message": "too many open connections; retry later", "type": "server_error", '
                 b'"code": 503}}')


class ConnectionGuard:
    def __init__(self, read_timeout_s: float, max_connections: int = MAX_CONNECTIONS):
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.read_timeout_s = read_timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self._deadlines: dict[socket.socket, float] = {}
        self._late: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="http-deadlines", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- connections
    def admit(self, conn: socket.socket) -> bool:
        """Take a connection slot; False (after answering 503 on `conn`) when every slot is taken."""
        if self._slots.acquire(blocking=False):
            return True
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(BUSY_RESPONSE)}\r\nConnection: close\r\n\r\n").encode()
        try:
            conn.settimeout(1.0)
            conn.sendall(head + BUSY_RESPONSE)
        except OSError:
            pass
        return False

    def release(self, conn: socket.socket) -> None:
        """The connection closed: free its slot and forget its deadline."""
        self.clear(conn)
        self._slots.release()

    # ---------------------------------------------------------------- deadlines
    def start(self, conn: socket.socket) -> None:
        """What `conn` reads next (a request's line and headers, or its body) must arrive within read_timeout_s."""
        with self._lock:
            self._deadlines[conn] = time.monotonic() + self.read_timeout_s
            self._late.discard(conn)

    def clear(self, conn: socket.socket) -> bool:
        """Stop timing `conn`; True if its deadline had passed (its reading side is shut)."""
        with self._lock:
            self._deadlines.pop(conn, None)
            late = conn in self._late
            self._late.discard(conn)
        return late

    def close(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_S):
            now = time.monotonic()
            with self._lock:
                late = [c for c, t in self._deadlines.items() if t <= now]
                for c in late:
                    del self._deadlines[c]
                    self._late.add(c)
            for c in late:
                try:
                    c.shutdown(socket.SHUT_RD)  # the blocked read returns what arrived; the answer can still go out
                except OSError:
                    pass
