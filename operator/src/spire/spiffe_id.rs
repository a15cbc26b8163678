//! SPIFFE IDs as the SPIFFE standard defines them, and their API representation.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::api::types;

/// A parsed SPIFFE ID: `spiffe://<trust domain><path>`.
///
/// One shared string: cloning is a reference count, so the parent ID every entry of a
/// node carries is held once (the operator holds tens of thousands of IDs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The whole ID, `spiffe://` included.
    id: Arc<str>,
    /// Where the path starts in `id` (its length when the path is empty).
    path_at: usize,
}

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// It does not start with `spiffe://`.
    #[error("{0:?} does not start with spiffe://")]
    Scheme(String),
    /// The trust domain is empty or has characters outside `[a-z0-9._-]`.
    #[error(
        "{0:?} has an invalid trust domain (allowed: lowercase letters, digits, '.', '-', '_')"
    )]
    TrustDomain(String),
    /// A path segment is empty, `.`, `..`, or has characters outside `[A-Za-z0-9._-]`.
    #[error(
        "{0:?} has an invalid path (segments must be non-empty, not '.' or '..', and use letters, digits, '.', '-', '_')"
    )]
    Path(String),
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    /// The trust domain name, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.path_at]
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[self.path_at..]
    }

    /// The whole ID, `spiffe://...`.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The form the SPIRE API carries.
    pub fn to_api(&self) -> types::Spiffeid {
        types::Spiffeid {
            trust_domain: self.trust_domain().to_owned(),
            path: self.path().to_owned(),
        }
    }

    /// Reads the SPIRE API form, validating it like a string.
    pub fn from_api(id: &types::Spiffeid) -> Result<Self, SpiffeIdError> {
        format!("spiffe://{}{}", id.trust_domain, id.path).parse()
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::Scheme(s.into()))?;
        let (trust_domain, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let td_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
        if trust_domain.is_empty() || !trust_domain.chars().all(td_char) {
            return Err(SpiffeIdError::TrustDomain(s.into()));
        }
        if !path.is_empty() {
            let seg_char = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
            let valid = path[1..].split('/').all(|seg| {
                !seg.is_empty() && seg != "." && seg != ".." && seg.chars().all(seg_char)
            });
            if !valid {
                return Err(SpiffeIdError::Path(s.into()));
            }
        }
        Ok(Self {
            id: Arc::from(s),
            path_at: SCHEME.len() + trust_domain.len(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_round_trip() {
        for s in [
            "spiffe://example.org",
            "spiffe://example.org/ns/default/sa/default",
            "spiffe://td-1_x.io/spire/agent/k8s_psat/c1/1f2e-3d",
        ] {
            let id: SpiffeId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
            assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), s);
            assert_eq!(SpiffeId::from_api(&id.to_api()).unwrap(), id);
        }
    }

    #[test]
    fn invalid_ids_name_the_part_that_is_wrong() {
        type Expected = fn(String) -> SpiffeIdError;
        let cases: &[(&str, Expected)] = &[
            ("http://example.org/a", SpiffeIdError::Scheme),
            ("spiffe://", SpiffeIdError::TrustDomain),
            ("spiffe://Example.org/a", SpiffeIdError::TrustDomain),
            ("spiffe://example.org:8443/a", SpiffeIdError::TrustDomain),
            ("spiffe://example.org/", SpiffeIdError::Path),
            ("spiffe://example.org/a//b", SpiffeIdError::Path),
            ("spiffe://example.org/a/../b", SpiffeIdError::Path),
            ("spiffe://example.org/a/./b", SpiffeIdError::Path),
            ("spiffe://example.org/a b", SpiffeIdError::Path),
            ("spiffe://example.org/a?b", SpiffeIdError::Path),
        ];
        for (input, want) in cases {
            assert_eq!(
                input.parse::<SpiffeId>(),
                Err(want((*input).into())),
                "{input}"
            );
        }
    }
}
