//! The dashboard: one page (HTML, CSS and plain JavaScript, compiled into the binary) served
//! at `/` and `/ui`. It holds no data of its own and needs no credential to load: the page
//! asks for an API key and then works only through the `/v1` API, like any other client.

use axum::{
    Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};

const INDEX: &str = include_str!("../../assets/index.html");
const SCRIPT: &str = include_str!("../../assets/app.js");
const STYLE: &str = include_str!("../../assets/app.css");

/// Only this origin's script, styles and API: the page loads nothing from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub(crate) fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change with the binary; revalidating is cheap and never serves a stale page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use tower::ServiceExt as _;

    use super::*;

    async fn get(path: &str) -> (u16, String, String) {
        let resp = routes()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let ct = resp.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_page_is_served_at_the_root_and_at_ui() {
        for path in ["/", "/ui", "/ui/"] {
            let (status, ct, body) = get(path).await;
            assert_eq!((status, ct.as_str()), (200, "text/html; charset=utf-8"), "{path}");
            assert!(body.contains("deliveries"), "{path}");
        }
        let (_, ct, js) = get("/ui/app.js").await;
        assert!(ct.starts_with("text/javascript") && js.contains("/v1/deliveries"));
        let (_, ct, _) = get("/ui/app.css").await;
        assert!(ct.starts_with("text/css"));
    }

    #[test]
    fn the_page_loads_nothing_from_another_origin() {
        for asset in [INDEX, SCRIPT, STYLE] {
            for remote in ["http://", "https://", "//cdn"] {
                let hits: Vec<&str> = asset
                    .lines()
                    .filter(|l| {
                        l.contains(remote) && (l.contains("src=") || l.contains("href=") || l.contains("@import"))
                    })
                    .collect();
                assert!(hits.is_empty(), "{hits:?}");
            }
        }
    }
}
