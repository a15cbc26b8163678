# csi-node-driver-registrar image: a drop-in for registry.k8s.io/sig-storage/csi-node-driver-registrar
# (same flags, same entrypoint path). Build from the repository root:
#   docker build -f images/node-driver-registrar.Dockerfile -t ghcr.io/spire-rs/csi-node-driver-registrar:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p csi-node-driver-registrar \
    && install -D target/release/csi-node-driver-registrar /out/csi-node-driver-registrar

# No shell. Upstream's binary is /csi-node-driver-registrar, which manifests may name in
# `command`, so ours is there too. It runs as root without capabilities (it creates its
# socket in kubelet's root-owned plugin registry); the chart sets the securityContext.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/csi-node-driver-registrar /csi-node-driver-registrar
ENTRYPOINT ["/csi-node-driver-registrar"]
