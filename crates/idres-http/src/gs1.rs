//! The GS1-conformant resolver (GS1-Conformant Resolver standard 1.2,
//! ISO/IEC 18975) on the HTTP face: `/.well-known/gs1resolver` and
//! Digital Link paths (`/01/{gtin}/10/{lot}/21/{serial}`).
//!
//! A Digital Link path is read with the node's GS1 scheme and walked up
//! (serial, lot, GTIN) through the link index; the resolver links of each
//! level's record (values of type `GS1.LINK`) answer it:
//!
//! - `linkType=linkset`, `linkType=all` or `Accept: application/linkset+json`:
//!   an RFC 9264 linkset with one context object per level, anchored at the
//!   public base URL;
//! - otherwise the links of the type asked (or the default link) at the
//!   most specific level that has one, narrowed by `context`, then
//!   `Accept-Language` against `hreflang`, then `Accept` against the media
//!   type: one left is a 307 to it (the query string passed on unless the
//!   link says `fwqs: false`), several a 300 with their list, none a 404;
//! - a path that is not a valid Digital Link is a 400 naming the fault.
//!
//! Every answer carries CORS headers and a `Link` header to the linkset;
//! OPTIONS answers with the same headers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use idres_schemes::gs1::dl::CONVENIENCE_ALPHAS;
use idres_schemes::gs1::{key_of, Gs1Id};
use idres_schemes::resolver::{expand_link_type, ResolverLink};
use idres_schemes::GS1_LINK_TYPE;
use serde_json::{json, Map, Value};

use crate::query::Query;
use crate::App;

/// Media type of a linkset.
pub const LINKSET_TYPE: &str = "application/linkset+json";

/// Whether a request path is a Digital Link path: its first segment is a
/// GS1 primary key (or its convenience alpha, when those are taken).
pub fn is_dl_path(app: &App, path: &str) -> bool {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let gs1 = app.handler().schemes().gs1();
    if gs1
        .dictionary()
        .get(first)
        .is_some_and(|e| e.is_primary_key())
    {
        return true;
    }
    gs1.options().convenience_alphas
        && CONVENIENCE_ALPHAS.iter().any(|(alpha, ai)| {
            *alpha == first && gs1.dictionary().get(ai).is_some_and(|e| e.is_primary_key())
        })
}

/// The resolver's public base URL: `[http] public_url`, or the scheme and
/// `Host` of the request.
pub fn base_url(app: &App, headers: &HeaderMap) -> String {
    if let Some(u) = &app.options().public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn cors(h: &mut HeaderMap) {
    // The answer depends on these: caches must keep them apart.
    h.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Language"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Accept, Accept-Language, Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Link, Location, Content-Type"),
    );
}

fn json_body(status: StatusCode, content_type: &'static str, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    cors(resp.headers_mut());
    resp
}

fn problem(status: StatusCode, message: String) -> Response {
    json_body(
        status,
        "application/json",
        &json!({"status": status.as_u16(), "message": message}),
    )
}

/// `GET /.well-known/gs1resolver`: the resolver's description file.
pub async fn description(State(app): State<Arc<App>>, req: Request) -> Response {
    let base = base_url(&app, req.headers());
    let body = json!({
        "name": app.options().resolver_name,
        "resolverRoot": base,
        "supportedPrimaryKeys": ["all"],
        "supportedLinkType": [{"namespace": idres_schemes::resolver::GS1_VOC, "prefix": "gs1:"}],
        "linkTypeDefaultCanBeLinkset": false,
    });
    json_body(StatusCode::OK, "application/json", &body)
}

/// One level of a key with the record that answers it.
struct LevelLinks {
    /// The level's Digital Link path (`/01/…/10/…`).
    path: String,
    links: Vec<ResolverLink>,
}

fn level_path(id: &Gs1Id, n: usize) -> String {
    let mut p = Gs1Id {
        key: idres_schemes::gs1::element::ElementString(id.key.0[..n].to_vec()),
        attributes: Default::default(),
        form: id.form,
    }
    .dl_path();
    if p.is_empty() {
        p.push('/');
    }
    p
}

fn levels(app: &App, id: &Gs1Id) -> Result<(Vec<LevelLinks>, bool), idres_store::StoreError> {
    let store = app.store();
    let mut out = Vec::new();
    let mut any_record = false;
    for n in (1..=id.key.0.len()).rev() {
        let key = key_of(&id.key.0[..n]);
        let claims = store.find_link(&key)?;
        let Some(handle) = claims.first() else {
            continue;
        };
        let Some(record) = store.get(handle)? else {
            continue;
        };
        any_record = true;
        let Ok(values) = record.values() else {
            continue;
        };
        let links: Vec<ResolverLink> = values
            .iter()
            .filter(|v| v.value_type.eq_ignore_ascii_case(GS1_LINK_TYPE))
            .filter(|v| v.permissions.public_read())
            .filter_map(|v| ResolverLink::from_json(&v.data).ok())
            .collect();
        out.push(LevelLinks {
            path: level_path(id, n),
            links,
        });
    }
    Ok((out, any_record))
}

