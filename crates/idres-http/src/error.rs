//! Errors of the JSON API and their one mapping to HTTP.
//!
//! Every failure is a Handle response code with a message; the HTTP status
//! follows from the code as the Handle.Net REST API maps it (rc 100 -> 404,
//! 101/201 -> 409, 102/202 -> 400, 402 -> 401, 400/401 -> 403, 302/303 ->
//! 300), and the body is `{"responseCode", "handle", "message"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use idres_store::{MutationError, StoreError};
use idres_wire::ResponseCode;
use serde_json::{json, Map, Value};

/// A refused or failed API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The Handle response code.
    pub rc: ResponseCode,
    /// The HTTP status.
    pub status: StatusCode,
    /// The handle concerned, echoed as the client spelled it.
    pub handle: Option<String>,
    /// What went wrong, in words.
    pub message: String,
}

/// The HTTP status of a Handle response code.
pub fn status_for(rc: ResponseCode) -> StatusCode {
    match rc {
        ResponseCode::SUCCESS => StatusCode::OK,
        ResponseCode::HANDLE_NOT_FOUND => StatusCode::NOT_FOUND,
        ResponseCode::HANDLE_ALREADY_EXISTS | ResponseCode::VALUE_ALREADY_EXISTS => {
            StatusCode::CONFLICT
        }
        ResponseCode::INVALID_HANDLE
        | ResponseCode::INVALID_VALUE
        | ResponseCode::VALUES_NOT_FOUND
        | ResponseCode::PROTOCOL_ERROR => StatusCode::BAD_REQUEST,
        ResponseCode::AUTHENTICATION_NEEDED
        | ResponseCode::AUTHENTICATION_FAILED
        | ResponseCode::INVALID_CREDENTIAL => StatusCode::UNAUTHORIZED,
        ResponseCode::INVALID_ADMIN | ResponseCode::INSUFFICIENT_PERMISSIONS => {
            StatusCode::FORBIDDEN
        }
        ResponseCode::SERVICE_REFERRAL | ResponseCode::PREFIX_REFERRAL => {
            StatusCode::MULTIPLE_CHOICES
        }
        ResponseCode::SERVER_TOO_BUSY => StatusCode::SERVICE_UNAVAILABLE,
        ResponseCode::OPERATION_NOT_SUPPORTED => StatusCode::METHOD_NOT_ALLOWED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// An error with response code `rc`.
    pub fn new(rc: ResponseCode, message: impl Into<String>) -> Self {
        Self {
            rc,
            status: status_for(rc),
            handle: None,
            message: message.into(),
        }
    }

    /// The same error about `handle`.
    pub fn about(mut self, handle: &str) -> Self {
        self.handle = Some(handle.to_owned());
        self
    }

    /// A malformed request (rc 4, 400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ResponseCode::PROTOCOL_ERROR, message)
    }

    /// The store failed (rc 2, 500); the details go to the log only.
    pub fn storage(e: &StoreError) -> Self {
        tracing::error!(error = %e, "store failure while serving HTTP");
        if matches!(e, StoreError::OutcomeUnknown(_) | StoreError::Busy) {
            return Self::new(ResponseCode::SERVER_TOO_BUSY, e.to_string());
        }
        if e.is_unavailable() {
            return Self::new(
                ResponseCode::SERVER_TOO_BUSY,
                "the store takes no writes now; try again later",
            );
        }
        Self::new(ResponseCode::ERROR, "storage error")
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut m = Map::new();
        m.insert("responseCode".into(), json!(self.rc.0));
        if let Some(h) = &self.handle {
            m.insert("handle".into(), json!(h));
        }
        m.insert("message".into(), json!(self.message));
        Value::Object(m)
    }
}

impl From<&MutationError> for ApiError {
    fn from(e: &MutationError) -> Self {
        Self::new(idres_service::admin::response_code(e), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = json_response(self.status, &self.body(), false);
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"idres\", charset=\"UTF-8\""),
            );
        }
        resp
    }
}

/// A JSON response, pretty-printed if asked.
pub fn json_response(status: StatusCode, body: &Value, pretty: bool) -> Response {
    let text = if pretty {
        serde_json::to_string_pretty(body)
    } else {
        serde_json::to_string(body)
    }
    .unwrap_or_else(|_| String::from("{}"));
    let mut resp = (status, text).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_follows_the_contract() {
        let cases = [
            (1, 200),
            (100, 404),
            (101, 409),
            (201, 409),
            (102, 400),
            (202, 400),
            (402, 401),
            (400, 403),
            (401, 403),
            (302, 300),
            (303, 300),
        ];
        for (rc, status) in cases {
            assert_eq!(status_for(ResponseCode(rc)).as_u16(), status, "rc {rc}");
        }
    }
}
