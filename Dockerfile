# Multi-stage build of the chat server (plus the archiver, which
# docker-compose.yml runs from this image with `entrypoint:
# /usr/local/bin/archiver`, and loadgen and tui-client, so one image can
# also drive the cluster).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin server --bin archiver --bin loadgen --bin tui-client \
    && mkdir -p /out \
    && cp target/release/server target/release/archiver target/release/loadgen \
          target/release/tui-client /out/

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 chat
COPY --from=build /out/ /usr/local/bin/
ENV LISTEN_ADDR=0.0.0.0:9001 \
    RUST_LOG=info
EXPOSE 9001
USER chat
ENTRYPOINT ["/usr/local/bin/server"]
