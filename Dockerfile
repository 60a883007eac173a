# One image carries all five functions: oauth-callback, klaviyo-webhook, omneo-webhook,
# inbound-task and outbound-task, each at /usr/local/bin/<name>.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/omneo-klaviyo/extension:TAG .   # what `make deploy` does
#
# Each Cloud Run service runs the same image with its own command (Terraform:
# `command = ["/usr/local/bin/<name>"]`); the ENTRYPOINT below is only the default. The binaries
# listen on 0.0.0.0:$PORT (Cloud Run sets it) and stop cleanly on SIGTERM.
#
# glibc build on Debian 12 (bookworm) for distroless cc-debian12 (platform.md). cargo-chef caches
# the dependencies: `cook` builds them from the manifests and Cargo.lock alone, so a change to the
# sources only rebuilds the workspace's own crates.
#
# No Docker engine runs here: `make image-check` (tests/src/bin/image-check.rs) checks this file
# against the workspace and runs the binaries it copies; `make test` repeats the file checks.

FROM rust:1.95-bookworm AS chef
RUN cargo install --locked cargo-chef@0.1.78
WORKDIR /src

# The recipe: every manifest and Cargo.lock, nothing else.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json \
    -p oauth-callback -p klaviyo-webhook -p omneo-webhook -p inbound-task -p outbound-task
COPY . .
RUN cargo build --release --locked \
    -p oauth-callback -p klaviyo-webhook -p omneo-webhook -p inbound-task -p outbound-task

# No shell, no package manager; runs as nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build \
    /src/target/release/oauth-callback \
    /src/target/release/klaviyo-webhook \
    /src/target/release/omneo-webhook \
    /src/target/release/inbound-task \
    /src/target/release/outbound-task \
    /usr/local/bin/
ENV PORT=8080
EXPOSE 8080
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/oauth-callback"]
