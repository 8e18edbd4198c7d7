//! The Handle.Net-compatible JSON API.
//!
//! - `GET /api/handles/{handle}` with `index`, `type` (both repeatable),
//!   `auth` (accepted; this node is authoritative), `publicOnly` and
//!   `pretty`.
//! - `PUT /api/handles/{handle}` creates or replaces a record
//!   (`overwrite`, default true; `mintNewSuffix` appends a random UUID to
//!   the given handle); with `index=` parameters it adds or modifies only
//!   those values of an existing record (`index=various`: every value in
//!   the body). The body is `{"values": [...]}`, a list of values, or one
//!   value; `data` may be a bare string and numbers may be strings.
//! - `DELETE /api/handles/{handle}` deletes the handle, or with `index=`
//!   only those values.
//! - `GET /api/handles?prefix=&page=&pageSize=` lists a prefix's handles
//!   with `totalCount` (needs the list-handles bit).
//! - `GET /api/prefixes` lists the prefixes that have a prefix record.
//!
//! Replies echo `handle` exactly as requested; statuses follow
//! [`crate::error`]. Secret keys written here are stored hashed and never
//! publicly readable ([`prepare_values`]). A write is answered after the
//! store reports it durable.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use idres_auth::PermissionGuard;
use idres_model::{json, types, validate_record, Handle, HandleValue, Prefix};
use idres_store::{Committed, Mutation, MutationError, Store, WriteRequest};
use idres_wire::ResponseCode;
use rand::RngCore as _;
use serde_json::{json, Value};

use crate::auth::{self, load, Caller, Op};
use crate::error::json_response;
use crate::query::Query;
use crate::{ApiError, App, ConnInfo};

/// Handles per store read while listing.
const LIST_CHUNK: usize = 10_000;
/// Default page size of `/api/handles?prefix=`.
pub const DEFAULT_PAGE_SIZE: usize = 1000;

fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// The handle named by a path under `/api/handles/`, percent-decoded.
pub(crate) fn path_handle(uri: &Uri, base: &str) -> Result<String, ApiError> {
    let rest = uri.path().strip_prefix(base).unwrap_or_default();
    percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            ApiError::new(
                ResponseCode::INVALID_HANDLE,
                "the handle in the path is not UTF-8 once percent-decoded",
            )
        })
}

fn parse_handle(raw: &str) -> Result<Handle, ApiError> {
    Handle::parse(raw)
        .map_err(|e| ApiError::new(ResponseCode::INVALID_HANDLE, e.to_string()).about(raw))
}

/// Submits a write and waits until the store reports it durable.
pub(crate) async fn write(
    store: &Arc<dyn Store>,
    request: WriteRequest,
) -> Result<Result<Committed, MutationError>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store.submit(
        request,
        Box::new(move |outcome| {
            // The receiver waits below; if the client went away, nobody
            // needs to hear of the outcome.
            let _ = tx.send(outcome);
        }),
    );
    match rx.await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(ApiError::storage(&e)),
        Err(_) => Err(ApiError::new(ResponseCode::ERROR, "storage is shut down")),
    }
}

/// Writes `m` for `caller`: the store's writer decides the caller's
/// permission against the state it applies the write to.
async fn write_one(
    store: &Arc<dyn Store>,
    caller: &Caller,
    m: Mutation,
    raw: &str,
) -> Result<(), ApiError> {
    let op = m.name();
    let who = idres_auth::audit::who(caller);
    if let Err(e) = idres_auth::limits::check_write(&who, 1) {
        idres_auth::audit::write("http", &who, op, raw, Err(&e.to_string()));
        return Err(ApiError::new(ResponseCode::SERVER_TOO_BUSY, e.to_string()).about(raw));
    }
    let outcome = write(store, PermissionGuard::request(caller, vec![m])).await;
    match outcome {
        Ok(Ok(_)) => {
            idres_auth::audit::write("http", &who, op, raw, Ok(()));
            Ok(())
        }
        Ok(Err(e)) => {
            idres_auth::audit::write("http", &who, op, raw, Err(&e.to_string()));
            Err(ApiError::from(&e).about(raw))
        }
        Err(e) => {
            idres_auth::audit::write("http", &who, op, raw, Err(&e.message));
            Err(e)
        }
    }
}

