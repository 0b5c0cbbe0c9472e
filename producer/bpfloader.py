"""Compile and load the capture programs in a child process; hand the fds back.

bcc compiles C with clang/LLVM in-process, which costs the compiling process
about 200 MB of memory it never gives back. The producer therefore runs this
module as a short-lived child (``python -m pktstream.producer.bpfloader``):
it compiles and loads the program, sends the program and map file
descriptors over a Unix socket (SCM_RIGHTS) and exits. The kernel objects
live on in the producer, which then needs neither bcc nor LLVM.
"""

from __future__ import annotations

import json
import socket
import sys

# the programs (function, bcc program type), then the maps, in the order their fds are sent
PROGRAMS = (("xdp_capture", "XDP"), ("tc_egress", "SCHED_CLS"))
MAPS = ("events", "counters", "config")
FDS = len(PROGRAMS) + len(MAPS)


def main() -> int:
    sock = socket.socket(fileno=int(sys.argv[1]))
    request = json.loads(sys.argv[2])
    try:
        from bcc import BPF

        b = BPF(src_file=request["src"].encode(), cflags=request["cflags"])
        fds = [b.load_func(fn.encode(), getattr(BPF, kind)).fd for fn, kind in PROGRAMS]
        fds += [b[name.encode()].map_fd for name in MAPS]
        meta = {"ok": True, "ringbuf_size": int(b[b"events"].max_entries)}
        socket.send_fds(sock, [json.dumps(meta).encode()], fds)
        if request.get("cache_key"):  # what a restart loads without compiling (bpfcache.py)
            from bcc.libbcc import lib

            from pktstream.producer import bpfcache

            bpfcache.save(request["cache_key"], {name: b[name.encode()].map_fd for name in MAPS},
                          [(fn, int(getattr(BPF, kind)), b.dump_func(fn.encode())) for fn, kind in PROGRAMS],
                          (lib.bpf_module_license(b.module) or b"GPL").decode(),
                          int(lib.bpf_module_kern_version(b.module)), meta["ringbuf_size"])
    except Exception as e:  # reported to the parent, which raises BpfLoadError
        sock.sendall(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}).encode())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
