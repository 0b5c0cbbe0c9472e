"""Protocol numbers and TCP flag bits, as the packet topic's ``protocol`` and ``tcp_flags`` fields
carry them (IANA protocol numbers; the flag bits of the TCP header's 13th byte)."""

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMP6 = 58

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