fn conn_of(parts: &Parts) -> Option<ConnInfo> {
    parts.extensions.get::<ConnInfo>().cloned()
}

fn success(status: StatusCode, handle: &str) -> Response {
    json_response(status, &json!({"responseCode": 1, "handle": handle}), false)
}

// ---------------------------------------------------------------- GET

/// `GET /api/handles/{handle}`.
pub async fn get_handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    respond(get_inner(&app, &parts).await)
}

async fn get_inner(app: &App, parts: &Parts) -> Result<Response, ApiError> {
    let raw = path_handle(&parts.uri, "/api/handles/")?;
    let q = Query::parse(parts.uri.query());
    let pretty = q.flag("pretty")?.unwrap_or(false);
    let conn = conn_of(parts);
    let (status, body) = resolve_json(app, &raw, &q, &parts.headers, conn.as_ref()).await?;
    Ok(json_response(status, &body, pretty))
}

/// The JSON answer to a resolution of `raw`, as the API and the web page's
/// `Accept: application/json` give it.
pub(crate) async fn resolve_json(
    app: &App,
    raw: &str,
    q: &Query,
    headers: &HeaderMap,
    conn: Option<&ConnInfo>,
) -> Result<(StatusCode, Value), ApiError> {
    let handle = parse_handle(raw)?;
    let indexes = q.indexes("index")?;
    let types: Vec<&str> = q.all("type").collect();
    q.flag("auth")?;
    let public_only = q.flag("publicOnly")?;
    let caller = app
        .auth
        .authenticate(&app.store, headers, conn)
        .await
        .map_err(|e| e.about(raw))?;
    if let Some(why) = app.handler.withdrawn(&handle) {
        return Err(ApiError::new(ResponseCode::ERROR, why).about(raw));
    }
    if let Some((service, values)) = app.handler.referral(&handle) {
        let body = json!({
            "responseCode": ResponseCode::SERVICE_REFERRAL.0,
            "handle": raw,
            "message": format!("prefix {} is served by another service; see {service}", handle.prefix()),
            "referral": service,
            "values": json::values_to_json(&values),
        });
        return Ok((StatusCode::MULTIPLE_CHOICES, body));
    }
    let values = load(&app.store, handle.key())?.ok_or_else(|| {
        ApiError::new(ResponseCode::HANDLE_NOT_FOUND, "handle not found").about(raw)
    })?;
    let mut selected: Vec<&HandleValue> = values
        .iter()
        .filter(|v| {
            (indexes.is_empty() && types.is_empty())
                || indexes.contains(&v.index)
                || types.iter().any(|t| v.type_matches(t))
        })
        .collect();
    selected.sort_by_key(|v| v.index);
    let has_private = selected.iter().any(|v| !v.permissions.public_read());
    let wants_private = match (public_only, &caller) {
        (Some(p), _) => !p,
        (None, Caller::Authenticated(_)) => true,
        (None, Caller::Anonymous) => false,
    };
    let may_read_private = if wants_private && has_private {
        match auth::require(
            &app.store,
            &caller,
            &handle,
            Some(&values),
            &[Op::ReadValues],
        ) {
            Ok(()) => true,
            // Asked outright (publicOnly=false): say why not.
            Err(e) if public_only == Some(false) => return Err(e),
            Err(_) => false,
        }
    } else {
        false
    };
    let visible: Vec<HandleValue> = selected
        .into_iter()
        .filter(|v| may_read_private || v.permissions.public_read())
        .cloned()
        .collect();
    if visible.is_empty() {
        return Ok((
            StatusCode::OK,
            json!({
                "responseCode": ResponseCode::VALUES_NOT_FOUND.0,
                "handle": raw,
                "message": "no values match",
                "values": [],
            }),
        ));
    }
    Ok((
        StatusCode::OK,
        json!({"responseCode": 1, "handle": raw, "values": json::values_to_json(&visible)}),
    ))
}

// ---------------------------------------------------------------- PUT

