# syntax=docker/dockerfile:1
# One build stage compiles every Stickyfarm binary; one small final stage per component.
#
#   docker build --target operator -t ghcr.io/stickyfarm/operator:0.1.0 .
#   docker build --target gateway  -t ghcr.io/stickyfarm/gateway:0.1.0 .
#   docker build --target sidecar  -t ghcr.io/stickyfarm/sidecar:0.1.0 .
#   docker build --target webstore -t ghcr.io/stickyfarm/webstore:0.1.0 .
#
# Final images are distroless (glibc, CA certificates, no shell) and run as the non-root user
# 65532 with nothing writable but the volumes Kubernetes mounts.

FROM docker.io/library/rust:1.95-slim-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p stickyfarm-operator -p stickyfarm-gateway -p stickyfarm-sidecar -p stickyfarm-webstore \
    && mkdir -p /out \
    && cp target/release/stickyfarm-operator target/release/stickyfarm-gateway \
          target/release/stickyfarm-sidecar target/release/stickyfarm-webstore /out/
# The gateway the benchmarks measure: built again, profile-guided (scripts/pgo-gateway: an
# instrumented build, a minute of training load on loopback, a build with its counts), over
# the plain one. It needs llvm-tools from rustup, oha from crates.io, python3 and curl, and
# adds about ten minutes to a cold build; `--build-arg GATEWAY_PGO=false` keeps the plain one.
ARG GATEWAY_PGO=true
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/root/.cache/stickyfarm \
    if [ "$GATEWAY_PGO" = true ]; then \
      apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 curl \
      && rm -rf /var/lib/apt/lists/* \
      && scripts/pgo-gateway /out; \
    fi

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER 65532:65532

FROM runtime AS operator
COPY --from=build /out/stickyfarm-operator /usr/local/bin/stickyfarm-operator
ENTRYPOINT ["/usr/local/bin/stickyfarm-operator"]

FROM runtime AS gateway
COPY --from=build /out/stickyfarm-gateway /usr/local/bin/stickyfarm-gateway
EXPOSE 8000 9465
ENTRYPOINT ["/usr/local/bin/stickyfarm-gateway"]

FROM runtime AS sidecar
COPY --from=build /out/stickyfarm-sidecar /usr/local/bin/stickyfarm-sidecar
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/stickyfarm-sidecar"]

FROM runtime AS webstore
COPY --from=build /out/stickyfarm-webstore /usr/local/bin/stickyfarm-webstore
ENTRYPOINT ["/usr/local/bin/stickyfarm-webstore"]
