//! Reverse lookup: which handles have a value like this?
//!
//! `GET /hrls/handles?URL=*example.cn*` answers, as the reverse-lookup
//! servlets of EUDAT deployments do, with a JSON list of handles. Every
//! parameter other than the reserved ones is a criterion `TYPE=pattern`,
//! a glob where `*` stands for any run of characters, compared without
//! regard to ASCII case; several criteria must all hold. Reserved:
//!
//! - `limit` (default 1000), `page` (from 0): the page `page` of `limit`
//!   handles, so that results past the first 1000 are reached;
//! - `cursor`: continue where a previous page ended (its `X-Next-Cursor`
//!   header; also given as a `Link: rel="next"` header), which costs the
//!   same however deep the page;
//! - `retrieverecords=true`: each handle with its values instead;
//! - `prefix`: only handles under this prefix.
//!
//! The first criterion is looked up in the store's value index; each
//! candidate record is then read and checked against every criterion in
//! full (the index keeps only the first 512 bytes of a value), and only
//! values the caller may read count: public ones, and for an identity with
//! the read-value bit over the handle, the others too.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use idres_model::{json, Handle, HandleValue, Prefix};
use idres_store::{glob_match, Store};
use idres_wire::ResponseCode;
use serde_json::{json, Value};

use crate::auth::{self, load, Caller, Op};
use crate::error::json_response;
use crate::query::Query;
use crate::{ApiError, App, ConnInfo};

/// Default page length.
pub const DEFAULT_LIMIT: usize = 1000;
/// Most index entries read per store call.
const BATCH: usize = 1000;
/// Deepest offset reachable with `page`; deeper pages use `cursor`.
pub const MAX_OFFSET: usize = 1_000_000;
const RESERVED: &[&str] = &["limit", "page", "cursor", "retrieverecords", "prefix"];
/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN: usize = 512;
/// Most `*` in one pattern: each one multiplies the matcher's worst case.
pub const MAX_STARS: usize = 16;

struct Search {
    criteria: Vec<(String, String)>,
    prefix: Option<Prefix>,
    skip: usize,
    limit: usize,
    cursor: Option<String>,
}

struct Found {
    handles: Vec<(String, Vec<HandleValue>)>,
    next: Option<String>,
}

/// `GET /hrls/handles`.
pub async fn search(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    match search_inner(&app, &parts).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn search_inner(app: &Arc<App>, parts: &Parts) -> Result<Response, ApiError> {
    let q = Query::parse(parts.uri.query());
    let limit = q.number("limit", DEFAULT_LIMIT)?;
    if limit == 0 || limit > app.options.max_search_limit {
        return Err(ApiError::bad_request(format!(
            "parameter limit must be from 1 to {}",
            app.options.max_search_limit
        )));
    }
    let page = q.number("page", 0)?;
    let skip = page
        .checked_mul(limit)
        .filter(|s| *s <= MAX_OFFSET)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "page × limit may be at most {MAX_OFFSET}; follow the cursor of the previous \
                 page (X-Next-Cursor) to go further"
            ))
        })?;
    let records = q.flag("retrieverecords")?.unwrap_or(false);
    let prefix = q
        .first("prefix")
        .map(|p| {
            Prefix::parse(p).map_err(|e| ApiError::new(ResponseCode::INVALID_HANDLE, e.to_string()))
        })
        .transpose()?;
    let criteria: Vec<(String, String)> = q
        .pairs()
        .iter()
        .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
        .cloned()
        .collect();
    if criteria.is_empty() {
        return Err(ApiError::bad_request(
            "give at least one search criterion TYPE=pattern, such as URL=*example.cn*",
        ));
    }
    if let Some((t, _)) = criteria.iter().find(|(t, _)| {
        t.is_empty() || t.len() > 256 || t.bytes().any(|b| b == 0 || b.is_ascii_control())
    }) {
        return Err(ApiError::bad_request(format!("{t:?} is not a value type")));
    }
    if let Some((t, _)) = criteria
        .iter()
        .find(|(_, p)| p.len() > MAX_PATTERN || p.matches('*').count() > MAX_STARS)
    {
        return Err(ApiError::bad_request(format!(
            "the pattern for {t} is too long: at most {MAX_PATTERN} bytes and {MAX_STARS} '*'"
        )));
    }
    let caller = app
        .auth
        .authenticate(
            &app.store,
            &parts.headers,
            parts.extensions.get::<ConnInfo>(),
        )
        .await?;
    let search = Search {
        criteria,
        prefix,
        skip: if q.has("cursor") { 0 } else { skip },
        limit,
        cursor: q.first("cursor").map(str::to_owned),
    };
    let store = Arc::clone(&app.store);
    let found = tokio::task::spawn_blocking(move || run(&store, &caller, &search))
        .await
        .map_err(|_| ApiError::new(ResponseCode::ERROR, "search failed"))??;
    let body: Value = if records {
        Value::Array(
            found
                .handles
                .iter()
                .map(|(h, v)| json!({"handle": h, "values": json::values_to_json(v)}))
                .collect(),
        )
    } else {
        Value::Array(found.handles.iter().map(|(h, _)| json!(h)).collect())
    };
    let mut resp = json_response(StatusCode::OK, &body, false);
    if let Some(next) = found.next {
        let mut link = String::from("/hrls/handles?");
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in q.pairs() {
            if k != "cursor" && k != "page" {
                ser.append_pair(k, v);
            }
        }
        ser.append_pair("cursor", &next);
        link.push_str(&ser.finish());
        if let Ok(v) = HeaderValue::from_str(&format!("<{link}>; rel=\"next\"")) {
            resp.headers_mut().insert(header::LINK, v);
        }
        if let Ok(v) = HeaderValue::from_str(&next) {
            resp.headers_mut().insert("x-next-cursor", v);
        }
    }
    Ok(resp)
}

