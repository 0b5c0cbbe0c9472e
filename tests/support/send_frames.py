"""Run inside a namespace: send length-prefixed raw frames from a file on an interface (with an
optional pause in seconds between frames as a third argument)."""

import socket
import struct
import sys
import time

ifname, path = sys.argv[1], sys.argv[2]
pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
with open(path, "rb") as f:
    data = f.read()
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
off = 0
while off < len(data):
    (n,) = struct.unpack_from("<I", data, off)
    off += 4
    s.send(data[off : off + n])
    off += n
    if pause:
        time.sleep(pause)