/// Reads the body of a PUT: `{"values": [...]}`, a list, or one value.
fn parse_values(body: &[u8], now: u32) -> Result<Vec<HandleValue>, ApiError> {
    let invalid = |m: String| ApiError::new(ResponseCode::INVALID_VALUE, m);
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the request body is not JSON: {e}")))?;
    let list = match &v {
        Value::Object(o) if o.contains_key("values") => {
            o.get("values").cloned().unwrap_or(Value::Null)
        }
        Value::Array(_) => v.clone(),
        Value::Object(_) => Value::Array(vec![v.clone()]),
        _ => {
            return Err(invalid(
                "the request body must be {\"values\": [...]}, a list of values, or one value"
                    .into(),
            ))
        }
    };
    json::values_from_json(&list, now).map_err(|e| invalid(e.to_string()))
}

/// Stamps values with `now`. Secret keys need nothing here: the store's
/// writer seals every HS_SECKEY and takes away its public read, whatever
/// face writes it ([`idres_auth::secret`]).
pub fn prepare_values(values: &mut [HandleValue], now: u32) {
    for v in values {
        v.timestamp = now;
    }
}

fn is_admin(v: &HandleValue) -> bool {
    v.value_type.eq_ignore_ascii_case(types::HS_ADMIN)
}

/// A random UUID (version 4), for `mintNewSuffix`.
fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// `PUT /api/handles/{handle}`.
pub async fn put_handle(State(app): State<Arc<App>>, req: Request) -> Response {
    respond(put_inner(&app, req).await)
}

async fn put_inner(app: &App, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let conn = conn_of(&parts);
    let mut raw = path_handle(&parts.uri, "/api/handles/")?;
    let q = Query::parse(parts.uri.query());
    let overwrite = q.flag("overwrite")?.unwrap_or(true);
    let mint = q.flag("mintNewSuffix")?.unwrap_or(false);
    let various = q.all("index").any(|v| v.eq_ignore_ascii_case("various"));
    let only = if various || !q.has("index") {
        None
    } else {
        Some(q.indexes("index")?)
    };
    let caller = app
        .auth
        .authenticate(&app.store, &parts.headers, conn.as_ref())
        .await
        .map_err(|e| e.about(&raw))?;
    if caller == Caller::Anonymous {
        return Err(ApiError::new(
            ResponseCode::AUTHENTICATION_NEEDED,
            "authentication is needed to write; use Basic with user index%3Ahandle and the \
             secret key, or a client certificate",
        )
        .about(&raw));
    }
    let body = axum::body::to_bytes(axum::body::Body::new(body), app.options.max_body_bytes)
        .await
        .map_err(|_| {
            let mut e = ApiError::new(
                ResponseCode::INVALID_VALUE,
                format!(
                    "the request body is larger than {} bytes or was cut off",
                    app.options.max_body_bytes
                ),
            );
            e.status = StatusCode::PAYLOAD_TOO_LARGE;
            e.about(&raw)
        })?;
    let now = idres_service::unix_now();
    let mut values = parse_values(&body, now).map_err(|e| e.about(&raw))?;
    if mint {
        if !raw.contains('/') {
            raw.push('/');
        }
        raw.push_str(&uuid_v4());
    }
    let handle = parse_handle(&raw)?;
    prepare_values(&mut values, now);
    if mint {
        return create(app, &caller, &handle, values, &raw).await;
    }
    match only {
        None if !various => put_record(app, &caller, &handle, values, overwrite, &raw).await,
        None => put_values(app, &caller, &handle, values, overwrite, &raw).await,
        Some(wanted) => {
            let mut chosen: Vec<HandleValue> = Vec::with_capacity(wanted.len());
            for i in &wanted {
                let v = values.iter().find(|v| v.index == *i).ok_or_else(|| {
                    ApiError::new(
                        ResponseCode::INVALID_VALUE,
                        format!("parameter index={i} names no value in the request body"),
                    )
                    .about(&raw)
                })?;
                if !chosen.iter().any(|c| c.index == *i) {
                    chosen.push(v.clone());
                }
            }
            put_values(app, &caller, &handle, chosen, overwrite, &raw).await
        }
    }
}

fn check_values(values: &[HandleValue], raw: &str) -> Result<(), ApiError> {
    // Early, for a clear error; the store's writer applies the same rules
    // with the node's size limit.
    validate_record(values, idres_model::value::RECORD_BYTES_CEILING)
        .map_err(|e| ApiError::new(ResponseCode::INVALID_VALUE, e.to_string()).about(raw))
}

