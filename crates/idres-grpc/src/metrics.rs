//! Request metrics of the gRPC face: a tower layer that counts every call
//! in the node's request families (face `grpc`), by method and gRPC status,
//! with its duration (for a stream, until its end).
//!
//! The status is read from the response headers (an error answered at
//! once) or from the trailers at the end of the body; a body dropped
//! before its end counts as `CANCELLED`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};
use idres_metrics::FaceMetrics;

/// Adds request metrics to a service.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    face: FaceMetrics,
}

impl MetricsLayer {
    /// Counts into `face`.
    pub fn new(face: FaceMetrics) -> Self {
        Self { face }
    }
}

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            face: self.face.clone(),
        }
    }
}

/// The service [`MetricsLayer`] makes.
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    face: FaceMetrics,
}

/// Most distinct method names kept as labels; later ones count as `other`.
const MAX_METHODS: usize = 128;

/// The method of a request path as a label: the idres, health and
/// reflection services' methods by name, anything else as `other`.
fn method_label(path: &str) -> &'static str {
    static SEEN: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let plausible = path.len() <= 96
        && ["/idres.v1.", "/grpc.health.v1.", "/grpc.reflection."]
            .iter()
            .any(|p| path.starts_with(p))
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/' || b == b'_');
    if !plausible {
        return "other";
    }
    let Ok(mut seen) = SEEN.get_or_init(|| Mutex::new(HashSet::new())).lock() else {
        return "other";
    };
    if let Some(s) = seen.get(path) {
        return s;
    }
    if seen.len() >= MAX_METHODS {
        return "other";
    }
    let s: &'static str = Box::leak(path.to_owned().into_boxed_str());
    seen.insert(s);
    s
}

fn status_label(code: &[u8]) -> &'static str {
    match code {
        b"0" => "OK",
        b"1" => "CANCELLED",
        b"2" => "UNKNOWN",
        b"3" => "INVALID_ARGUMENT",
        b"4" => "DEADLINE_EXCEEDED",
        b"5" => "NOT_FOUND",
        b"6" => "ALREADY_EXISTS",
        b"7" => "PERMISSION_DENIED",
        b"8" => "RESOURCE_EXHAUSTED",
        b"9" => "FAILED_PRECONDITION",
        b"10" => "ABORTED",
        b"11" => "OUT_OF_RANGE",
        b"12" => "UNIMPLEMENTED",
        b"13" => "INTERNAL",
        b"14" => "UNAVAILABLE",
        b"15" => "DATA_LOSS",
        b"16" => "UNAUTHENTICATED",
        _ => "OTHER",
    }
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for MetricsService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let op = method_label(req.uri().path());
        let started = Instant::now();
        let face = self.face.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let (parts, body) = resp.into_parts();
            let code = parts
                .headers
                .get("grpc-status")
                .map(|v| status_label(v.as_bytes()));
            let mut metered = MeteredBody {
                inner: Box::pin(body),
                face,
                op,
                started,
                done: false,
            };
            if let Some(code) = code {
                metered.finish(code);
            }
            Ok(http::Response::from_parts(parts, metered))
        })
    }
}

/// A response body that records its call when its status is known.
pub struct MeteredBody<B> {
    inner: Pin<Box<B>>,
    face: FaceMetrics,
    op: &'static str,
    started: Instant,
    done: bool,
}

impl<B> std::fmt::Debug for MeteredBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredBody").field("op", &self.op).finish()
    }
}

impl<B> MeteredBody<B> {
    fn finish(&mut self, code: &'static str) {
        if !self.done {
            self.done = true;
            self.face.record(self.op, code, self.started.elapsed());
        }
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        self.finish("CANCELLED");
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame
                    .trailers_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .map(|v| status_label(v.as_bytes()))
                {
                    this.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish("UNKNOWN"),
            Poll::Ready(None) => this.finish("OK"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            method_label("/idres.v1.RegistryService/Register"),
            "/idres.v1.RegistryService/Register"
        );
        assert_eq!(method_label("/evil/../x"), "other");
        assert_eq!(
            method_label(&format!("/idres.v1.{}", "a".repeat(200))),
            "other"
        );
        for i in 0..(MAX_METHODS + 10) {
            let _ = method_label(&format!("/idres.v1.X/M{i}"));
        }
        assert_eq!(method_label("/idres.v1.X/Fresh"), "other");
        assert_eq!(status_label(b"14"), "UNAVAILABLE");
    }
}
