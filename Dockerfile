# Tagcast server image: `docker build -t tagcast .` then `docker run -p 8080:8080 tagcast`.
# Configure it with TAGCAST_* variables (see `tagcast serve --help`).

# --- build: compile the server binary only ---------------------------------
FROM rust:1-slim-bookworm AS build
WORKDIR /src

# Cargo needs every workspace member's manifest, so the whole tree comes in
# (.dockerignore keeps out target/, node_modules/, the npm packages and .git).
COPY . .

# The cache mounts keep downloaded crates and compiled dependencies between
# builds, so a source change recompiles only Tagcast's own crates. The target
# folder is a cache, not a layer: copy the binary out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tagcast-server --bin tagcast \
    && cp target/release/tagcast /usr/local/bin/tagcast

# --- run: the binary alone on the same Debian release (same glibc) ---------
FROM debian:bookworm-slim

# A fixed non-root user; --no-log-init avoids a huge sparse lastlog for a high uid.
RUN groupadd --gid 10001 tagcast \
    && useradd --no-log-init --uid 10001 --gid tagcast --no-create-home \
    --shell /usr/sbin/nologin tagcast

COPY --from=build /usr/local/bin/tagcast /usr/local/bin/tagcast

# Numeric, so the host and Kubernetes' runAsNonRoot can tell it is not root.
USER 10001:10001
# Listen on every interface of the container; publish the port with -p.
ENV TAGCAST_HOST=0.0.0.0 TAGCAST_PORT=8080
EXPOSE 8080

# `tagcast healthcheck` GETs /healthz on 127.0.0.1:$TAGCAST_PORT: no curl needed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["tagcast", "healthcheck"]

ENTRYPOINT ["tagcast"]
CMD ["serve"]
