# Builder: compile the release binary.
FROM rust:1.95-bookworm AS builder
WORKDIR /app

# Build the dependencies against a placeholder crate first, so this slow layer
# is reused as long as Cargo.toml and Cargo.lock do not change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin tagsweep \
 && rm -rf src

# The real sources (src/, migrations/ embedded by sqlx::migrate!, build.rs if
# any). COPY keeps the context's mtimes, which can be older than the
# placeholder build, so touch the crate roots to force a rebuild of the crate.
COPY . .
# Never try to reach a database at build time for sqlx's query macros.
ENV SQLX_OFFLINE=true
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin tagsweep

# Runtime: glibc + CA roots (reqwest/rustls verify TLS against the system store).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tagsweep \
 && useradd --system --uid 10001 --gid tagsweep --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tagsweep
COPY --from=builder /app/target/release/tagsweep /usr/local/bin/tagsweep
USER tagsweep
# Exec form: tagsweep is PID 1 and receives SIGTERM directly for a clean drain.
ENTRYPOINT ["tagsweep"]
CMD ["run"]
