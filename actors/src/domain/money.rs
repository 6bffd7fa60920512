//! Money as integer minor units plus an ISO 4217 currency. Never floats: a saga that charges
//! 19.99 must charge exactly 1999 cents, and adding lines must not drift.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ParseError;

/// Three upper-case ASCII letters. We do not carry the full ISO list: the catalog decides which
/// currencies a shop sells in, and an order in any other currency is refused there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// Accepts `eur` or `EUR` (Stripe speaks lower case, people write upper case).
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let bytes = raw.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return Err(ParseError::new(
                "must be a three-letter ISO 4217 code such as EUR",
            ));
        }
        Ok(Self([
            bytes[0].to_ascii_uppercase(),
            bytes[1].to_ascii_uppercase(),
            bytes[2].to_ascii_uppercase(),
        ]))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored, so this cannot fail; fall back defensively anyway.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl TryFrom<String> for Currency {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("cannot add {0} to {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount overflows")]
    Overflow,
}

/// A non-negative amount in minor units (cents). The upper bound (10^12 minor units) keeps sums of
/// a bounded number of lines far from `i64` overflow and within what payment providers accept.
/// Deserialising goes through `Money::new`, so a message or snapshot cannot smuggle in a bad value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "MoneyRepr")]
pub struct Money {
    amount_cents: i64,
    currency: Currency,
}

/// Money's wire shape, checked on the way in.
#[derive(Deserialize)]
struct MoneyRepr {
    amount_cents: i64,
    currency: Currency,
}

impl TryFrom<MoneyRepr> for Money {
    type Error = ParseError;
    fn try_from(raw: MoneyRepr) -> Result<Self, Self::Error> {
        Money::new(raw.amount_cents, raw.currency)
    }
}

impl Money {
    pub const MAX_CENTS: i64 = 1_000_000_000_000;

    pub fn new(amount_cents: i64, currency: Currency) -> Result<Self, ParseError> {
        if !(0..=Self::MAX_CENTS).contains(&amount_cents) {
            return Err(ParseError::new(
                "must be an integer number of cents from 0 to 1000000000000",
            ));
        }
        Ok(Self {
            amount_cents,
            currency,
        })
    }

    pub fn zero(currency: Currency) -> Self {
        Self {
            amount_cents: 0,
            currency,
        }
    }

    pub fn amount_cents(&self) -> i64 {
        self.amount_cents
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(other.currency, self.currency));
        }
        let sum = self
            .amount_cents
            .checked_add(other.amount_cents)
            .filter(|s| *s <= Self::MAX_CENTS)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money {
            amount_cents: sum,
            currency: self.currency,
        })
    }

    pub fn checked_mul(self, factor: u32) -> Result<Money, MoneyError> {
        let product = self
            .amount_cents
            .checked_mul(i64::from(factor))
            .filter(|p| *p <= Self::MAX_CENTS)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money {
            amount_cents: product,
            currency: self.currency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("eur").unwrap()
    }

    #[test]
    fn currencies_are_normalised_to_upper_case() {
        assert_eq!(eur().as_str(), "EUR");
        for bad in ["", "EU", "EURO", "E1R", "€€€"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn money_refuses_negative_and_huge_amounts() {
        assert!(Money::new(-1, eur()).is_err());
        assert!(Money::new(Money::MAX_CENTS + 1, eur()).is_err());
        assert!(Money::new(0, eur()).is_ok());
    }

    #[test]
    fn deserialising_money_applies_the_same_rules() {
        let ok: Result<Money, _> = serde_json::from_str(r#"{"amount_cents":100,"currency":"eur"}"#);
        assert_eq!(
            ok.map(|m| (m.amount_cents(), m.currency().to_string()))
                .ok(),
            Some((100, "EUR".to_owned()))
        );
        let negative: Result<Money, _> =
            serde_json::from_str(r#"{"amount_cents":-1,"currency":"EUR"}"#);
        assert!(negative.is_err());
    }

    #[test]
    fn adding_money_checks_currency_and_overflow() {
        let usd = Currency::parse("USD").unwrap();
        let a = Money::new(150, eur()).unwrap();
        let b = Money::new(250, eur()).unwrap();
        assert_eq!(a.checked_add(b).map(|m| m.amount_cents()), Ok(400));
        assert!(a.checked_add(Money::zero(usd)).is_err());
        let big = Money::new(Money::MAX_CENTS, eur()).unwrap();
        assert_eq!(big.checked_add(a), Err(MoneyError::Overflow));
        assert_eq!(a.checked_mul(3).map(|m| m.amount_cents()), Ok(450));
    }
}