fn link_json(l: &ResolverLink) -> Value {
    let mut m = Map::new();
    m.insert("href".into(), json!(l.href));
    m.insert("title".into(), json!(l.title));
    if let Some(t) = &l.media_type {
        m.insert("type".into(), json!(t));
    }
    if !l.hreflang.is_empty() {
        m.insert("hreflang".into(), json!(l.hreflang));
    }
    if !l.context.is_empty() {
        m.insert("context".into(), json!(l.context));
    }
    if !l.fwqs {
        m.insert("fwqs".into(), json!(false));
    }
    Value::Object(m)
}

/// An RFC 9264 linkset: one context object per level, keys full
/// link-type URIs.
fn linkset(base: &str, levels: &[(String, Vec<&ResolverLink>)]) -> Value {
    let items: Vec<Value> = levels
        .iter()
        .map(|(path, links)| {
            let mut m = Map::new();
            m.insert("anchor".into(), json!(format!("{base}{path}")));
            for l in links {
                let mut types = vec![l.link_type.clone()];
                // A default link is also listed as the default link.
                if l.is_default() && l.link_type != idres_schemes::resolver::DEFAULT_LINK {
                    types.push(idres_schemes::resolver::DEFAULT_LINK.to_owned());
                }
                for t in types {
                    let entry = m.entry(t).or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(a) = entry {
                        a.push(link_json(l));
                    }
                }
            }
            Value::Object(m)
        })
        .collect();
    json!({ "linkset": items })
}

/// Language ranges of `Accept-Language`, best first.
fn languages(headers: &HeaderMap) -> Vec<String> {
    let raw = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    crate::query::weighted(raw)
        .into_iter()
        .filter(|(tag, q)| tag != "*" && *q > 0.0)
        .map(|(tag, _)| tag)
        .collect()
}

/// Media ranges of `Accept` with their q-values.
fn media_ranges(accept: &str) -> Vec<(String, f32)> {
    crate::query::weighted(accept)
        .into_iter()
        .filter(|(range, _)| range.contains('/'))
        .collect()
}

/// How much `Accept` wants a media type: the q of the most specific range
/// that matches it (`type/sub`, then `type/*`, then `*/*`); a link without
/// a media type is matched by `*/*` only.
fn media_q(ranges: &[(String, f32)], media: Option<&str>) -> f32 {
    let media = media.map(|m| m.split(';').next().unwrap_or(m).trim().to_ascii_lowercase());
    let mut best: Option<(u8, f32)> = None;
    for (range, q) in ranges {
        let specificity = match &media {
            Some(m) if m == range => 3,
            Some(m)
                if range.ends_with("/*")
                    && m.split('/').next() == range.split('/').next()
                    && range != "*/*" =>
            {
                2
            }
            _ if range == "*/*" => 1,
            _ => continue,
        };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, *q));
        }
    }
    best.map_or(0.0, |(_, q)| q)
}

fn lang_matches(range: &str, tag: &str) -> bool {
    let tag = tag.to_ascii_lowercase();
    tag == range || tag.split('-').next() == range.split('-').next()
}

/// The request's query string without the resolver's own parameters.
fn passed_on(query: Option<&str>) -> String {
    let Some(q) = query else {
        return String::new();
    };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|p| {
            let k = p.split('=').next().unwrap_or("");
            !p.is_empty() && k != "linkType" && k != "context"
        })
        .collect();
    kept.join("&")
}

fn with_query(href: &str, q: &str) -> String {
    if q.is_empty() {
        return href.to_owned();
    }
    let sep = if href.contains('?') { '&' } else { '?' };
    format!("{href}{sep}{q}")
}

fn link_header(resp: &mut Response, linkset_url: &str) {
    if let Ok(v) = HeaderValue::from_str(&format!(
        "<{linkset_url}>; rel=\"linkset\"; type=\"{LINKSET_TYPE}\""
    )) {
        resp.headers_mut().insert(header::LINK, v);
    }
}

