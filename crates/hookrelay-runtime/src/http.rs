//! The REST API's shared face: the error body `{"error":{"code","message"}}`, extractors
//! whose rejections use it, list pagination, and serving with graceful shutdown.

use std::borrow::Cow;

use axum::{
    Json, Router,
    extract::{FromRequest, FromRequestParts, Request, rejection::BytesRejection},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use hookrelay_types::{EnvelopeError, Invalid};
use serde::{Serialize, de::DeserializeOwned};

/// An API error: a status, a stable snake_case code and a human sentence. 5xx errors log
/// their cause once, here, and show a generic message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    /// Whole seconds for a `Retry-After` header (a 429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// `429 rate_limited` with `Retry-After: secs` (at least 1).
    pub fn rate_limited(message: impl Into<String>, secs: u64) -> Self {
        Self {
            retry_after: Some(secs.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// `what` is the kind of object, e.g. "endpoint".
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"))
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A server-side failure: logged with its cause, answered generically.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it has been logged",
        )
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, e.code, e.message)
    }
}

impl From<EnvelopeError> for ApiError {
    fn from(e: EnvelopeError) -> Self {
        let status = match e {
            EnvelopeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            EnvelopeError::Malformed(_) => StatusCode::BAD_REQUEST,
            EnvelopeError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(format!("database: {e}"))
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: &self.code,
                message: &self.message,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        resp
    }
}

fn body_rejection(r: BytesRejection) -> ApiError {
    if crate::server::is_body_timeout(&r) {
        return ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive in time; send it again",
        );
    }
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        )
    } else {
        ApiError::bad_request("invalid_body", format!("cannot read the request body: {r}"))
    }
}

/// The raw request body, with the API's error body on failure.
pub struct AppBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for AppBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state).await.map(Self).map_err(body_rejection)
    }
}

/// A JSON body: syntax errors are `400 invalid_json`, shape errors `422 invalid_body`, a NUL
/// character anywhere `422 invalid_data` (as at intake).
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            Bytes::from_static(b"{}")
        } else {
            bytes
        };
        // PostgreSQL cannot store a NUL character: refuse it here, clearly and where it is,
        // rather than fail the write with a 500. Only a body spelling the escape is read twice.
        if bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000"))
            && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes)
        {
            hookrelay_types::nul::refuse_nul(&value, "the body")?;
        }
        parse_json(&bytes).map(Self)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error(de)
}

fn serde_path_to_error<'de, T: DeserializeOwned>(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
) -> Result<T, ApiError> {
    match T::deserialize(&mut *de).and_then(|v| de.end().map(|()| v)) {
        Ok(v) => Ok(v),
        Err(e) if e.is_syntax() || e.is_eof() || e.is_io() => Err(ApiError::bad_request(
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )),
        Err(e) => Err(ApiError::unprocessable("invalid_body", e.to_string())),
    }
}

/// Query parameters, read by `serde_urlencoded`; anything it refuses is `400 invalid_query`.
pub struct AppQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for AppQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = checked_query(parts.uri.query().unwrap_or_default())?;
        serde_urlencoded::from_str(&query)
            .map(Self)
            .map_err(|e| ApiError::bad_request("invalid_query", format!("invalid query parameters: {e}")))
    }
}

/// The query string as `serde_urlencoded` is to read it. A malformed escape or text that is
/// not UTF-8 is refused here (`serde_urlencoded` would pass it on altered), and of a
/// parameter given more than once only the last is kept (it would refuse the repeat).
fn checked_query(query: &str) -> Result<Cow<'_, str>, ApiError> {
    let pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    let mut last = std::collections::HashMap::new();
    for (i, pair) in pairs.iter().enumerate() {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        percent_decode(value)?;
        last.insert(percent_decode(key)?, i);
    }
    if last.len() == pairs.len() {
        return Ok(Cow::Borrowed(query));
    }
    let mut kept: Vec<usize> = last.into_values().collect();
    kept.sort_unstable();
    Ok(Cow::Owned(kept.iter().map(|&i| pairs[i]).collect::<Vec<_>>().join("&")))
}

pub fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("invalid_query", "the query string is not valid percent-encoded UTF-8");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3).ok_or_else(bad)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Deserializes a number from a query string's text (`?limit=10`).
pub fn de_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s: Option<String> = serde::Deserialize::deserialize(d)?;
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}"))),
    }
}

/// `?limit=` (1-1000, default 50) and `?cursor=`.
#[derive(Debug, Clone, serde::Deserialize, Default)]
pub struct Page {
    #[serde(default, deserialize_with = "de_number")]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

impl Page {
    pub const DEFAULT_LIMIT: i64 = 50;
    pub const MAX_LIMIT: i64 = 1000;

    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(Self::DEFAULT_LIMIT),
            Some(l) if (1..=Self::MAX_LIMIT).contains(&l) => Ok(l),
            Some(l) => Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit {l} is out of range: use 1 to 1000"),
            )),
        }
    }
}

/// A page of a list: `{"data":[…],"next_cursor":…}`.
#[derive(Debug, Serialize)]
pub struct List<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// JSON 404/405 for unknown routes, so every answer has the API's shape.
pub fn with_fallbacks(router: Router) -> Router {
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
}

/// A JSON response with a status.
pub fn json<T: Serialize>(status: StatusCode, body: T) -> Response {
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("orders%2Fcreated").unwrap(), "orders/created");
        assert_eq!(percent_decode("a+b").unwrap(), "a b");
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%ff").is_err());
    }

    #[test]
    fn query_strings_are_checked_and_the_last_of_a_repeated_parameter_kept() {
        assert_eq!(checked_query("a=1&b=2").unwrap(), "a=1&b=2");
        assert_eq!(checked_query("limit=1&cursor=x&limit=2").unwrap(), "cursor=x&limit=2");
        assert_eq!(checked_query("lim%69t=1&limit=2").unwrap(), "limit=2");
        for bad in ["a=%zz", "a=%ff", "%zz=1"] {
            assert_eq!(checked_query(bad).unwrap_err().code, "invalid_query", "{bad}");
        }
        let page: Page = serde_urlencoded::from_str(&checked_query("limit=7&limit=").unwrap()).unwrap();
        assert_eq!(page.limit, None);
        let page: Page = serde_urlencoded::from_str("limit=7&cursor=a+b").unwrap();
        assert_eq!((page.limit, page.cursor.as_deref()), (Some(7), Some("a b")));
        assert!(serde_urlencoded::from_str::<Page>("limit=ten").is_err());
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(Page::default().limit().unwrap(), 50);
        assert!(
            Page {
                limit: Some(0),
                cursor: None
            }
            .limit()
            .is_err()
        );
        assert!(
            Page {
                limit: Some(-1),
                cursor: None
            }
            .limit()
            .is_err()
        );
        assert!(
            Page {
                limit: Some(1001),
                cursor: None
            }
            .limit()
            .is_err()
        );
    }

    #[test]
    fn json_syntax_and_shape_errors_differ() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct B {
            n: i32,
        }
        assert_eq!(parse_json::<B>(b"{\"n\":").unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(
            parse_json::<B>(b"{\"n\":\"x\"}").unwrap_err().status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
