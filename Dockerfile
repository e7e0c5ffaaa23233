# syntax=docker/dockerfile:1
#
# Latchkey container image.
#   docker build -t latchkey .
# Configuration comes from the environment (see app.env.example); keys are NOT part of the image:
# mount them at /keys (docker-compose.yml generates them into a volume there on the first start)
# or pass them as base64 variables. /keys belongs to the service's user, so a new volume mounted
# there does too.

# ---- build ---------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# The workspace: the service ("."), the "migration" crate and the "bench" crate (a workspace
# member, so its manifest must be present; only the service binary is built).
COPY Cargo.toml Cargo.lock ./
COPY migration/ migration/
COPY bench/ bench/
COPY src/ src/
COPY openapi/ openapi/

# The cache mounts keep the crate registry and compiled dependencies between builds (BuildKit,
# the default builder of current Docker). target/ lives in a cache mount, so the binary is copied
# out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin latchkey \
    && cp target/release/latchkey /usr/local/bin/latchkey

# ---- runtime -------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: CA roots for outbound TLS; curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user with a fixed uid/gid, so mounted files can be granted to it.
RUN groupadd --system --gid 10001 latchkey \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin latchkey \
    && mkdir /app /keys \
    && chown latchkey:latchkey /app \
    && chown latchkey:latchkey /keys && chmod 700 /keys

COPY --from=builder /usr/local/bin/latchkey /usr/local/bin/latchkey

# The working directory: `.env`/`app.env` would be read from here, and in development the SQLite
# file (data/) and generated keys (keys/) would be created here.
WORKDIR /app
USER 10001:10001

ENV HOST=0.0.0.0 \
    PORT=8000
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/health/live || exit 1

ENTRYPOINT ["latchkey"]
CMD ["serve"]
