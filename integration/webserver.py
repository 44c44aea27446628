"""The lab's web server: the seed's httpd in a few lines of stdlib, one per real server namespace.

    python -m integration.webserver ADDRESS[,ADDRESS...] PORT DOCROOT [KEEP_ALIVE: 1|0]

GET/HEAD of files under DOCROOT, "/" → index.html, 404 otherwise, on every ADDRESS (IPv4 or IPv6: a
dual-stack real server lists one of each); prints "listening" once all are bound, then one line per request
("GET / HTTP/1.1 200"). Like the seed's httpd, HTTP/1.1 clients keep their connection
(5 s idle) and HTTP/1.0 ones do not; KEEP_ALIVE 0 answers every request with ``Connection: close``.

Standard library only, and no import of the repository: the lab starts it as a script with
``python -I -S`` (no site, no environment), because process start-up is the slow part in UML.
"""

from __future__ import annotations

import os
import socket
import sys
import threading


def reply(c: socket.socket, version: str, keep: bool, code: int, reason: str, body: bytes) -> None:
    head = "%s %d %s\r\nContent-Type: text/html\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n"
    c.sendall((head % (version, code, reason, len(body), "keep-alive" if keep else "close")).encode() + body)


def serve(c: socket.socket, root: str, keep_alive: bool) -> None:
    try:
        c.settimeout(5)
        data = b""
        while True:
            while b"\r\n\r\n" not in data and len(data) < 65536:
                d = c.recv(4096)
                if not d:
                    return
                data += d
            request, _, data = data.partition(b"\r\n\r\n")
            lines = request.decode("latin-1").split("\r\n")
            method, path, version = ([*lines[0].split(), "", "", ""])[:3]
            headers = {k.strip().lower(): v.strip().lower() for k, _, v in (x.partition(":") for x in lines[1:])}
            keep = keep_alive and version == "HTTP/1.1" and headers.get("connection") != "close"
            version = "HTTP/1.1" if version == "HTTP/1.1" else "HTTP/1.0"
            path = path.split("?", 1)[0]
            rel = os.path.normpath(path.lstrip("/")) if path not in ("", "/") else "index.html"
            full = os.path.join(root, rel)
            if rel.startswith("..") or not os.path.isfile(full):
                reply(c, version, keep, 404, "Not Found", b"not found\n")
                code = 404
            else:
                with open(full, "rb") as f:
                    body = f.read()
                reply(c, version, keep, 200, "OK", b"" if method == "HEAD" else body)
                code = 200
            print(lines[0].strip(), code, flush=True)
            if not keep:
                return
    except OSError:
        pass
    finally:
        c.close()


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    addresses, port, root = argv[0].split(","), int(argv[1]), argv[2]
    keep_alive = (argv[3] if len(argv) > 3 else "1") == "1"
    servers = []
    for address in addresses:
        srv = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((address, port))
        srv.listen(128)
        servers.append(srv)
    print("listening", ",".join(addresses), port, flush=True)
    for srv in servers[1:]:
        threading.Thread(target=accept, args=(srv, root, keep_alive), daemon=True).start()
    accept(servers[0], root, keep_alive)
    return 0


def accept(srv: socket.socket, root: str, keep_alive: bool) -> None:
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c, root, keep_alive), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
