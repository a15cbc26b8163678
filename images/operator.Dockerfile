# spire-operator image. Build from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/spire-rs/spire-operator:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
# protoc comes from the protoc-bin-vendored crate; nothing else is needed from the system.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p spire-operator \
    && install -D target/release/spire-operator /out/spire-operator

# glibc and libgcc only, no shell, uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/spire-operator /usr/local/bin/spire-operator
USER 65532:65532
# spire-controller-manager's charts pass a relative `--config=controller-manager-config.yaml`
# and mount the file at /; distroless' nonroot working directory would be /home/nonroot.
WORKDIR /
ENTRYPOINT ["/usr/local/bin/spire-operator"]
CMD ["run", "--config", "/etc/spire-operator/config.yaml"]
