#!/usr/bin/env python3
"""The store behind the stand-in actions when the workflows run under act.

Usage: store.py ROOT PORT_FILE

Serves ROOT on 127.0.0.1 (the job containers share the host's network under
act) on a free port, which it writes to PORT_FILE once it listens. It keeps
what GitHub's cache and artifact services keep for the stand-ins in
.github/act/actions:

  GET  /cache/VERSION/KEY        a cache entry (a tar stream), or 404
  GET  /cache-match/VERSION/PFX  the key of the newest entry starting with
                                 PFX, or 404
  PUT  /cache/VERSION/KEY        stores an entry; 409 if the key is taken
                                 (entries are immutable, as on GitHub)
  GET  /artifacts                the names of this run's artifacts, one a line
  GET  /artifact/NAME            an artifact (a tar stream), or 404
  PUT  /artifact/NAME            stores an artifact; 409 if the name is taken
                                 and the request has no ?overwrite=true
  GET  /repo/OWNER/NAME.bundle   a git bundle of a repository act.sh serves

Every upload is written to a temporary file and renamed into place when it
is complete, so a killed upload leaves no half-written entry.
"""

import http.server
import os
import sys
import tempfile
import threading
import urllib.parse


def safe(part: str) -> str:
    """A URL path segment as a file name that cannot leave its folder."""
    name = urllib.parse.quote(urllib.parse.unquote(part), safe="")
    if name in ("", ".", ".."):
        raise ValueError(part)
    return name


class Store(http.server.BaseHTTPRequestHandler):
    root = "."
    lock = threading.Lock()

    def log_message(self, format, *args):  # noqa: A002 - the base's name
        sys.stderr.write("store: " + (format % args) + "\n")

    def reply(self, code: int, body: bytes = b"", kind: str = "text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def parts(self):
        path = urllib.parse.urlsplit(self.path).path
        return [p for p in path.split("/") if p]

    def send_file(self, path: str):
        if not os.path.isfile(path):
            return self.reply(404, b"not found\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(os.path.getsize(path)))
        self.end_headers()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                self.wfile.write(chunk)

    def do_GET(self):  # noqa: N802 - the base's name
        try:
            parts = self.parts()
            if len(parts) == 3 and parts[0] == "cache":
                return self.send_file(os.path.join(self.root, "caches", safe(parts[1]), safe(parts[2])))
            if len(parts) == 3 and parts[0] == "cache-match":
                folder = os.path.join(self.root, "caches", safe(parts[1]))
                prefix = urllib.parse.unquote(parts[2])
                found = []
                if os.path.isdir(folder):
                    for name in os.listdir(folder):
                        key = urllib.parse.unquote(name)
                        if key.startswith(prefix) and not name.startswith(".part"):
                            found.append((os.path.getmtime(os.path.join(folder, name)), key))
                if not found:
                    return self.reply(404, b"no match\n")
                return self.reply(200, (max(found)[1] + "\n").encode())
            if parts == ["artifacts"]:
                folder = os.path.join(self.root, "artifacts")
                names = sorted(urllib.parse.unquote(n) for n in os.listdir(folder) if not n.startswith(".part"))
                return self.reply(200, "".join(n + "\n" for n in names).encode())
            if len(parts) == 2 and parts[0] == "artifact":
                return self.send_file(os.path.join(self.root, "artifacts", safe(parts[1])))
            if len(parts) == 3 and parts[0] == "repo":
                return self.send_file(os.path.join(self.root, "repos", safe(parts[1]), safe(parts[2])))
            return self.reply(404, b"no such resource\n")
        except ValueError:
            return self.reply(400, b"bad name\n")

    def do_PUT(self):  # noqa: N802 - the base's name
        try:
            parts = self.parts()
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            if len(parts) == 3 and parts[0] == "cache":
                folder = os.path.join(self.root, "caches", safe(parts[1]))
                target = os.path.join(folder, safe(parts[2]))
                overwrite = False
            elif len(parts) == 2 and parts[0] == "artifact":
                folder = os.path.join(self.root, "artifacts")
                target = os.path.join(folder, safe(parts[1]))
                overwrite = query.get("overwrite") == ["true"]
            else:
                return self.reply(404, b"no such resource\n")
        except ValueError:
            return self.reply(400, b"bad name\n")
        length = self.headers.get("Content-Length")
        if length is None:
            return self.reply(411, b"Content-Length required\n")
        os.makedirs(folder, exist_ok=True)
        if os.path.exists(target) and not overwrite:
            return self.reply(409, b"exists\n")
        fd, temporary = tempfile.mkstemp(prefix=".part", dir=folder)
        try:
            remaining = int(length)
            with os.fdopen(fd, "wb") as f:
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        raise ConnectionError("upload cut short")
                    f.write(chunk)
                    remaining -= len(chunk)
            with self.lock:
                if os.path.exists(target) and not overwrite:
                    os.unlink(temporary)
                    return self.reply(409, b"exists\n")
                os.replace(temporary, target)
        except (ConnectionError, ValueError, OSError):
            if os.path.exists(temporary):
                os.unlink(temporary)
            return self.reply(400, b"upload failed\n")
        return self.reply(201, b"stored\n")


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: store.py ROOT PORT_FILE")
    Store.root = sys.argv[1]
    for folder in ("caches", "artifacts", "repos"):
        os.makedirs(os.path.join(Store.root, folder), exist_ok=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Store)
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])
    server.serve_forever()


if __name__ == "__main__":
    main()
