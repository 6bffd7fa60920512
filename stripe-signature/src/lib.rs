//! Verifying (and producing) `Stripe-Signature` headers, as Stripe's official SDKs do:
//! `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, HMAC-SHA256 over `<t>.<raw body>` keyed with the
//! endpoint secret exactly as given (`whsec_` prefix included). Every `v1` is tried against every
//! configured secret (secret rotation), in constant time; `v0` and unknown schemes are ignored; a
//! timestamp older than the tolerance is refused (replay protection). The clock is a parameter.

use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    Missing,
    #[error("malformed Stripe-Signature header")]
    Malformed,
    #[error("no v1 signature in Stripe-Signature header")]
    NoV1,
    #[error("timestamp outside the tolerance (possible replay)")]
    TooOld,
    #[error("no signature matches the payload")]
    Mismatch,
}

/// Checks webhook signatures against one or more endpoint secrets.
/// The secrets are `SecretString`s: redacted in `Debug`, wiped from memory when dropped.
#[derive(Debug, Clone)]
pub struct WebhookVerifier {
    secrets: Vec<SecretString>,
    tolerance: Duration,
}

impl WebhookVerifier {
    pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

    pub fn new(
        secrets: impl IntoIterator<Item = impl Into<SecretString>>,
        tolerance: Duration,
    ) -> Self {
        Self {
            secrets: secrets.into_iter().map(Into::into).collect(),
            tolerance,
        }
    }

    /// Verifies `header` for `body` at time `now_unix` (seconds).
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let mut timestamp: Option<i64> = None;
        let mut signatures: Vec<Vec<u8>> = Vec::new();
        for part in header.split(',') {
            let (key, value) = part
                .trim()
                .split_once('=')
                .ok_or(SignatureError::Malformed)?;
            match key {
                "t" => timestamp = Some(value.parse().map_err(|_| SignatureError::Malformed)?),
                // A malformed v1 cannot match; skip it rather than fail the others.
                "v1" => signatures.extend(hex::decode(value).ok()),
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
        if signatures.is_empty() {
            return Err(SignatureError::NoV1);
        }
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        if now_unix.saturating_sub(timestamp) > tolerance {
            return Err(SignatureError::TooOld);
        }
        let matches = self.secrets.iter().any(|secret| {
            let expected = mac(secret.expose_secret(), timestamp, body);
            signatures
                .iter()
                .any(|candidate| bool::from(candidate.as_slice().ct_eq(expected.as_slice())))
        });
        if matches {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail; an empty MAC would never match.
    let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) else {
        return Vec::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// The hex `v1` signature of `body` at `timestamp` with `secret`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, body))
}

/// A complete `Stripe-Signature` header value, as Stripe sends it.
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign(secret, timestamp, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_BODY: &str = r#"{"id":"evt_1","object":"event","type":"payment_intent.succeeded","data":{"object":{"id":"pi_1","object":"payment_intent","metadata":{"order_id":"42"}}}}"#;
    const VECTOR_SIG: &str = "fee99f1f2b5360fcdda9e49a47e222161f1dacc2dfdfd57337e592b401df2d09";
    const T: i64 = 1_700_000_000;

    fn verifier(secrets: &[&str]) -> WebhookVerifier {
        WebhookVerifier::new(
            secrets.iter().map(|s| s.to_string()),
            WebhookVerifier::DEFAULT_TOLERANCE,
        )
    }

    #[test]
    fn the_reference_vector_verifies() {
        assert_eq!(
            sign("whsec_test_secret", T, VECTOR_BODY.as_bytes()),
            VECTOR_SIG
        );
        let header = format!("t={T},v1={VECTOR_SIG}");
        assert_eq!(
            verifier(&["whsec_test_secret"]).verify(Some(&header), VECTOR_BODY.as_bytes(), T + 10),
            Ok(())
        );
    }

    #[test]
    fn a_header_we_produce_verifies() {
        let header = signature_header("whsec_abc", T, b"{}");
        assert_eq!(
            verifier(&["whsec_abc"]).verify(Some(&header), b"{}", T),
            Ok(())
        );
    }

    #[test]
    fn the_wrong_secret_fails() {
        let header = format!("t={T},v1={VECTOR_SIG}");
        assert_eq!(
            verifier(&["whsec_other"]).verify(Some(&header), VECTOR_BODY.as_bytes(), T),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_reserialised_body_fails() {
        let header = format!("t={T},v1={VECTOR_SIG}");
        let value: serde_json::Value = serde_json::from_str(VECTOR_BODY).unwrap_or_default();
        let pretty = serde_json::to_vec_pretty(&value).unwrap_or_default();
        assert_eq!(
            verifier(&["whsec_test_secret"]).verify(Some(&header), &pretty, T),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn one_good_v1_among_several_is_enough_and_any_configured_secret_may_match() {
        let bad = "0".repeat(64);
        let header = format!("t={T},v1={bad},v1={VECTOR_SIG},v0={bad}");
        assert_eq!(
            verifier(&["whsec_new", "whsec_test_secret"]).verify(
                Some(&header),
                VECTOR_BODY.as_bytes(),
                T
            ),
            Ok(())
        );
    }

    #[test]
    fn a_header_with_only_v0_is_refused() {
        let header = format!("t={T},v0={VECTOR_SIG}");
        assert_eq!(
            verifier(&["whsec_test_secret"]).verify(Some(&header), VECTOR_BODY.as_bytes(), T),
            Err(SignatureError::NoV1)
        );
    }

    #[test]
    fn an_old_timestamp_is_refused_and_the_tolerance_is_configurable() {
        let header = format!("t={T},v1={VECTOR_SIG}");
        let body = VECTOR_BODY.as_bytes();
        assert_eq!(
            verifier(&["whsec_test_secret"]).verify(Some(&header), body, T + 301),
            Err(SignatureError::TooOld)
        );
        assert_eq!(
            verifier(&["whsec_test_secret"]).verify(Some(&header), body, T + 300),
            Ok(())
        );
        let lenient = WebhookVerifier::new(["whsec_test_secret"], Duration::from_secs(3600));
        assert_eq!(lenient.verify(Some(&header), body, T + 3000), Ok(()));
    }

    #[test]
    fn malformed_and_missing_headers_are_refused() {
        let v = verifier(&["whsec_test_secret"]);
        let body = VECTOR_BODY.as_bytes();
        assert_eq!(v.verify(None, body, T), Err(SignatureError::Missing));
        assert_eq!(v.verify(Some(""), body, T), Err(SignatureError::Malformed));
        assert_eq!(
            v.verify(Some("garbage"), body, T),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            v.verify(Some(&format!("v1={VECTOR_SIG}")), body, T),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            v.verify(Some(&format!("t=soon,v1={VECTOR_SIG}")), body, T),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            v.verify(Some(&format!("t={T},v1=nothex")), body, T),
            Err(SignatureError::NoV1)
        );
    }
}
