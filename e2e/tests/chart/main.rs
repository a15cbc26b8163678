//! The Helm chart (`charts/spire-rs`): lint, render with every values file, validate each
//! rendered object against the real kube-apiserver's schemas, install and uninstall it,
//! and prove its RBAC by running the operator with the chart's ServiceAccount.

mod install;
mod operator_deployment;
mod rbac;
mod render;
