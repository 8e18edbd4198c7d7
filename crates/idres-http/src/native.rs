//! Native Handle messages over HTTP (RFC 3652 §2.3.3, port 8000 of a
//! Handle.Net server): `POST /` with `Content-Type:
//! application/x-hdl-message` and the envelope and message as the body.
//! The reply is whatever the node's [`Handler`](idres_service::Handler)
//! answers over UDP or TCP, byte for byte.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use idres_service::{Handler, Outcome, Peer, Transport};
use idres_wire::{ResponseCode, ENVELOPE_LEN, MAX_MESSAGE_LEN};
use std::net::{Ipv4Addr, SocketAddr};

use crate::{ApiError, App};

/// The media type of native messages.
pub const MEDIA_TYPE: &str = "application/x-hdl-message";

/// `POST /`.
pub async fn post(State(app): State<Arc<App>>, req: Request) -> Response {
    let media = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    if !media.eq_ignore_ascii_case(MEDIA_TYPE) {
        let mut e = ApiError::bad_request(format!(
            "POST / takes Handle messages with Content-Type {MEDIA_TYPE}, not {media:?}"
        ));
        e.status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return e.into_response();
    }
    let peer = req
        .extensions()
        .get::<crate::ConnInfo>()
        .map_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), |c| c.peer);
    let body = match axum::body::to_bytes(req.into_body(), ENVELOPE_LEN + MAX_MESSAGE_LEN).await {
        Ok(b) => b,
        Err(_) => {
            let mut e = ApiError::bad_request(format!(
                "a Handle message is at most {} bytes with its envelope",
                ENVELOPE_LEN + MAX_MESSAGE_LEN
            ));
            e.status = StatusCode::PAYLOAD_TOO_LARGE;
            return e.into_response();
        }
    };
    let blocking = Handler::may_block(&body);
    let handler = Arc::clone(app.handler());
    let run = move || {
        let mut out = BytesMut::new();
        let mut state = Peer::new(peer, Transport::Http);
        let outcome = handler.handle_from(&body, idres_service::unix_now(), &mut state, &mut out);
        (outcome, out)
    };
    let (outcome, out) = if blocking {
        match tokio::task::spawn_blocking(run).await {
            Ok(r) => r,
            Err(_) => {
                return ApiError::new(ResponseCode::ERROR, "the request could not be handled")
                    .into_response()
            }
        }
    } else {
        run()
    };
    match outcome {
        Outcome::Reply => {
            let mut resp = (StatusCode::OK, out.freeze()).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
            resp
        }
        Outcome::Drop => ApiError::new(
            ResponseCode::PROTOCOL_ERROR,
            "the message's envelope or header could not be read, or it is itself a response",
        )
        .into_response(),
    }
}
