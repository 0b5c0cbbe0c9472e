"""API clients for the usage tests, run inside a network namespace.

argv[1]: a JSON list of connections, each {"src", "server", "port", "kind", "requests": [[method,
path] or [method, path, extra header lines, body]], "host"}; kind is http (one connection per entry,
its requests one after another with keep-alive), split (the request line sent in two TCP segments),
tls (a TLS handshake with "host" as server name, then one request inside). Prints one JSON line per
connection: src, sport, and the entry's index; with "keep_answers": true in the entry, also "answers":
each request's answer as read (head and body, bytes as latin-1 text).
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time


def request_bytes(method: str, path: str, extra: str, body: str, host: str) -> bytes:
    """A request as the clients send it: request line, Host, the extra header lines (each ended by
    CRLF), Content-Length, the body."""
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
            f"Content-Length: {len(body.encode())}\r\n\r\n{body}").encode()


def read_response(s: socket.socket | ssl.SSLSocket) -> bytes:
    """One answer: its head, and its body up to Content-Length; what was read when the peer closes first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def main() -> None:
    plan = json.loads(sys.argv[1])
    for i, c in enumerate(plan):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.bind((c["src"], 0))
        raw.settimeout(10)
        raw.connect((c["server"], c["port"]))
        sport = raw.getsockname()[1]
        s: socket.socket | ssl.SSLSocket = raw
        if c["kind"] == "tls":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s = ctx.wrap_socket(raw, server_hostname=c["host"])
        answers: list[str] = []
        for method, path, *more in c["requests"]:
            extra, body = [*more, "", ""][:2]
            req = request_bytes(method, path, extra, body, c["host"])
            if c["kind"] == "split":
                cut = len(method) + 4
                s.sendall(req[:cut])
                time.sleep(0.05)
                s.sendall(req[cut:])
            else:
                s.sendall(req)
            answers.append(read_response(s).decode("latin-1"))
        s.close()
        done: dict[str, object] = {"src": c["src"], "sport": sport, "index": i}
        if c.get("keep_answers"):
            done["answers"] = answers
        print(json.dumps(done), flush=True)
        time.sleep(0.01)


if __name__ == "__main__":
    main()
