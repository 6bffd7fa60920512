//! Identifiers. Order ids are UUIDv7 so they sort by creation time, which keeps Postgres index
//! inserts local and makes ids in logs readable as a timeline.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ParseError;

/// The identity of one order and of its saga actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(Uuid);

impl OrderId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| ParseError::new("must be a UUID"))
    }
}

impl Default for OrderId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for OrderId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Ties together every log line, message and call that belongs to one request's consequences.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CorrelationId(String);

impl TryFrom<String> for CorrelationId {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<CorrelationId> for String {
    fn from(value: CorrelationId) -> Self {
        value.0
    }
}

impl CorrelationId {
    pub fn new() -> Self {
        Self(Uuid::new_v4().to_string())
    }

    /// Accepts a caller-supplied id (e.g. `X-Correlation-Id`) if it is short and printable, so a
    /// hostile header cannot bloat or forge log lines.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok = !raw.is_empty()
            && raw.len() <= 128
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::new(
                "must be 1 to 128 characters of letters, digits, '-', '_', '.' or ':'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for CorrelationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The shop's identifier for its customer. Opaque to us; bounded so it cannot bloat snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

impl CustomerId {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ParseError::new("must not be empty"));
        }
        if trimmed.len() > 64 {
            return Err(ParseError::new("must be at most 64 characters"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(ParseError::new("must not contain control characters"));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CustomerId {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<CustomerId> for String {
    fn from(value: CustomerId) -> Self {
        value.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A payment-provider token such as Stripe's `pm_card_visa`. We never see card numbers, only these
/// references, so the shape check is about size and charset, not about cards.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PaymentMethod(String);

impl PaymentMethod {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok = !raw.is_empty()
            && raw.len() <= 100
            && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::new(
                "must be 1 to 100 characters of letters, digits and '_' (e.g. pm_card_visa)",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PaymentMethod {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PaymentMethod> for String {
    fn from(value: PaymentMethod) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_parse_only_uuids() {
        assert!(OrderId::parse("not-a-uuid").is_err());
        let id = OrderId::new();
        assert_eq!(OrderId::parse(&id.to_string()), Ok(id));
    }

    #[test]
    fn correlation_ids_refuse_spaces_and_overlong_values() {
        assert!(CorrelationId::parse("abc-123").is_ok());
        assert!(CorrelationId::parse("a b").is_err());
        assert!(CorrelationId::parse(&"x".repeat(129)).is_err());
        assert!(CorrelationId::parse("").is_err());
    }

    #[test]
    fn customer_ids_are_trimmed_and_bounded() {
        assert_eq!(CustomerId::parse("  c1 ").map(|c| c.0), Ok("c1".to_owned()));
        assert!(CustomerId::parse("   ").is_err());
        assert!(CustomerId::parse(&"c".repeat(65)).is_err());
        assert!(CustomerId::parse("a\u{0}b").is_err());
    }

    #[test]
    fn payment_methods_are_provider_tokens() {
        assert!(PaymentMethod::parse("pm_card_visa").is_ok());
        assert!(PaymentMethod::parse("pm card").is_err());
        assert!(PaymentMethod::parse("").is_err());
    }
}
