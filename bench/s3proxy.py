"""A small HTTP pass-through proxy in front of a local S3 endpoint, for benchmarks and fault tests.

It makes a loopback endpoint behave a little more like S3 over a network, and can misbehave
on purpose:

- every response's first byte waits ``latency_s`` (default 20 ms);
- each client connection gets at most ``rate`` bytes/s of response body (default 80 MB/s);
- a fraction ``fault_rate`` of requests (drawn at random), or every ``fault_every``-th GET,
  fail, with each of ``faults`` in turn:
  ``503`` (a SlowDown error), ``reset`` (the connection is reset before any response) or
  ``truncate`` (the headers promise the whole body, half of it comes, then the connection
  closes). Two more kinds are there to be asked for (``faults=``), not in the default turn:
  ``corrupt`` (a ranged GET's body arrives whole, with its middle byte flipped: content that
  no longer matches the object's ETag) and ``denied`` (403 AccessDenied);
- ``max_faults`` (0: no limit) stops faulting after that many faults.

It counts requests, GETs (and ranged GETs) and response body bytes sent. Control it over HTTP on the same port:
``GET /__proxy/stats``, ``POST /__proxy/reset``, ``POST /__proxy/config?fault_rate=0.05&
latency_ms=20&rate_mb=80``; or in-process through :class:`Proxy`.

Run alone: ``python bench/s3proxy.py --upstream http://127.0.0.1:5000 --port 5001``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import struct
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Optional
from urllib.parse import parse_qs, urlsplit

CHUNK = 1024 * 1024  # relayed per write: large, so that the proxy costs little CPU per byte
FAULTS = ("503", "reset", "truncate")  # the default turn
KINDS = FAULTS + ("corrupt", "denied")
_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>proxy</RequestId></Error>"
)
_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message><RequestId>proxy</RequestId></Error>"
)


@dataclass
class Settings:
    latency_s: float = 0.020
    rate: float = 80e6  # bytes/s per connection; 0: unlimited
    fault_rate: float = 0.0
    fault_every: int = 0  # every Nth GET fails (kinds in turn); 0: off
    faults: tuple[str, ...] = FAULTS
    seed: int = 0
    max_faults: int = 0  # 0: no limit


@dataclass
class Stats:
    requests: int = 0
    gets: int = 0
    range_gets: int = 0
    body_bytes: int = 0
    connections: int = 0
    faults: dict = field(default_factory=lambda: {k: 0 for k in KINDS})
    ranges: list = field(default_factory=list)  # [path, Range header] of each ranged GET, in arrival order


class _Closed(Exception):
    pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, list[tuple[str, str]]]:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as e:
        raise _Closed() from e
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers.append((k.strip(), v.strip()))
    return lines[0].encode("latin-1"), headers


def _get(headers: list[tuple[str, str]], name: str) -> Optional[str]:
    name = name.lower()
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _render(first: bytes, headers: list[tuple[str, str]]) -> bytes:
    return first + b"\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1") + b"\r\n"


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body, raw (sizes and trailers included), to pass on unchanged."""
    out = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        out += line
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            while True:  # trailers end with an empty line
                t = await reader.readuntil(b"\r\n")
                out += t
                if t == b"\r\n":
                    return bytes(out)
        out += await reader.readexactly(size + 2)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:  # linger 0: close sends RST, as a dropped connection does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _shutdown(writer)
    writer.transport.abort()


