"""A small hostile HTTP server on loopback: answers exactly the bytes a test scripts, at the pace it
scripts, and records every request it gets (so a test can prove another host got nothing)."""

from __future__ import annotations

import gzip
import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

#: What a script yields: bytes to send, a float to sleep that many seconds, or None to hang up.
Step = bytes | float | None


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HostileServer:
    """``with HostileServer(script) as server:`` serves ``script(request)`` on ``server.url``.

    :param host: a loopback address (127.0.0.2 is a second host on Linux).
    """

    script: Callable[[Received], Iterable[Step]]
    host: str = "127.0.0.1"
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.host.startswith("127."), "loopback only"
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while (request := _read_request(self.request)) is not None:
                    server.received.append(request)
                    try:
                        for step in server.script(request):
                            if step is None:
                                return
                            if isinstance(step, float):
                                time.sleep(step)
                            else:
                                self.request.sendall(step)
                    except OSError:  # the client gave up: that is what many tests expect
                        return

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> HostileServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _read_request(sock: socket.socket) -> Received | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    while len(body) < int(headers.get("content-length", "0")):
        body += sock.recv(65536)
    return Received(method, path, headers, body)


def answer(status: int, body: bytes, headers: dict[str, str] | None = None, *, length: int | None = None) -> bytes:
    """One whole HTTP/1.1 answer (``length`` overrides Content-Length: a lie, if a test wants one)."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body) if length is None else length}"]
    lines += [f"{name}: {value}" for name, value in (headers or {"Content-Type": "application/json"}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_answer(value: Any, status: int = 200) -> bytes:
    return answer(status, json.dumps(value).encode())


def redirect(location: str, status: int = 307) -> list[Step]:
    return [answer(status, b"", {"Location": location})]


def dripping(body: bytes, every: float) -> list[Step]:
    """A valid answer whose body comes one byte every ``every`` seconds."""
    return [answer(200, b"", length=len(body))] + [step for byte in body for step in (bytes([byte]), every)]


def corrupt_gzip() -> list[Step]:
    garbage = gzip.compress(b'{"id": "x"}')[:10] + b"\x00not gzip at all" * 8
    return [answer(200, garbage, {"Content-Type": "application/json", "Content-Encoding": "gzip"})]


def deep_json(depth: int = 100_000) -> list[Step]:
    return [answer(200, b"[" * depth + b"]" * depth)]


def oversized(total: int, chunk: int = 1 << 20) -> list[Step]:
    """A JSON string ``total`` bytes long, sent in chunks (the client should stop reading early)."""
    header = answer(200, b"", length=total)
    filler = (total - 2) // chunk
    return [header, b'"'] + [b"a" * chunk] * filler + [b"a" * (total - 2 - filler * chunk) + b'"']
