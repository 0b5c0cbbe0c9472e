# pktstream producer and consumers. The producer needs the host's kernel:
# run privileged, on the host network, with the mounts in docker-compose.yml.
FROM debian:bookworm-slim
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q && apt-get install -y -q --no-install-recommends \
        python3 python3-venv python3-bpfcc libbpfcc linux-headers-amd64 iproute2 ca-certificates \
        gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/pktstream
COPY . .
RUN python3 -m venv /opt/venv \
    && ln -s /usr/lib/python3/dist-packages/bcc "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bcc" \
    && /opt/venv/bin/pip install --no-cache-dir .
ENV PATH=/opt/venv/bin:$PATH
# the spool and other state; mount a volume here so that a restarted container replays its spool
ENV PKTSTREAM_HOME=/var/lib/pktstream
# and the compiled capture programs, so that a restarted container loads them without compiling
ENV PKTSTREAM_CACHE_DIR=/var/lib/pktstream/cache
VOLUME /var/lib/pktstream
ENTRYPOINT ["pktstream"]
