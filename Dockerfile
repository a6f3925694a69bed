# The one Weir image (weir, weir-operator, weir-csi and the CSI registrar),
# for machines with a Docker engine:
#   docker build -t weir.io/weir:dev .
# The test bed builds the same layout without Docker (e2e/cluster/image.sh).

FROM rust:1.95-bookworm AS rust
# RocksDB is compiled from source by its crate.
RUN apt-get update && apt-get install -y --no-install-recommends clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin weir --bin weir-operator --bin weir-csi \
    && mkdir /out && cp target/release/weir target/release/weir-operator target/release/weir-csi /out/

FROM golang:1.24-bookworm AS go
WORKDIR /src
COPY e2e/cluster/gotools/ .
RUN CGO_ENABLED=0 go build -o /out/weir-csi-registrar ./cmd/registrar

FROM debian:bookworm-slim
# fuse3 for fusermount3; busybox gives app-less debugging a shell's tools.
RUN apt-get update && apt-get install -y --no-install-recommends fuse3 ca-certificates busybox \
    && rm -rf /var/lib/apt/lists/*
COPY --from=rust /out/ /usr/local/bin/
COPY --from=go /out/weir-csi-registrar /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/weir"]
