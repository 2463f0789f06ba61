#!/usr/bin/env python3
"""A small HTTP/1.1 file server with byte ranges, for RAUC's HTTP streaming
tests (python3 -m http.server ignores Range). Test tool, not the product's
server (issue 16 wants that in the operator).

    python3 qemu-tests/range_server.py DIR [--port N] [--bind ADDR]

GET and HEAD of files in DIR (no listings, no paths outside DIR). A single
range `bytes=A-B`, `bytes=A-` or `bytes=-N` gets 206 with Content-Range;
several ranges, or a range past the end, get 416; no Range gets the whole
file (200). Connections are kept alive. Every request is counted: requests,
ranges and body bytes sent, per file (RangeServer.stats()), and logged to
stderr by the command-line form.
"""

import argparse
import os
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 256 * 1024


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.files = {}
        self.log = []

    def add(self, name, method, status, rng, sent):
        with self.lock:
            f = self.files.setdefault(name, {"requests": 0, "ranges": 0, "bytes": 0, "head": 0})
            f["requests"] += 1
            f["head"] += method == "HEAD"
            f["ranges"] += status == 206
            f["bytes"] += sent
            self.log.append((method, name, status, rng, sent))

    def snapshot(self):
        with self.lock:
            return {k: dict(v) for k, v in self.files.items()}, list(self.log)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "harmony-range-test/1"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("range-server: " + (fmt % args) + "\n")

    def do_HEAD(self):
        self.respond(head=True)

    def do_GET(self):
        self.respond(head=False)

    def fail(self, status, name, size=None):
        self.send_response(status)
        if size is not None:
            self.send_header("Content-Range", f"bytes */{size}")
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.server.stats.add(name, self.command, status, self.headers.get("Range"), 0)

    def respond(self, head):
        name = self.path.split("?", 1)[0].lstrip("/")
        root = self.server.root
        path = (root / name).resolve()
        if not name or root not in path.parents or not path.is_file():
            return self.fail(404, name)
        size = path.stat().st_size
        rng = self.headers.get("Range") if self.server.ranges else None
        start, end, status = 0, size - 1, 200
        if rng is not None:
            m = RANGE.match(rng.strip())
            if not m or (m.group(1) == "" and m.group(2) == ""):
                return self.fail(416, name, size)
            a, b = m.group(1), m.group(2)
            if a == "":  # the last N bytes
                n = int(b)
                if n == 0:
                    return self.fail(416, name, size)
                start, end = max(0, size - n), size - 1
            else:
                start = int(a)
                end = min(int(b), size - 1) if b else size - 1
                if start >= size or end < start:
                    return self.fail(416, name, size)
            status = 206
        length = end - start + 1 if size else 0
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        if self.server.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        if not head:
            with open(path, "rb") as f:
                f.seek(start)
                left = length
                while left > 0:
                    data = f.read(min(CHUNK, left))
                    if not data:
                        break
                    try:
                        self.wfile.write(data)
                    except ConnectionError:
                        # the client hung up (e.g. RAUC on a 200 it did not ask for)
                        self.close_connection = True
                        break
                    sent += len(data)
                    left -= len(data)
        self.server.stats.add(name, self.command, status, rng, sent)


class RangeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root, port=0, bind="0.0.0.0", verbose=False, ranges=True):
        """ranges=False: ignore Range and always send the whole file (200),
        as python3 -m http.server does."""
        super().__init__((bind, port), Handler)
        self.ranges = ranges
        self.root = Path(root).resolve()
        self.stats = Stats()
        self.verbose = verbose

    @property
    def port(self):
        return self.server_address[1]

    def start(self):
        """Serve from a daemon thread; returns self."""
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.shutdown()
        self.server_close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--no-ranges", action="store_true", help="ignore Range (a server without range support)")
    args = ap.parse_args()
    srv = RangeServer(args.dir, args.port, args.bind, verbose=True, ranges=not args.no_ranges)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"range-server: serving {srv.root} on {args.bind}:{srv.port} (pid {os.getpid()})", file=sys.stderr,
          flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        files, _ = srv.stats.snapshot()
        for name, f in files.items():
            print(f"range-server: {name}: {f}", file=sys.stderr)


if __name__ == "__main__":
    main()
