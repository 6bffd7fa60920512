//! Stock keeping units. Shops bring their own SKUs, so a SKU is taken as the shop wrote it: ASCII
//! letters of either case, digits and the usual separators ('-', '_', '.'), 1..=64 characters.
//! Case matters and nothing is folded: `sku-1` and `SKU-1` are two products, as they are in the
//! shop's own catalog. The alphabet stays narrow because a SKU travels in URL paths, logs and
//! the shard and partition hashes, where spaces, slashes or look-alike Unicode would make two
//! spellings of one product.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ParseError;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(ParseError::new("must be 1 to 64 characters"));
        }
        let ok = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(ParseError::new(
                "must contain only letters, digits, '-', '_' and '.'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Stable hash (FNV-1a) used to pick the owning shard. Stable across processes and releases,
    /// unlike `std`'s `DefaultHasher`, so several processes agree on ownership.
    pub fn shard_hash(&self) -> u64 {
        self.0.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
}

impl TryFrom<String> for Sku {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Sku> for String {
    fn from(value: Sku) -> Self {
        value.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_accept_the_documented_alphabet_only() {
        for good in ["A", "SKU-1", "sku-1", "TShirt_XL.v2", &"Z".repeat(64)] {
            assert!(Sku::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "A B", "Ä", "a/b", "a*b", " A", &"Z".repeat(65)] {
            assert!(Sku::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn skus_keep_their_case_and_differ_by_it() {
        let lower = Sku::parse("sku-1").map(String::from);
        let upper = Sku::parse("SKU-1").map(String::from);
        assert_eq!(lower.as_deref(), Ok("sku-1"));
        assert_ne!(lower, upper);
    }

    #[test]
    fn shard_hash_is_fnv1a_so_every_process_agrees() {
        // Reference value computed independently (FNV-1a 64 of b"SKU-1").
        assert_eq!(
            Sku::parse("SKU-1").map(|s| s.shard_hash()),
            Ok(0x1513_e49c_4b06_7b2c)
        );
    }
}