/// Answers a Digital Link path.
pub async fn resolve(app: Arc<App>, parts: Parts) -> Response {
    let base = base_url(&app, &parts.headers);
    let mut path = parts.uri.path();
    // A trailing slash is tolerated.
    if path.len() > 1 {
        path = path.strip_suffix('/').unwrap_or(path);
    }
    let uri = match parts.uri.query() {
        Some(q) => format!("https://resolver{path}?{q}"),
        None => format!("https://resolver{path}"),
    };
    let gs1 = app.handler().schemes().gs1();
    let id = match gs1.parse_dl(&uri) {
        Ok(id) => id,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("{path} is not a valid GS1 Digital Link: {e}"),
            )
        }
    };
    let linkset_url = format!("{base}{}?linkType=linkset", id.dl_path());
    if parts.method == Method::OPTIONS {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        cors(resp.headers_mut());
        link_header(&mut resp, &linkset_url);
        return resp;
    }
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let mut resp = problem(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed on a Digital Link", parts.method),
        );
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        return resp;
    }
    let (levels, any_record) = match levels(&app, &id) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "store read failed");
            return problem(StatusCode::INTERNAL_SERVER_ERROR, "storage error".into());
        }
    };
    let canonical = id.link_key();
    if !any_record {
        let mut resp = problem(
            StatusCode::NOT_FOUND,
            format!("no record for {canonical} or a level above it"),
        );
        link_header(&mut resp, &linkset_url);
        return resp;
    }
    let q = Query::parse(parts.uri.query());
    let link_type = q.first("linkType");
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let wants_linkset = matches!(link_type, Some("linkset") | Some("all"))
        || (link_type.is_none() && accept.contains(LINKSET_TYPE));
    if wants_linkset {
        let all: Vec<(String, Vec<&ResolverLink>)> = levels
            .iter()
            .map(|l| (l.path.clone(), l.links.iter().collect()))
            .collect();
        let mut resp = json_body(StatusCode::OK, LINKSET_TYPE, &linkset(&base, &all));
        link_header(&mut resp, &linkset_url);
        return resp;
    }
    let wanted = link_type.map(expand_link_type);
    // The most specific level with a link of the type asked (or a
    // default link); without a type and without a default link, the
    // most specific level's links.
    let mut found: Option<(&LevelLinks, Vec<&ResolverLink>)> = None;
    for level in &levels {
        let m: Vec<&ResolverLink> = level
            .links
            .iter()
            .filter(|l| match &wanted {
                Some(t) => &l.link_type == t,
                None => l.is_default(),
            })
            .collect();
        if !m.is_empty() {
            found = Some((level, m));
            break;
        }
    }
    if found.is_none() && wanted.is_none() {
        found = levels
            .iter()
            .find(|l| !l.links.is_empty())
            .map(|l| (l, l.links.iter().collect()));
    }
    let Some((level, mut candidates)) = found else {
        let what = match &wanted {
            Some(t) => format!("no link of type {t} for {canonical} or a level above it"),
            None => format!("no links for {canonical} or a level above it"),
        };
        let mut resp = problem(StatusCode::NOT_FOUND, what);
        link_header(&mut resp, &linkset_url);
        return resp;
    };
    if let Some(c) = q.first("context") {
        let m: Vec<&ResolverLink> = candidates
            .iter()
            .copied()
            .filter(|l| l.context.iter().any(|x| x == c))
            .collect();
        if !m.is_empty() {
            candidates = m;
        }
    }
    for range in languages(&parts.headers) {
        let m: Vec<&ResolverLink> = candidates
            .iter()
            .copied()
            .filter(|l| l.hreflang.iter().any(|t| lang_matches(&range, t)))
            .collect();
        if !m.is_empty() {
            candidates = m;
            break;
        }
    }
    if candidates.len() > 1 && !accept.is_empty() {
        let ranges = media_ranges(accept);
        let q_of = |l: &&ResolverLink| media_q(&ranges, l.media_type.as_deref());
        let best = candidates.iter().map(q_of).fold(0.0f32, f32::max);
        if best > 0.0 {
            candidates.retain(|l| q_of(l) == best);
        }
    }
    if let [one] = candidates[..] {
        let target = if one.fwqs {
            with_query(&one.href, &passed_on(parts.uri.query()))
        } else {
            one.href.clone()
        };
        let Ok(location) = HeaderValue::from_str(&target) else {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the link's target is not a valid header value".into(),
            );
        };
        let mut resp = Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(header::LOCATION, location)
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        cors(resp.headers_mut());
        link_header(&mut resp, &linkset_url);
        return resp;
    }
    let body = linkset(&base, &[(level.path.clone(), candidates)]);
    let mut resp = json_body(StatusCode::MULTIPLE_CHOICES, LINKSET_TYPE, &body);
    link_header(&mut resp, &linkset_url);
    resp
}