/// Creates a handle that must not exist yet (201).
async fn create(
    app: &App,
    caller: &Caller,
    handle: &Handle,
    values: Vec<HandleValue>,
    raw: &str,
) -> Result<Response, ApiError> {
    check_values(&values, raw)?;
    auth::require(&app.store, caller, handle, None, &[Op::Create])?;
    write_one(
        &app.store,
        caller,
        Mutation::Create {
            handle: handle.clone(),
            values,
        },
        raw,
    )
    .await?;
    Ok(success(StatusCode::CREATED, raw))
}

/// Creates or replaces a whole record.
async fn put_record(
    app: &App,
    caller: &Caller,
    handle: &Handle,
    mut values: Vec<HandleValue>,
    overwrite: bool,
    raw: &str,
) -> Result<Response, ApiError> {
    check_values(&values, raw)?;
    let Some(old) = load(&app.store, handle.key())? else {
        auth::require(&app.store, caller, handle, None, &[Op::Create])?;
        write_one(
            &app.store,
            caller,
            Mutation::Create {
                handle: handle.clone(),
                values,
            },
            raw,
        )
        .await?;
        let status = if overwrite {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        return Ok(success(status, raw));
    };
    if !overwrite {
        return Err(ApiError::new(
            ResponseCode::HANDLE_ALREADY_EXISTS,
            "handle already exists (overwrite=false)",
        )
        .about(raw));
    }
    // Replacing a record is, value by value, an addition, a change or a
    // removal; each needs its own permission bit.
    let by_index: HashMap<u32, &HandleValue> = old.iter().map(|v| (v.index, v)).collect();
    let mut ops = Vec::new();
    for v in &mut values {
        match by_index.get(&v.index) {
            None => ops.push(Op::AddValue(is_admin(v))),
            Some(o) if idres_auth::policy::same_value(o, v) => v.timestamp = o.timestamp,
            Some(o) => ops.push(Op::ModifyValue(is_admin(o) || is_admin(v))),
        }
    }
    for o in &old {
        if !values.iter().any(|v| v.index == o.index) {
            ops.push(Op::RemoveValue(is_admin(o)));
        }
    }
    ops.dedup();
    auth::require(&app.store, caller, handle, Some(&old), &ops)?;
    write_one(
        &app.store,
        caller,
        Mutation::Put {
            handle: handle.clone(),
            values,
        },
        raw,
    )
    .await?;
    Ok(success(StatusCode::OK, raw))
}

/// Adds or modifies some values of an existing record.
async fn put_values(
    app: &App,
    caller: &Caller,
    handle: &Handle,
    values: Vec<HandleValue>,
    overwrite: bool,
    raw: &str,
) -> Result<Response, ApiError> {
    check_values(&values, raw)?;
    let old = load(&app.store, handle.key())?.ok_or_else(|| {
        ApiError::new(ResponseCode::HANDLE_NOT_FOUND, "handle not found").about(raw)
    })?;
    let (mut adds, mut mods) = (Vec::new(), Vec::new());
    let mut ops = Vec::new();
    for v in values {
        match old.iter().find(|o| o.index == v.index) {
            None => {
                ops.push(Op::AddValue(is_admin(&v)));
                adds.push(v);
            }
            Some(o) => {
                if !overwrite {
                    return Err(ApiError::new(
                        ResponseCode::VALUE_ALREADY_EXISTS,
                        format!("a value with index {} exists (overwrite=false)", v.index),
                    )
                    .about(raw));
                }
                ops.push(Op::ModifyValue(is_admin(o) || is_admin(&v)));
                mods.push(v);
            }
        }
    }
    ops.dedup();
    auth::require(&app.store, caller, handle, Some(&old), &ops)?;
    let mut mutations = Vec::new();
    if !mods.is_empty() {
        mutations.push(Mutation::ModifyValues {
            handle: handle.clone(),
            values: mods,
        });
    }
    if !adds.is_empty() {
        mutations.push(Mutation::AddValues {
            handle: handle.clone(),
            values: adds,
        });
    }
    if !mutations.is_empty() {
        let request = PermissionGuard::request(caller, mutations);
        if let Err(e) = write(&app.store, request).await? {
            return Err(ApiError::from(&e).about(raw));
        }
    }
    Ok(success(StatusCode::OK, raw))
}

// ------------------------------------------------------------- DELETE

/// `DELETE /api/handles/{handle}`.
pub async fn delete_handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    respond(delete_inner(&app, &parts).await)
}

