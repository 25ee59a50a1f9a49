# Multi-stage build of the chat server (plus loadgen and tui-client, so one
# image can also drive the cluster).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin server --bin loadgen --bin tui-client \
    && mkdir -p /out \
    && cp target/release/server target/release/loadgen target/release/tui-client /out/

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 chat
COPY --from=build /out/ /usr/local/bin/
ENV LISTEN_ADDR=0.0.0.0:9001 \
    RUST_LOG=info
EXPOSE 9001
USER chat
ENTRYPOINT ["/usr/local/bin/server"]
