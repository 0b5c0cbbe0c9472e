"""struct pkt_record (bpf/pktstream.h) and the Python dtype agree on size and every offset."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pktstream.bpf import HEADER
from pktstream.schemas import record as R
from tests.support.helpers import require


def c_layout(tmp_path: Path, payload_bytes: int) -> dict[str, int]:
    require(shutil.which("gcc") is not None, "needs gcc to compile the header")
    fields = [name for name, _, _ in R.HEADER_FIELDS] + ["payload"]
    body = "\n".join(
        f'printf("{f} %zu\\n", offsetof(struct pkt_record, {f}));' for f in fields
    )
    src = tmp_path / "layout.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n"
        f'#include "{HEADER}"\n'
        "int main(void) {\n"
        'printf("sizeof %zu\\n", sizeof(struct pkt_record));\n'
        f"{body}\nreturn 0; }}\n"
    )
    exe = tmp_path / "layout"
    subprocess.run(["gcc", f"-DPAYLOAD_BYTES={payload_bytes}", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


@pytest.mark.parametrize("payload_bytes", [0, 1, 7, 8, 64, 100, 128, 256])
def test_size_and_every_offset_equal(tmp_path: Path, payload_bytes: int) -> None:
    c = c_layout(tmp_path, payload_bytes)
    dt = R.record_dtype(payload_bytes)
    assert c["sizeof"] == dt.itemsize == R.record_size(payload_bytes)
    assert dt.itemsize % 8 == 0  # the ring reader relies on an 8-aligned stride
    for name, _, offset in R.HEADER_FIELDS:
        assert c[name] == offset == dt.fields[name][1], name
    assert c["payload"] == R.PAYLOAD_OFFSET
    if payload_bytes:
        assert dt.fields["payload"][1] == R.PAYLOAD_OFFSET
        assert dt.fields["payload"][0].itemsize == R.payload_area(payload_bytes)


def test_flag_constants_match_header() -> None:
    text = HEADER.read_text()
    consts = {
        "PKT_F_TRUNCATED": R.F_TRUNCATED, "PKT_F_MALFORMED": R.F_MALFORMED, "PKT_F_VLAN": R.F_VLAN,
        "PKT_F_IP_OPTIONS": R.F_IP_OPTIONS, "PKT_F_IPV6_EXT": R.F_IPV6_EXT, "PKT_F_FRAGMENT": R.F_FRAGMENT,
        "PKT_F_L4_SKIPPED": R.F_L4_SKIPPED, "PKT_F_MULTIBUF": R.F_MULTIBUF, "PKT_FRAG_MF": R.FRAG_MF,
        "PKT_FRAG_DF": R.FRAG_DF, "CNT_PACKETS": R.CNT_PACKETS, "CNT_RECORDS": R.CNT_RECORDS,
        "CNT_RINGBUF_FULL": R.CNT_RINGBUF_FULL, "CNT_SAMPLED_OUT": R.CNT_SAMPLED_OUT, "CNT_MAX": R.CNT_MAX,
        "CFG_SAMPLE_RATE": R.CFG_SAMPLE_RATE, "CNT_EGRESS": R.CNT_EGRESS, "DIR_INGRESS": R.DIR_INGRESS,
        "DIR_EGRESS": R.DIR_EGRESS,
    }
    for name, value in consts.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(f"#define {name} "))
        assert int(line.split()[2], 0) == value, name


def test_payload_bytes_out_of_range() -> None:
    with pytest.raises(ValueError):
        R.record_dtype(257)