async fn delete_inner(app: &App, parts: &Parts) -> Result<Response, ApiError> {
    let raw = path_handle(&parts.uri, "/api/handles/")?;
    let q = Query::parse(parts.uri.query());
    let indexes = q.indexes("index")?;
    let conn = conn_of(parts);
    let caller = app
        .auth
        .authenticate(&app.store, &parts.headers, conn.as_ref())
        .await
        .map_err(|e| e.about(&raw))?;
    if caller == Caller::Anonymous {
        return Err(ApiError::new(
            ResponseCode::AUTHENTICATION_NEEDED,
            "authentication is needed to delete",
        )
        .about(&raw));
    }
    let handle = parse_handle(&raw)?;
    let old = load(&app.store, handle.key())?.ok_or_else(|| {
        ApiError::new(ResponseCode::HANDLE_NOT_FOUND, "handle not found").about(&raw)
    })?;
    if indexes.is_empty() {
        auth::require(&app.store, &caller, &handle, Some(&old), &[Op::Delete])?;
        write_one(&app.store, &caller, Mutation::Delete { handle }, &raw).await?;
        return Ok(success(StatusCode::OK, &raw));
    }
    let mut ops = Vec::new();
    for i in &indexes {
        let v = old.iter().find(|v| v.index == *i).ok_or_else(|| {
            ApiError::new(
                ResponseCode::VALUES_NOT_FOUND,
                format!("the handle has no value with index {i}"),
            )
            .about(&raw)
        })?;
        ops.push(Op::RemoveValue(is_admin(v)));
    }
    ops.dedup();
    auth::require(&app.store, &caller, &handle, Some(&old), &ops)?;
    let mut indexes = indexes;
    indexes.sort_unstable();
    indexes.dedup();
    write_one(
        &app.store,
        &caller,
        Mutation::RemoveValues { handle, indexes },
        &raw,
    )
    .await?;
    Ok(success(StatusCode::OK, &raw))
}

// --------------------------------------------------------------- lists

/// `GET /api/handles?prefix=&page=&pageSize=`.
pub async fn list_handles(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    respond(list_inner(&app, &parts).await)
}

async fn list_inner(app: &App, parts: &Parts) -> Result<Response, ApiError> {
    let q = Query::parse(parts.uri.query());
    let pretty = q.flag("pretty")?.unwrap_or(false);
    let raw_prefix = q
        .first("prefix")
        .ok_or_else(|| {
            ApiError::bad_request("parameter prefix is required, as in ?prefix=88.118.8")
        })?
        .to_owned();
    let prefix = Prefix::parse(&raw_prefix)
        .map_err(|e| ApiError::new(ResponseCode::INVALID_HANDLE, e.to_string()))?;
    let page = q.number("page", 0)?;
    let page_size = q.number("pageSize", DEFAULT_PAGE_SIZE)?;
    if page_size == 0 || page_size > app.options.max_page_size {
        return Err(ApiError::bad_request(format!(
            "parameter pageSize must be from 1 to {}",
            app.options.max_page_size
        )));
    }
    let skip = page
        .checked_mul(page_size)
        .ok_or_else(|| ApiError::bad_request("page is too large"))?;
    let conn = conn_of(parts);
    let caller = app
        .auth
        .authenticate(&app.store, &parts.headers, conn.as_ref())
        .await?;
    let record = prefix.record_handle();
    let own = load(&app.store, record.key())?;
    auth::require(
        &app.store,
        &caller,
        &record,
        own.as_deref(),
        &[Op::ListHandles],
    )
    .map_err(|mut e| {
        e.handle = None;
        e.message = e
            .message
            .replace(&format!(" {record}"), &format!(" prefix {prefix}"));
        e
    })?;
    let store = Arc::clone(&app.store);
    let scan = tokio::task::spawn_blocking(move || -> Result<(usize, Vec<String>), ApiError> {
        let (mut total, mut handles) = (0usize, Vec::new());
        let mut after: Option<String> = None;
        loop {
            let chunk = store
                .list(&prefix, after.as_deref(), LIST_CHUNK)
                .map_err(|e| ApiError::storage(&e))?;
            let n = chunk.len();
            for key in chunk {
                if total >= skip && handles.len() < page_size {
                    handles.push(key.clone());
                }
                total += 1;
                after = Some(key);
            }
            if n < LIST_CHUNK {
                return Ok((total, handles));
            }
        }
    })
    .await
    .map_err(|_| ApiError::new(ResponseCode::ERROR, "listing failed"))??;
    let body = json!({
        "responseCode": 1,
        "prefix": raw_prefix,
        "totalCount": scan.0,
        "page": page,
        "pageSize": page_size,
        "handles": scan.1,
    });
    Ok(json_response(StatusCode::OK, &body, pretty))
}

