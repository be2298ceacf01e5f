"""A TCP proxy that loses answers: for tests of retries and exactly-once.

Bytes from client to server pass untouched. Bytes coming back are dropped, with
the connection cut, on a seeded random schedule: the server has done the work
(it is answering) but the client never hears of it, as when a network fails
after a request arrived.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading


class LossyProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to ``target``."""

    def __init__(self, target: tuple[str, int], drop: float, seed: int = 0) -> None:
        self.target = target
        self.drop = drop
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.cut = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(
                target=self._pump, args=(client, server, False), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, True), daemon=True
            ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if answers and len(data) > 64:  # a response, not a bare ack
                    with self.lock:
                        lose = self.random.random() < self.drop
                        self.cut += lose
                    if lose:
                        break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
