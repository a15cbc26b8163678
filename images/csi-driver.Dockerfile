# spiffe-csi-driver image. Build from the repository root:
#   docker build -f images/csi-driver.Dockerfile -t ghcr.io/spire-rs/spiffe-csi-driver:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p spiffe-csi-driver \
    && install -D target/release/spiffe-csi-driver /out/spiffe-csi-driver

# No shell, no mount(8): the driver mounts with the syscalls itself. It runs as root in a
# privileged container (bind mounts into the kubelet's pod directories), so the image has
# no USER line; the chart sets the rest of the securityContext.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/spiffe-csi-driver /usr/local/bin/spiffe-csi-driver
ENTRYPOINT ["/usr/local/bin/spiffe-csi-driver"]