/// `GET /api/prefixes`: the prefixes with a prefix record at this node.
pub async fn list_prefixes(State(app): State<Arc<App>>, uri: Uri) -> Response {
    respond((|| {
        let q = Query::parse(uri.query());
        let pretty = q.flag("pretty")?.unwrap_or(false);
        let prefixes: Vec<String> = app.store.prefixes().iter().map(|p| p.to_string()).collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"responseCode": 1, "prefixes": prefixes}),
            pretty,
        ))
    })())
}

// ---------------------------------------------------------------- any scheme

/// `GET /api/resolve?id=ID`: an identifier of any scheme (handle, OID,
/// GTIN, Digital Link, EPC URN, Ecode, NIoT, configured schemes), read by
/// the node's schemes and resolved through the link index; the answer says
/// which scheme it was read as and which record and level it reached.
pub async fn resolve_any(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    respond(resolve_any_inner(&app, &parts).await)
}

async fn resolve_any_inner(app: &App, parts: &Parts) -> Result<Response, ApiError> {
    let q = Query::parse(parts.uri.query());
    let pretty = q.flag("pretty")?.unwrap_or(false);
    let id = q.first("id").ok_or_else(|| {
        ApiError::new(
            ResponseCode::INVALID_HANDLE,
            "the query parameter id is required (an identifier of any scheme)",
        )
    })?;
    let (status, body) = any_json(app, id, &q, &parts.headers, conn_of(parts).as_ref()).await?;
    Ok(json_response(status, &body, pretty))
}

/// The JSON answer for an identifier of any scheme: the record's answer
/// (as `/api/handles/` gives it) with `id`, `scheme`, `form`,
/// `canonical`, `level` and `exact`.
pub(crate) async fn any_json(
    app: &App,
    id: &str,
    q: &Query,
    headers: &HeaderMap,
    conn: Option<&ConnInfo>,
) -> Result<(StatusCode, Value), ApiError> {
    let schemes = app.handler.schemes();
    let r = schemes
        .recognise(id)
        .map_err(|e| ApiError::new(ResponseCode::INVALID_HANDLE, e.to_string()).about(id))?;
    let found = idres_service::linked::find(&**app.store(), &r)
        .map_err(|e| ApiError::storage(&e))?
        .ok_or_else(|| {
            ApiError::new(
                ResponseCode::HANDLE_NOT_FOUND,
                format!(
                    "read as {} ({}) {}: no record is linked to it or to a level above it",
                    r.scheme, r.form, r.canonical
                ),
            )
            .about(id)
        })?;
    let (status, mut body) = resolve_json(app, &found.handle, q, headers, conn).await?;
    if let Value::Object(m) = &mut body {
        m.insert("id".into(), json!(id));
        m.insert("scheme".into(), json!(r.scheme));
        m.insert("form".into(), json!(r.form));
        m.insert("canonical".into(), json!(r.canonical));
        m.insert(
            "level".into(),
            json!(found
                .level
                .as_ref()
                .map(|l| l.name.as_str())
                .unwrap_or("handle")),
        );
        m.insert("exact".into(), json!(found.exact));
        m.insert(
            "levels".into(),
            json!(r.levels.iter().map(|l| l.name.as_str()).collect::<Vec<_>>()),
        );
    }
    Ok((status, body))
}

