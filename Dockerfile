# One image per function: docker build --build-arg FUNCTION=oauth-callback -t oauth-callback .
# glibc build on distroless cc (platform.md); the binary listens on $PORT (Cloud Run sets it).
FROM rust:1.95-bookworm AS build
ARG FUNCTION
WORKDIR /src
COPY . .
RUN test -n "$FUNCTION" || (echo "build with --build-arg FUNCTION=<function crate name>" && false)
RUN cargo build --release --locked -p "$FUNCTION" && cp "target/release/$FUNCTION" /function

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /function /function
ENV PORT=8080
EXPOSE 8080
USER nonroot
ENTRYPOINT ["/function"]
