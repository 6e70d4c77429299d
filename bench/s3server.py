"""moto in server mode on 127.0.0.1, serving ranged GETs without copying the whole object.

Stock moto answers ``Range: bytes=a-b`` by reading the whole object into memory and
slicing it (~130 ms per request on a 200 MB object), a cost real S3 does not have and one
that would make any benchmark of ranged reads measure moto instead of the client. This
patch reads only the requested bytes; everything else is stock moto.

Run: ``python bench/s3server.py --port 5000`` (prints the endpoint URL, serves until killed).
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.s3proxy import serve  # noqa: E402

_SIMPLE_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_local = threading.local()


def patch_ranged_gets() -> None:
    from moto.s3 import models, responses

    if getattr(responses.S3Response.get_object, "_b2t_patched", False):
        return
    stock_value = models.FakeKey.value
    stock_get_object = responses.S3Response.get_object

    def value(self):
        wanted = getattr(_local, "range", None)
        if wanted is None:
            return stock_value.fget(self)
        begin, end = wanted
        with self.lock:
            self._value_buffer.seek(begin)
            return self._value_buffer.read(end - begin + 1)

    def get_object(self):
        m = _SIMPLE_RANGE.fullmatch(self.headers.get("range") or "")
        if m is None or self._get_int_param("partNumber"):
            return stock_get_object(self)
        key, _ = self._get_key()
        begin, end = int(m.group(1)), int(m.group(2)) if m.group(2) else key.size - 1
        if begin >= key.size or begin > end:
            return stock_get_object(self)  # moto's own 416 / whole-object answers
        end = min(end, key.size - 1)
        _local.range = (begin, end)
        try:
            status, headers, body = stock_get_object(self)
        finally:
            _local.range = None
        if status != 200:
            return status, headers, body
        for h in [h for h in headers if h.lower().startswith("x-amz-checksum-")]:
            del headers[h]  # range responses carry no whole-object checksum
        headers["content-range"] = f"bytes {begin}-{end}/{key.size}"
        headers["content-length"] = str(len(body))
        return 206, headers, body

    get_object._b2t_patched = True  # type: ignore[attr-defined]
    models.FakeKey.value = property(value, stock_value.fset)
    responses.S3Response.get_object = get_object


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--stock", action="store_true", help="do not patch ranged GETs (to measure moto's own cost)")
    args = p.parse_args(argv)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    if not args.stock:
        patch_ranged_gets()
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    serve(f"http://127.0.0.1:{args.port}", server.stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