/// `GET /api/links?id=ID` or `?prefix=KEY`: records by linked
/// identifier. `id` (any scheme) lists the records linked to that
/// identifier and to every identifier below it (every serial under a
/// GTIN+lot); `prefix` takes a link-key prefix (`gs1:01/0952123`,
/// `ecode:1000`). Pages of `limit` (default 100) continue from `cursor`.
/// Only links in public values are indexed, so the list shows nothing a
/// reader may not see; records under a withdrawn prefix are left out.
pub async fn links(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    respond(links_inner(&app, &parts))
}

fn links_inner(app: &App, parts: &Parts) -> Result<Response, ApiError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let q = Query::parse(parts.uri.query());
    let pretty = q.flag("pretty")?.unwrap_or(false);
    let limit = match q.first("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=app.options().max_search_limit).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit must be 1 to {}",
                    app.options().max_search_limit
                ))
            })?,
        None => 100,
    };
    let (prefix, exact) = match (q.first("id"), q.first("prefix")) {
        (Some(id), None) => {
            let r = app.handler.schemes().recognise(id).map_err(|e| {
                ApiError::new(ResponseCode::INVALID_HANDLE, e.to_string()).about(id)
            })?;
            let key = r.levels.first().map(|l| l.key.clone()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{id} is read as a {}, which links to nothing",
                    r.scheme
                ))
            })?;
            (format!("{key}/"), Some(key))
        }
        (None, Some(p)) => {
            if !p.contains(':') || p.len() > idres_schemes::MAX_ID_LEN {
                return Err(ApiError::bad_request(
                    "prefix is a link-key prefix with its scheme, such as gs1:01/0952123",
                ));
            }
            (p.to_owned(), None)
        }
        _ => return Err(ApiError::bad_request(
            "give exactly one of id (an identifier of any scheme) or prefix (a link-key prefix)",
        )),
    };
    let after = match q.first("cursor") {
        Some(c) => {
            let raw = b64
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::bad_request("cursor is not one this node gave"))?;
            let (l, h) = raw
                .split_once('\0')
                .ok_or_else(|| ApiError::bad_request("cursor is not one this node gave"))?;
            Some((l.to_owned(), h.to_owned()))
        }
        None => None,
    };
    let store = app.store();
    let mut items = Vec::new();
    let mut last: Option<(String, String)> = None;
    // The identifier's own key first (it sorts before the keys below it
    // only when nothing below starts with a byte under '/').
    if let (Some(key), None) = (&exact, &after) {
        for h in store.find_link(key).map_err(|e| ApiError::storage(&e))? {
            last = Some((key.clone(), h.clone()));
            items.push((key.clone(), h));
        }
    }
    let mut more = false;
    let after_ref = after.as_ref().map(|(l, h)| (l.as_str(), h.as_str()));
    let page = store
        .scan_links(&prefix, after_ref, limit + 1)
        .map_err(|e| ApiError::storage(&e))?;
    for (l, h) in page {
        if items.len() >= limit {
            more = true;
            break;
        }
        last = Some((l.clone(), h.clone()));
        items.push((l, h));
    }
    let shown: Vec<Value> = items
        .iter()
        .filter(|(_, h)| {
            Handle::parse(h)
                .ok()
                .is_none_or(|hd| app.handler.withdrawn(&hd).is_none())
        })
        .map(|(l, h)| json!({"link": l, "handle": h}))
        .collect();
    let next = match (more, last) {
        (true, Some((l, h))) => Some(b64.encode(format!("{l}\0{h}"))),
        _ => None,
    };
    let body = json!({"prefix": prefix, "items": shown, "next": next});
    Ok(json_response(StatusCode::OK, &body, pretty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_forms() {
        let one = br#"{"index":1,"type":"URL","data":"http://x"}"#;
        let list = br#"[{"index":1,"type":"URL","data":"http://x"}]"#;
        let obj = br#"{"handle":"ignored","values":[{"index":1,"type":"URL","data":"http://x"}]}"#;
        for b in [&one[..], &list[..], &obj[..]] {
            let v = parse_values(b, 7).unwrap();
            assert_eq!(v.len(), 1);
            assert_eq!(&v[0].data[..], b"http://x");
        }
        for bad in [&b"nope"[..], b"42", b"{\"values\": 3}"] {
            let e = parse_values(bad, 0).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.rc, ResponseCode::INVALID_VALUE);
        }
    }

    #[test]
    fn minted_suffixes_are_uuids() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, uuid_v4());
    }
}
