"""``pktstream activity``: conversation records (OCSF Network Activity) from the packet stream."""

# open conversations per partition (about 200 bytes each in a snapshot: 300,000 keep it under the 64 MiB
# a partition's snapshot may take)
MAX_CONVERSATIONS = 300_000
# DNS messages per partition waiting for their answer or their timeout (about 120 bytes each)
MAX_DNS_PENDING = 100_000
