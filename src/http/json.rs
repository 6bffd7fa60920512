//! A JSON body extractor whose errors name the offending field. axum's own `Json` rejects with a
//! plain-text body; clients of this API always get the JSON error shape, with the path of the
//! bad field (`items[0].quantity`) when serde can tell it.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::ApiError;

pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    "body_too_large",
                    format!("the body exceeds {} bytes", super::MAX_BODY_BYTES),
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    rejection.body_text(),
                )
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let code = if inner.is_syntax() || inner.is_eof() {
            "malformed_json"
        } else {
            "invalid_field"
        };
        let error = ApiError::new(
            StatusCode::BAD_REQUEST,
            code,
            strip_position(&inner.to_string()),
        );
        if path == "." || code == "malformed_json" {
            error
        } else {
            error.with_field(path)
        }
    })?;
    de.end()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))?;
    Ok(value)
}

/// serde's messages end in " at line 1 column 42", useful for syntax errors only.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i)
            if message[i..].contains("column")
                && !message.starts_with("expected")
                && !message.contains("EOF") =>
        {
            message[..i].to_owned()
        }
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        items: Vec<Item>,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        quantity: i64,
    }

    #[test]
    fn a_wrong_type_names_the_field_path() {
        let err = parse::<Body>(br#"{"items":[{"quantity":"two"}]}"#).err();
        let err = err.expect("should fail");
        assert_eq!(err.field.as_deref(), Some("items[0].quantity"));
        assert_eq!(err.code, "invalid_field");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn malformed_json_is_a_400_without_a_field() {
        let err = parse::<Body>(br#"{"items":["#).expect_err("should fail");
        assert_eq!(err.code, "malformed_json");
        assert_eq!(err.field, None);
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = parse::<Body>(br#"{"items":[],"itemz":1}"#).expect_err("should fail");
        assert!(err.message.contains("itemz"), "{}", err.message);
    }
}
