# syntax=docker/dockerfile:1
#
# One Dockerfile for the six services. Pick one with the SERVICE build argument:
#
#   docker build --build-arg SERVICE=auth -t ticketing/auth .
#
# SERVICE is the crate name, which is also the binary name (auth, tickets, orders, payments,
# expiration, client). skaffold.yaml builds all six from this file.
#
# Stages:
#   chef     Rust toolchain + cargo-chef (pinned versions below).
#   planner  turns the workspace's manifests into recipe.json (only Cargo.toml/Cargo.lock matter).
#   builder  cooks the dependencies of the WHOLE workspace, then builds the one binary.
#            SERVICE is declared only after the cook step, so the (slow) dependency layer is the same
#            for all six images and is built once; editing a crate's source never invalidates it.
#   runtime  distroless cc (glibc + libgcc + CA certificates, no shell), user 65532 (nonroot).
#            It holds /app/service and, when the crate has one, /app/<SERVICE>/static.

ARG RUST_VERSION=1.95.0
ARG CARGO_CHEF_VERSION=0.1.77

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /build

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
# The linker flags (.cargo/config.toml) before the cook, so the dependency layer is built with them.
COPY .cargo .cargo
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
ARG SERVICE
# Static files cannot be copied with a conditional COPY (COPY fails on a missing source and has no
# "if"). So the whole workspace is already here, and this shell step decides: it stages the binary
# and, if <SERVICE>/static exists (the client's stylesheet and scripts), that folder too, into /out.
# The runtime stage then copies /out as a whole, which works whether or not a static folder exists.
RUN : "${SERVICE:?build with --build-arg SERVICE=<crate name>}" \
 && cargo build --release --locked -p "${SERVICE}" --bin "${SERVICE}" \
 && mkdir -p /out/app \
 && cp "target/release/${SERVICE}" /out/app/service \
 && if [ -d "${SERVICE}/static" ]; then \
      mkdir -p "/out/app/${SERVICE}" && cp -R "${SERVICE}/static" "/out/app/${SERVICE}/static"; \
    fi

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG SERVICE
LABEL org.opencontainers.image.title="ticketing-${SERVICE}" \
      org.opencontainers.image.description="ticketing ${SERVICE} service (Rust)"
WORKDIR /app
COPY --from=builder /out/app/ /app/
# Numeric, so that Kubernetes (runAsNonRoot) can verify it is not root; 65532 is distroless "nonroot".
USER 65532:65532
EXPOSE 3000
ENTRYPOINT ["/app/service"]
