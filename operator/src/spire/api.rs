//! Generated SPIRE server API types and gRPC stubs (from `proto/spire/api`).
//!
//! Generated code is confined to this module; the rest of the crate uses it through
//! [`super::SpireClient`] and the short paths re-exported here.
#![allow(clippy::all, missing_docs)]

// prost resolves cross-package references with `super::` chains, so the module tree
// must mirror the protobuf package names.
mod generated {
    pub mod spire {
        pub mod api {
            pub mod types {
                tonic::include_proto!("spire.api.types");
            }
            pub mod server {
                pub mod entry {
                    pub mod v1 {
                        tonic::include_proto!("spire.api.server.entry.v1");
                    }
                }
                pub mod bundle {
                    pub mod v1 {
                        tonic::include_proto!("spire.api.server.bundle.v1");
                    }
                }
                pub mod svid {
                    pub mod v1 {
                        tonic::include_proto!("spire.api.server.svid.v1");
                    }
                }
                pub mod trustdomain {
                    pub mod v1 {
                        tonic::include_proto!("spire.api.server.trustdomain.v1");
                    }
                }
                pub mod agent {
                    pub mod v1 {
                        tonic::include_proto!("spire.api.server.agent.v1");
                    }
                }
            }
        }
    }
}

pub use generated::spire::api::server::{
    agent::v1 as agent, bundle::v1 as bundle, entry::v1 as entry, svid::v1 as svid,
    trustdomain::v1 as trustdomain,
};
pub use generated::spire::api::types;
