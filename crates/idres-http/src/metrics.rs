//! Prometheus metrics at `/metrics` (the node's one registry,
//! [`idres_metrics::Metrics`]), liveness at `/healthz` and readiness at
//! `/readyz` ([`idres_metrics::Health`]).
//!
//! HTTP requests are counted in the shared request families with face
//! `http`, the route as the operation and the status code as the result.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::App;

fn route_of(method: &Method, path: &str) -> &'static str {
    match path {
        "/api/handles" | "/api/handles/" => "api_list",
        "/api/prefixes" => "api_prefixes",
        "/api/openapi.json" => "openapi",
        "/hrls/handles" | "/hrls/handles/" => "hrls",
        "/metrics" => "metrics",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/" if method == Method::POST => "native",
        p if p.starts_with("/api/handles/") => match *method {
            Method::PUT => "api_put",
            Method::DELETE => "api_delete",
            _ => "api_get",
        },
        _ if method == Method::GET || method == Method::HEAD => "web",
        _ => "other",
    }
}

/// Middleware counting every request.
pub async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = route_of(req.method(), req.uri().path());
    let started = Instant::now();
    let resp = next.run(req).await;
    app.face.record(
        route,
        idres_metrics::status_label(resp.status().as_u16()),
        started.elapsed(),
    );
    resp
}

/// `GET /metrics`: OpenMetrics to a scraper that asks for it, else
/// Prometheus's text format 0.0.4.
pub async fn export(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let open_metrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (text, kind) = if open_metrics {
        (app.metrics.encode(), idres_metrics::CONTENT_TYPE)
    } else {
        (app.metrics.encode_text(), idres_metrics::TEXT_CONTENT_TYPE)
    };
    let mut resp = text.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    resp
}

/// `GET /healthz`: the process is alive and answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 when every readiness check passes, else 503 with
/// each failing check and why.
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let failing = app.health.failing();
    if failing.is_empty() {
        return "ready\n".into_response();
    }
    let mut body = String::from("not ready\n");
    for (name, why) in failing {
        body.push_str(&format!("{name}: {why}\n"));
    }
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}
