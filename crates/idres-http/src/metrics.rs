//! Prometheus metrics of the node, at `/metrics` (text format 0.0.4).
//!
//! HTTP requests are counted by route and status class, with the total
//! time spent per route; the Handle handler's counters (shared by UDP, TCP
//! and `POST /`) and the store's size are exported beside them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::App;

const ROUTES: [&str; 12] = [
    "api_get",
    "api_put",
    "api_delete",
    "api_list",
    "api_prefixes",
    "openapi",
    "native",
    "hrls",
    "web",
    "metrics",
    "health",
    "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Request counters.
#[derive(Debug)]
pub struct Metrics {
    counts: [[AtomicU64; 5]; 12],
    micros: [AtomicU64; 12],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            micros: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn route_of(method: &Method, path: &str) -> usize {
    let name = match path {
        "/api/handles" | "/api/handles/" => "api_list",
        "/api/prefixes" => "api_prefixes",
        "/api/openapi.json" => "openapi",
        "/hrls/handles" | "/hrls/handles/" => "hrls",
        "/metrics" => "metrics",
        "/healthz" => "health",
        "/" if method == Method::POST => "native",
        p if p.starts_with("/api/handles/") => match *method {
            Method::PUT => "api_put",
            Method::DELETE => "api_delete",
            _ => "api_get",
        },
        _ if method == Method::GET || method == Method::HEAD => "web",
        _ => "other",
    };
    ROUTES
        .iter()
        .position(|r| *r == name)
        .unwrap_or(ROUTES.len() - 1)
}

impl Metrics {
    fn record(&self, route: usize, status: u16, micros: u64) {
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        if let Some(c) = self.counts.get(route).and_then(|r| r.get(class)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(m) = self.micros.get(route) {
            m.fetch_add(micros, Ordering::Relaxed);
        }
    }

    /// Requests answered so far on `route` with a status in `class`
    /// (such as "2xx").
    pub fn count(&self, route: &str, class: &str) -> u64 {
        let r = ROUTES.iter().position(|x| *x == route);
        let c = CLASSES.iter().position(|x| *x == class);
        match (r, c) {
            (Some(r), Some(c)) => self.counts[r][c].load(Ordering::Relaxed),
            _ => 0,
        }
    }
}

/// Middleware counting every request.
pub async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = route_of(req.method(), req.uri().path());
    let started = Instant::now();
    let resp = next.run(req).await;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    app.metrics.record(route, resp.status().as_u16(), micros);
    resp
}

/// `GET /metrics`.
pub async fn export(State(app): State<Arc<App>>) -> Response {
    let mut out = String::with_capacity(4096);
    let m = &app.metrics;
    out.push_str(
        "# HELP idres_http_requests_total HTTP requests answered, by route and status class.\n",
    );
    out.push_str("# TYPE idres_http_requests_total counter\n");
    for (r, route) in ROUTES.iter().enumerate() {
        for (c, class) in CLASSES.iter().enumerate() {
            let n = m.counts[r][c].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "idres_http_requests_total{{route=\"{route}\",status=\"{class}\"}} {n}"
                );
            }
        }
    }
    out.push_str(
        "# HELP idres_http_request_seconds_total Time spent answering HTTP requests, by route.\n",
    );
    out.push_str("# TYPE idres_http_request_seconds_total counter\n");
    for (r, route) in ROUTES.iter().enumerate() {
        let us = m.micros[r].load(Ordering::Relaxed);
        if us > 0 {
            let _ = writeln!(
                out,
                "idres_http_request_seconds_total{{route=\"{route}\"}} {}",
                us as f64 / 1e6
            );
        }
    }
    let s = app.handler().stats();
    out.push_str("# HELP idres_handle_replies_total Handle protocol replies (UDP, TCP and HTTP POST), by outcome.\n");
    out.push_str("# TYPE idres_handle_replies_total counter\n");
    for (outcome, c) in [
        ("success", &s.success),
        ("not_found", &s.not_found),
        ("referral", &s.referrals),
        ("protocol_error", &s.protocol_errors),
        ("other_error", &s.other_errors),
    ] {
        let _ = writeln!(
            out,
            "idres_handle_replies_total{{outcome=\"{outcome}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    out.push_str("# HELP idres_handle_dropped_total Handle messages dropped without reply.\n");
    out.push_str("# TYPE idres_handle_dropped_total counter\n");
    let _ = writeln!(
        out,
        "idres_handle_dropped_total {}",
        s.dropped.load(Ordering::Relaxed)
    );
    out.push_str("# HELP idres_store_handles Handles stored.\n# TYPE idres_store_handles gauge\n");
    let _ = writeln!(out, "idres_store_handles {}", app.store().handle_count());
    out.push_str("# HELP idres_store_last_seq Sequence number of the latest change.\n# TYPE idres_store_last_seq gauge\n");
    let _ = writeln!(out, "idres_store_last_seq {}", app.store().last_seq());
    let mut resp = out.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
