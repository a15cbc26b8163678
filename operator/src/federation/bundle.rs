//! SPIFFE bundle JSON (a JWK set with `use` x509-svid / jwt-svid keys, as
//! `spire-server bundle show -format spiffe` prints it) into the SPIRE API's Bundle.
//!
//! X.509 authorities carry their certificate in `x5c`; JWT authorities are JWKs (EC or
//! RSA) that the API wants as PKIX SubjectPublicKeyInfo DER, so that is built here.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;

use crate::spire::api::types;

/// Why a bundle does not parse; the message names the key by its index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BundleError(String);

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
    #[serde(default)]
    spiffe_sequence: Option<u64>,
    #[serde(default)]
    spiffe_refresh_hint: Option<i64>,
}

#[derive(Deserialize)]
struct Jwk {
    #[serde(rename = "use", default)]
    use_: String,
    #[serde(default)]
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    x5c: Option<Vec<String>>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

/// Parses SPIFFE bundle JSON for `trust_domain`.
pub fn parse(trust_domain: &str, json: &str) -> Result<types::Bundle, BundleError> {
    let set: JwkSet = serde_json::from_str(json)
        .map_err(|e| BundleError(format!("not SPIFFE bundle JSON: {e}")))?;
    let mut bundle = types::Bundle {
        trust_domain: trust_domain.to_owned(),
        refresh_hint: set.spiffe_refresh_hint.unwrap_or_default(),
        sequence_number: set.spiffe_sequence.unwrap_or_default(),
        ..Default::default()
    };
    for (i, key) in set.keys.iter().enumerate() {
        let fail = |what: String| BundleError(format!("keys[{i}]: {what}"));
        match key.use_.as_str() {
            "x509-svid" => {
                let chain = key.x5c.as_deref().unwrap_or_default();
                let [cert] = chain else {
                    return Err(fail(format!(
                        "an x509-svid key needs exactly one certificate in x5c, found {}",
                        chain.len()
                    )));
                };
                let der = STANDARD
                    .decode(cert)
                    .map_err(|e| fail(format!("x5c[0] is not base64: {e}")))?;
                x509_parser::parse_x509_certificate(&der)
                    .map_err(|e| fail(format!("x5c[0] is not an X.509 certificate: {e}")))?;
                bundle.x509_authorities.push(types::X509Certificate {
                    asn1: der,
                    tainted: false,
                });
            }
            "jwt-svid" => {
                let key_id = key
                    .kid
                    .clone()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| fail("a jwt-svid key needs a kid".into()))?;
                let public_key = public_key_der(key).map_err(fail)?;
                bundle.jwt_authorities.push(types::JwtKey {
                    public_key,
                    key_id,
                    expires_at: 0,
                    tainted: false,
                });
            }
            other => {
                return Err(fail(format!(
                    "use {other:?} is neither \"x509-svid\" nor \"jwt-svid\""
                )));
            }
        }
    }
    Ok(bundle)
}

/// The SubjectPublicKeyInfo DER of an EC (P-256, P-384, P-521) or RSA JWK.
fn public_key_der(key: &Jwk) -> Result<Vec<u8>, String> {
    let field = |name: &str, value: &Option<String>| -> Result<Vec<u8>, String> {
        let value = value
            .as_deref()
            .ok_or_else(|| format!("a {} key needs {name}", key.kty))?;
        URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|e| format!("{name} is not unpadded base64url: {e}"))
    };
    match key.kty.as_str() {
        "EC" => {
            // id-ecPublicKey, then the named curve, and the coordinates' length.
            const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
            let (curve, size): (&[u8], usize) = match key.crv.as_deref() {
                Some("P-256") => (
                    &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
                    32,
                ),
                Some("P-384") => (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22], 48),
                Some("P-521") => (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23], 66),
                other => return Err(format!("curve {other:?} is not P-256, P-384 or P-521")),
            };
            let (x, y) = (field("x", &key.x)?, field("y", &key.y)?);
            if x.len() != size || y.len() != size {
                return Err(format!("x and y must be {size} bytes for {:?}", key.crv));
            }
            let mut point = vec![0x00, 0x04];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let algorithm = tlv(0x30, &[EC_PUBLIC_KEY, curve].concat());
            Ok(tlv(0x30, &[algorithm, tlv(0x03, &point)].concat()))
        }
        "RSA" => {
            const RSA_ENCRYPTION: &[u8] = &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
            ];
            let (n, e) = (field("n", &key.n)?, field("e", &key.e)?);
            let rsa_key = tlv(0x30, &[integer(&n), integer(&e)].concat());
            let bits = [&[0x00][..], &rsa_key].concat();
            let algorithm = tlv(0x30, RSA_ENCRYPTION);
            Ok(tlv(0x30, &[algorithm, tlv(0x03, &bits)].concat()))
        }
        other => Err(format!("key type {other:?} is not EC or RSA")),
    }
}