def _shutdown(writer: asyncio.StreamWriter) -> None:
    """End the connection now, for the peer too. A process forked while it was open (a
    DataLoader worker of a test that runs this proxy in-process) holds a copy of its
    descriptor, and a plain close sends nothing while any copy is open: the client would
    wait out its read timeout instead of seeing the connection end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already disconnected
            pass


class Proxy:
    """The proxy's event loop in a daemon thread. ``url`` is where clients connect."""

    def __init__(self, upstream: str, *, port: int = 0, settings: Optional[Settings] = None):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.settings = settings or Settings()
        self.stats = Stats()
        self._rng = random.Random(self.settings.seed)
        self._port = port
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server = None
        self._ready = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._writers: set = set()
        self.url = ""

    # -- lifecycle

    def start(self) -> "Proxy":
        self._thread = threading.Thread(target=self._run, name="s3proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self._port, limit=1 << 20)
        )
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        self._ready.set()
        self._loop.run_forever()
        # stopped: drop every connection and finish every task before closing the loop
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        tasks = asyncio.all_tasks(self._loop)
        for t in tasks:
            t.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def configure(self, **changes) -> None:
        for k, v in changes.items():
            setattr(self.settings, k, v)
        if "seed" in changes:
            self._rng = random.Random(changes["seed"])

    def reset_stats(self) -> None:
        self.stats = Stats()

    # -- serving

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        self._writers.add(writer)
        up: Optional[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = None
        try:
            while True:
                first, headers = await _read_head(reader)
                method, target = first.decode("latin-1").split(" ")[:2]
                if (_get(headers, "expect") or "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    headers = [(k, v) for k, v in headers if k.lower() != "expect"]
                if _get(headers, "transfer-encoding"):
                    body = await _read_chunked(reader)
                else:
                    body = await reader.readexactly(int(_get(headers, "content-length") or 0))
                if target.startswith("/__proxy/"):
                    await self._control(method, target, writer)
                    continue
                self.stats.requests += 1
                self.stats.gets += method == "GET"
                self.stats.range_gets += method == "GET" and _get(headers, "range") is not None
                if method == "GET" and _get(headers, "range") is not None:
                    self.stats.ranges.append([target.split("?", 1)[0], _get(headers, "range")])
                s = self.settings
                fault = None
                n_faults = sum(self.stats.faults.values())
                every = s.fault_every and method == "GET" and self.stats.gets % s.fault_every == 0
                if not 0 < s.max_faults <= n_faults and (every or (s.fault_rate and self._rng.random() < s.fault_rate)):
                    # kinds in turn, so that every kind shows up in a short run
                    fault = s.faults[n_faults % len(s.faults)]
                    if fault == "corrupt" and not (method == "GET" and _get(headers, "range")):
                        fault = None  # only object data is corrupted, never a listing
                    else:
                        self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1
                if fault == "reset":
                    _reset(writer)
                    return
                if fault in ("503", "denied"):
                    status, payload = (b"HTTP/1.1 503 Slow Down", _SLOWDOWN) if fault == "503" else (
                        b"HTTP/1.1 403 Forbidden", _DENIED)
                    await asyncio.sleep(s.latency_s)
                    writer.write(_render(status, [
                        ("Content-Type", "application/xml"), ("Content-Length", str(len(payload)))]) + payload)
                    await writer.drain()
                    continue
                if up is None:
                    up = await asyncio.open_connection(*self.upstream, limit=1 << 20)
                    self._writers.add(up[1])
                up[1].write(_render(first, headers) + body)
                keep = await self._relay(method, up, writer, truncate=fault == "truncate", corrupt=fault == "corrupt")
                if not keep:
                    _shutdown(up[1])
                    up[1].close()
                    self._writers.discard(up[1])
                    up = None
                if fault == "truncate":
                    _shutdown(writer)
                    writer.close()
                    return
                if (_get(headers, "connection") or "").lower() == "close":
                    break
        except (_Closed, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up[1] if up is not None else None):
                if w is not None:
                    self._writers.discard(w)
                    if not w.is_closing():
                        _shutdown(w)
                        w.close()

    async def _relay(self, method: str, up, writer: asyncio.StreamWriter, *, truncate: bool,
                     corrupt: bool = False) -> bool:
        """Pass one response on: latency, then the body at the capped rate. True if upstream stays open."""
        ureader, _ = up
        first, headers = await _read_head(ureader)
        status = int(first.split(b" ")[1])
        keep = (_get(headers, "connection") or "").lower() != "close"
        if _get(headers, "content-length") is not None or _get(headers, "transfer-encoding"):
            # the body is delimited: the client's connection stays open even if upstream's closes
            headers = [(k, v) for k, v in headers if k.lower() != "connection"]
        await asyncio.sleep(self.settings.latency_s)
        writer.write(_render(first, headers))
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            await writer.drain()
            return keep
        if _get(headers, "transfer-encoding"):
            data = await _read_chunked(ureader)
            writer.write(data)
            self.stats.body_bytes += len(data)
            await writer.drain()
            return keep
        length = _get(headers, "content-length")
        remaining = int(length) if length is not None else None
        if remaining is None:
            keep = False
        limit = remaining // 2 if truncate and remaining else None
        flip = remaining // 2 if corrupt and remaining else None  # offset of the byte to flip
        sent = 0
        started = time.monotonic()
        while remaining is None or remaining > 0:
            want = CHUNK if remaining is None else min(CHUNK, remaining)
            chunk = await ureader.read(want)
            if not chunk:
                break
            if remaining is not None:
                remaining -= len(chunk)
            if flip is not None and sent <= flip < sent + len(chunk):
                chunk = chunk[: flip - sent] + bytes([chunk[flip - sent] ^ 0xFF]) + chunk[flip - sent + 1 :]
            if limit is not None and sent + len(chunk) >= limit:
                writer.write(chunk[: limit - sent])
                self.stats.body_bytes += limit - sent
                await writer.drain()
                return False
            writer.write(chunk)
            sent += len(chunk)
            self.stats.body_bytes += len(chunk)
            await writer.drain()
            rate = self.settings.rate
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        return keep

    async def _control(self, method: str, target: str, writer: asyncio.StreamWriter) -> None:
        url = urlsplit(target)
        if url.path == "/__proxy/config":
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            if "fault_rate" in q:
                self.settings.fault_rate = float(q["fault_rate"])
            if "fault_every" in q:
                self.settings.fault_every = int(q["fault_every"])
            if "latency_ms" in q:
                self.settings.latency_s = float(q["latency_ms"]) / 1000
            if "rate_mb" in q:
                self.settings.rate = float(q["rate_mb"]) * 1e6
            if "faults" in q:
                self.settings.faults = tuple(q["faults"].split(","))
            if "max_faults" in q:
                self.settings.max_faults = int(q["max_faults"])
        elif url.path == "/__proxy/reset":
            self.reset_stats()
        payload = json.dumps({"stats": asdict(self.stats), "settings": asdict(self.settings)}).encode()
        writer.write(_render(b"HTTP/1.1 200 OK", [("Content-Type", "application/json"),
                                                  ("Content-Length", str(len(payload)))]) + payload)
        await writer.drain()


def remote_call(proxy_url: str, path: str, method: str = "GET") -> dict:
    """Control a proxy running in another process: ``stats``, ``reset``, ``config?...``."""
    req = urllib.request.Request(f"{proxy_url}/__proxy/{path}", method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="the S3 endpoint, e.g. http://127.0.0.1:5000")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--rate-mb", type=float, default=80.0, help="MB/s per connection (0: unlimited)")
    p.add_argument("--fault-rate", type=float, default=0.0)
    args = p.parse_args(argv)
    proxy = Proxy(args.upstream, port=args.port, settings=Settings(
        latency_s=args.latency_ms / 1000, rate=args.rate_mb * 1e6, fault_rate=args.fault_rate)).start()
    serve(proxy.url, proxy.stop)
    return 0


def serve(url: str, stop) -> None:
    """Print where a server listens (its parent reads that line), then serve until interrupted."""
    print(url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stop()


if __name__ == "__main__":
    raise SystemExit(main())
