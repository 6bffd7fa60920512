//! The one place where failures become HTTP responses. Database and actor details are logged,
//! never shown to clients.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use actors::orders::SagaError;
use actors::ports::StoreError;
use adapters::postgres::CatalogError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn coded(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// A well-formed request whose content is not acceptable (unknown SKU, bad quantity...).
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
        .with_field(field)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

/// The body of every error answer: `{"error":{"code","message","field"}}`.
// The OpenAPI document describes errors with this same type, so the two cannot drift apart.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "validation_failed", "message": "must be an integer from 1 to 1000", "field": "items[0].quantity"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `validation_failed`, `not_found`, `unavailable`...
    #[schema(example = "validation_failed")]
    pub code: String,
    /// For people; wording may change.
    pub message: String,
    /// The offending field, header or parameter (`items[0].quantity`, `Idempotency-Key`), or
    /// `null` when the error is not about one. Always present.
    #[schema(required = true)]
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::VersionConflict { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "the order changed meanwhile; retry",
            ),
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "store error answered with 503");
                ApiError::unavailable("the database is unavailable; retry shortly")
            }
            StoreError::NotOwner(_) => ApiError::unavailable(
                "another instance runs this order (GET /cluster shows which owns its partition); \
                 ask it, or retry once its partition has moved",
            )
            .coded("not_owner"),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "database error answered with 503");
        ApiError::unavailable("the database is unavailable; retry shortly")
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::OnHandBelowReserved { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "on_hand_below_reserved",
                e.to_string(),
            )
            .with_field("on_hand"),
            CatalogError::Unavailable(inner) => inner.into(),
            CatalogError::PriceRead(inner) => {
                tracing::warn!(error = %inner, "price read failed; answered with 503");
                ApiError::unavailable("the database is unavailable; retry shortly")
            }
        }
    }
}

impl From<SagaError> for ApiError {
    fn from(e: SagaError) -> Self {
        match e {
            SagaError::UnknownOrder(id) => {
                ApiError::not_found(format!("order {id} does not exist"))
            }
            SagaError::Store(store) => store.into(),
            SagaError::ActorUnavailable(reason) => {
                tracing::warn!(%reason, "order actor unavailable; answered with 503");
                ApiError::unavailable("the order service is busy; retry shortly")
            }
        }
    }
}
