//! Error answers: every failure of an API endpoint becomes one [`ApiFailure`], which
//! answers the wire type [`ApiError`] with its HTTP status.
//!
//! Invariants:
//! * the `error` code is a function of the status alone ([`code_for`]), so a client can
//!   rely on either;
//! * a 429 always carries `Retry-After` in whole seconds (at least 1);
//! * internal failures answer a generic message; their detail goes to the log, never
//!   a token or a request body.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use vworkspace_api::agent_api::ApiError;

use crate::store::StoreError;

/// A failed request, ready to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: StatusCode,
    /// For a person.
    pub message: String,
    /// Per-field detail of a validation failure.
    pub details: BTreeMap<String, String>,
    /// `Retry-After` seconds.
    pub retry_after: Option<u32>,
}

/// The `ApiError.error` code of a status.
pub fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "unauthorized",
        404 => "not_found",
        409 => "conflict",
        413 => "payload_too_large",
        429 => "rate_limited",
        502..=504 => "unavailable",
        400..=499 => "bad_request",
        _ => "internal",
    }
}

impl ApiFailure {
    /// A failure with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            details: BTreeMap::new(),
            retry_after: None,
        }
    }

    /// 400 with a reason.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "missing or unknown bearer token")
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded")
        }
    }

    /// Adds field details.
    pub fn with_details(mut self, details: BTreeMap<String, String>) -> Self {
        self.details = details;
        self
    }
}

impl From<StoreError> for ApiFailure {
    fn from(err: StoreError) -> Self {
        tracing::error!(category = err.category(), error = %err, "database failure");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "the database failed")
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let retry_after = match (self.retry_after, self.status) {
            (Some(s), _) => Some(s.max(1)),
            (None, StatusCode::TOO_MANY_REQUESTS) => Some(1),
            (None, _) => None,
        };
        let body = ApiError {
            error: code_for(self.status).to_owned(),
            message: self.message,
            details: self.details,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
