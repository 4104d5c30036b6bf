# Build: a release binary from the locked dependency set.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml build.rs ./
COPY src src
COPY migrations migrations
COPY benches benches
RUN cargo build --release --locked --bin tokengate

# Run: a slim image, a non-root user, the store on a volume.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin tokengate \
 && mkdir -p /app/data /app/config \
 && chown -R tokengate:tokengate /app
COPY --from=build /src/target/release/tokengate /usr/local/bin/tokengate
COPY config/tokengate.example.toml /app/config/tokengate.example.toml
WORKDIR /app
USER tokengate
VOLUME ["/app/data"]
ENV TOKENGATE_LISTEN=0.0.0.0:8080
# The home: /app/config/tokengate.toml and /app/data, wherever a command runs.
ENV TOKENGATE_HOME=/app
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["tokengate"]
CMD ["serve"]
