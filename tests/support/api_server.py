"""The test HTTP server (apps._Handler) on one address, for a namespace: ``python -m
tests.support.api_server ADDRESS`` prints "ready" once listening and serves until killed."""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer

from tests.support.apps import HTTP_PORT, _Handler


def main() -> None:
    server = ThreadingHTTPServer((sys.argv[1], HTTP_PORT), _Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