/// A DER INTEGER holding the unsigned big-endian `bytes`.
fn integer(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let mut value = bytes[start..].to_vec();
    if value.first().is_none_or(|b| b & 0x80 != 0) {
        value.insert(0, 0);
    }
    tlv(0x02, &value)
}

/// A DER tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::SubjectPublicKeyInfo;

    use super::*;

    fn b64url(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn ec_and_rsa_jwks_become_the_key_their_coordinates_describe() {
        let x: Vec<u8> = (1..=32).collect();
        let y: Vec<u8> = (101..=132).collect();
        let n: Vec<u8> = std::iter::once(0xc1)
            .chain((0..255).map(|i| i as u8))
            .collect();
        let json = serde_json::json!({
            "keys": [
                {"use": "jwt-svid", "kty": "EC", "kid": "k1", "crv": "P-256", "x": b64url(&x), "y": b64url(&y)},
                {"use": "jwt-svid", "kty": "RSA", "kid": "k2", "n": b64url(&n), "e": "AQAB"},
            ],
            "spiffe_sequence": 7,
            "spiffe_refresh_hint": 300,
        });
        let bundle = parse("p.example", &json.to_string()).unwrap();
        assert_eq!((bundle.sequence_number, bundle.refresh_hint), (7, 300));
        let (_, ec) =
            SubjectPublicKeyInfo::from_der(&bundle.jwt_authorities[0].public_key).unwrap();
        assert_eq!(ec.algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1");
        assert_eq!(
            &ec.subject_public_key.data[..],
            &[&[0x04][..], &x, &y].concat()[..]
        );
        let (_, rsa) =
            SubjectPublicKeyInfo::from_der(&bundle.jwt_authorities[1].public_key).unwrap();
        let Ok(x509_parser::public_key::PublicKey::RSA(parsed)) = rsa.parsed() else {
            panic!("not an RSA key");
        };
        assert_eq!(
            parsed
                .modulus
                .iter()
                .skip_while(|b| **b == 0)
                .copied()
                .collect::<Vec<_>>(),
            n
        );
        assert_eq!(parsed.exponent, &[1, 0, 1]);
        assert_eq!(bundle.jwt_authorities[1].key_id, "k2");
    }

    #[test]
    fn bad_keys_are_named_by_index() {
        for (json, expected) in [
            (
                r#"{"keys": [{"use": "x509-svid", "kty": "EC", "x5c": []}]}"#,
                "keys[0]: an x509-svid key needs exactly one certificate",
            ),
            (
                r#"{"keys": [{"use": "x509-svid", "x5c": ["AAAA"]}]}"#,
                "keys[0]: x5c[0] is not an X.509 certificate",
            ),
            (
                r#"{"keys": [{}, {"use": "jwt-svid", "kty": "EC", "crv": "P-256"}]}"#,
                "keys[0]: use \"\"",
            ),
            (
                r#"{"keys": [{"use": "jwt-svid", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}"#,
                "keys[0]: a jwt-svid key needs a kid",
            ),
            (
                r#"{"keys": [{"use": "jwt-svid", "kid": "a", "kty": "OKP"}]}"#,
                "keys[0]: key type \"OKP\"",
            ),
        ] {
            let err = parse("p", json).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{json}: {err}");
        }
    }
}