/// The values of `values` that satisfy one criterion.
fn satisfies(values: &[HandleValue], ty: &str, pattern: &str, private_ok: bool) -> bool {
    values.iter().any(|v| {
        v.value_type.eq_ignore_ascii_case(ty)
            && (private_ok || v.permissions.public_read())
            && std::str::from_utf8(&v.data).is_ok_and(|text| glob_match(pattern, text))
    })
}

fn run(store: &Arc<dyn Store>, caller: &Caller, s: &Search) -> Result<Found, ApiError> {
    let Some((first_type, first_pattern)) = s.criteria.first() else {
        return Ok(Found {
            handles: Vec::new(),
            next: None,
        });
    };
    let mut skip_left = s.skip;
    let mut out: Vec<(String, Vec<HandleValue>)> = Vec::new();
    let mut seen = HashSet::new();
    let mut cursor = s.cursor.clone();
    loop {
        // Never ask for more than are still wanted, so that the store's
        // cursor after a batch is exactly where this page ends.
        let want = if skip_left > 0 {
            skip_left
        } else {
            s.limit - out.len()
        };
        let page = store
            .find_by_value(
                first_type,
                first_pattern,
                cursor.as_deref(),
                want.min(BATCH),
            )
            .map_err(|e| ApiError::storage(&e))?;
        for key in page.handles {
            if !seen.insert(key.clone()) {
                continue;
            }
            if let Some(p) = &s.prefix {
                let under = key.split_once('/').is_some_and(|(kp, _)| kp == p.as_str());
                if !under {
                    continue;
                }
            }
            let Some(values) = load(store, &key)? else {
                continue;
            };
            let private_ok = match caller {
                Caller::Anonymous => false,
                Caller::Authenticated(_) => Handle::parse(&key).is_ok_and(|h| {
                    auth::require(store, caller, &h, Some(&values), &[Op::ReadValues]).is_ok()
                }),
            };
            if !s
                .criteria
                .iter()
                .all(|(t, p)| satisfies(&values, t, p, private_ok))
            {
                continue;
            }
            if skip_left > 0 {
                skip_left -= 1;
                continue;
            }
            let visible = values
                .into_iter()
                .filter(|v| private_ok || v.permissions.public_read())
                .collect();
            out.push((key, visible));
        }
        cursor = page.next;
        if cursor.is_none() || out.len() == s.limit {
            break;
        }
    }
    Ok(Found {
        handles: out,
        next: cursor,
    })
}
