//! The web resolver: pages for people, rendered on the server.
//!
//! - `/` shows a form; `/?handle=88.118.8/X` shows that record as a table
//!   (index, type, data, TTL, last change), with URLs, e-mail addresses
//!   and referenced handles as links. The field takes an identifier of any
//!   scheme (a GTIN, a Digital Link, a scanned element string, an Ecode…):
//!   the page says what it was read as and which record and level it
//!   reached. Pages speak Chinese or English, from `Accept-Language` or
//!   the switch on the page (`?lang=zh|en`).
//! - `/{handle}` behaves as public Handle proxies do: it redirects (302)
//!   to the record's first public URL value; `?noredirect` shows the
//!   record page instead; `Accept: application/json` (without text/html)
//!   gets the JSON of `/api/handles/{handle}`.
//!
//! Errors are explained in sentences. Pages use no script and no external
//! asset (one inline style sheet), and carry a content security policy
//! that forbids anything else.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use idres_model::json::{data_to_json, format_timestamp};
use idres_model::{types, AdminRef, Handle, HandleValue, SiteInfo, TtlType, ValueList};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::api::resolve_json;
use crate::auth::load;
use crate::error::json_response;
use crate::query::Query;
use crate::{ApiError, App, ConnInfo};

/// Characters kept as they are in a handle placed in a URL path.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'~')
    .remove(b':');

const STYLE: &str = "\
:root{--fg:#1d2433;--muted:#5b6478;--line:#d9dde6;--bg:#f6f7fa;--accent:#b3261e;--link:#1a56b0}\
*{box-sizing:border-box}\
body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI','PingFang SC','Microsoft YaHei',sans-serif;color:var(--fg);background:var(--bg)}\
header{background:#fff;border-bottom:3px solid var(--accent);padding:1rem 1.5rem}\
header h1{margin:0;font-size:1.35rem}header h1 a{color:inherit;text-decoration:none}\
header p{margin:.2rem 0 0;color:var(--muted);font-size:.9rem}\
main{max-width:70rem;margin:1.5rem auto;padding:0 1.5rem}\
form{background:#fff;border:1px solid var(--line);border-radius:8px;padding:1rem 1.25rem}\
label{display:block;font-weight:600;margin-bottom:.4rem}\
.row{display:flex;gap:.5rem}\
input{flex:1;min-width:0;font:inherit;font-family:ui-monospace,Menlo,Consolas,monospace;padding:.55rem .7rem;border:1px solid #aab1c0;border-radius:6px}\
button{font:inherit;font-weight:600;padding:.55rem 1.2rem;border:0;border-radius:6px;background:var(--accent);color:#fff;cursor:pointer}\
.hint{color:var(--muted);font-size:.85rem;margin:.5rem 0 0}\
section{margin-top:1.5rem;background:#fff;border:1px solid var(--line);border-radius:8px;padding:1rem 1.25rem}\
h2{margin:0 0 .3rem;font-size:1.2rem;font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}\
.meta{margin:0 0 1rem;color:var(--muted);font-size:.9rem}\
table{width:100%;border-collapse:collapse;font-size:.93rem}\
th,td{text-align:left;vertical-align:top;padding:.5rem .6rem;border-bottom:1px solid var(--line)}\
th{background:#eef0f5;font-weight:600;white-space:nowrap}\
td.num,td.ttl,td.time{white-space:nowrap}td.type{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.88rem}\
td.data{word-break:break-all}\
a{color:var(--link)}\
.error{border-color:#e7b3ae;background:#fdf3f2}.error h2{font-family:inherit;color:var(--accent)}\
.note{color:var(--muted)}\
footer{max-width:70rem;margin:2rem auto;padding:0 1.5rem;color:var(--muted);font-size:.85rem}\
code{font-family:ui-monospace,Menlo,Consolas,monospace}\
nav.lang{float:right;font-size:.9rem}nav.lang a,nav.lang strong{color:inherit}\
section.read{border-left:4px solid var(--link);padding-left:1rem}";

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page_link(handle: &str) -> String {
    let q: String = form_urlencoded::byte_serialize(handle.as_bytes()).collect();
    format!("/?handle={q}")
}

fn api_link(handle: &str) -> String {
    format!("/api/handles/{}", utf8_percent_encode(handle, PATH))
}

/// The language of a page: `?lang=zh|en`, else the first of Chinese or
/// English in `Accept-Language`, else English.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English.
    En,
    /// Chinese (simplified).
    Zh,
}

impl Lang {
    /// The language asked for.
    pub fn of(headers: &HeaderMap, q: &Query) -> Self {
        match q.first("lang") {
            Some("zh") | Some("zh-CN") => return Lang::Zh,
            Some("en") => return Lang::En,
            _ => {}
        }
        let accept = headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // The best-weighted of Chinese and English.
        crate::query::weighted(accept)
            .into_iter()
            .filter(|(_, q)| *q > 0.0)
            .find_map(|(tag, _)| {
                if tag == "zh" || tag.starts_with("zh-") {
                    Some(Lang::Zh)
                } else if tag == "en" || tag.starts_with("en-") {
                    Some(Lang::En)
                } else {
                    None
                }
            })
            .unwrap_or(Lang::En)
    }

    fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    /// A text in this language.
    fn t(self, en: &'static str, zh: &'static str) -> &'static str {
        match self {
            Lang::En => en,
            Lang::Zh => zh,
        }
    }
}

fn lang_switch(lang: Lang, typed: &str) -> String {
    let q: String = form_urlencoded::byte_serialize(typed.as_bytes()).collect();
    let link = |code: &str, label: &str, current: bool| {
        let href = if typed.is_empty() {
            format!("/?lang={code}")
        } else {
            format!("/?handle={q}&lang={code}")
        };
        if current {
            format!("<strong id=\"lang-{code}\" aria-current=\"true\">{label}</strong>")
        } else {
            format!(
                "<a id=\"lang-{code}\" href=\"{}\" hreflang=\"{code}\">{label}</a>",
                esc(&href)
            )
        }
    };
    format!(
        "<nav class=\"lang\" aria-label=\"Language / 语言\">{} · {}</nav>",
        link("zh", "中文", lang == Lang::Zh),
        link("en", "English", lang == Lang::En)
    )
}

/// A whole page.
fn page(lang: Lang, status: StatusCode, title: &str, typed: &str, content: &str) -> Response {
    let mut html = String::with_capacity(4096 + content.len());
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"{code}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · {site}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <header>{switch}<h1><a href=\"/?lang={short}\">idres</a> · {brand}</h1>\
         <p>{tagline}</p></header>\n\
         <main>\n<form method=\"get\" action=\"/\" role=\"search\">\
         <input type=\"hidden\" name=\"lang\" value=\"{short}\">\
         <label for=\"handle\">{label}</label>\
         <div class=\"row\"><input id=\"handle\" name=\"handle\" value=\"{typed}\" \
         placeholder=\"88.118.8/JXDY2106023\" required spellcheck=\"false\" autocomplete=\"off\" autofocus>\
         <button type=\"submit\" id=\"resolve\">{button}</button></div>\
         <p class=\"hint\">{hint}</p>\
         </form>\n{content}\n</main>\n<footer>{machine} <a href=\"/api/openapi.json\">{api}</a> · \
         <code>GET /api/resolve?id=</code> · <a href=\"/.well-known/gs1resolver\">GS1 resolver</a> · \
         <code>POST /</code> · <code>/hrls/handles</code></footer>\n\
         </body>\n</html>\n",
        code = lang.code(),
        short = if lang == Lang::Zh { "zh" } else { "en" },
        switch = lang_switch(lang, typed),
        brand = lang.t("identifier resolver", "标识解析"),
        site = lang.t("idres resolver", "idres 标识解析"),
        tagline = lang.t(
            "National top-level node of the industrial internet identifier resolution system",
            "工业互联网标识解析国家顶级节点"
        ),
        label = lang.t("Identifier", "标识"),
        button = lang.t("Resolve", "解析"),
        hint = lang.t(
            "Any scheme: a handle (88.118.8/…), an OID, a GTIN, a GS1 Digital Link or element string (a barcode reader may type it here), an EPC URN, an Ecode, a CID.",
            "任一标识体系：Handle（88.118.8/…）、OID、GTIN、GS1 数字链接或元素串（可用扫码枪直接录入）、EPC URN、Ecode、CID。"
        ),
        machine = lang.t("Machine access:", "程序接口："),
        api = lang.t("JSON API description", "JSON 接口说明"),
        title = esc(title),
        typed = esc(typed),
    );
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_LANGUAGE,
        HeaderValue::from_static(lang.code()),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Language"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn error_section(title: &str, sentences: &str) -> String {
    format!(
        "<section class=\"error\" role=\"alert\" id=\"error\"><h2>{}</h2><p>{sentences}</p></section>",
        esc(title)
    )
}

/// What a lookup for the page found.
enum Lookup {
    Invalid(idres_model::IdentifierError),
    NotFound(Handle),
    Referral(Handle, String, Vec<HandleValue>),
    Found(Handle, Vec<HandleValue>, usize),
    Failed,
}

fn lookup(app: &App, raw: &str) -> Lookup {
    let handle = match Handle::parse(raw) {
        Ok(h) => h,
        Err(e) => return Lookup::Invalid(e),
    };
    if app.handler().withdrawn(&handle).is_some() {
        return Lookup::Failed;
    }
    if let Some((service, values)) = app.handler().referral(&handle) {
        return Lookup::Referral(handle, service, values);
    }
    match load(app.store(), handle.key()) {
        Ok(None) => Lookup::NotFound(handle),
        Ok(Some(values)) => {
            let total = values.len();
            let mut public: Vec<HandleValue> = values
                .into_iter()
                .filter(|v| v.permissions.public_read())
                .collect();
            public.sort_by_key(|v| v.index);
            let hidden = total - public.len();
            Lookup::Found(handle, public, hidden)
        }
        Err(_) => Lookup::Failed,
    }
}

/// The link a URL string may safely become, if it is one.
fn safe_url(s: &str) -> Option<&str> {
    let t = s.trim();
    let lower = t.get(..8).unwrap_or(t).to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("ftp://"))
        .then_some(t)
        .filter(|t| !t.chars().any(|c| c.is_control() || c.is_whitespace()))
}

fn handle_link(h: &str) -> String {
    format!("<a href=\"{}\">{}</a>", esc(&page_link(h)), esc(h))
}

fn admin_bits(bits: u16) -> String {
    const NAMES: [&str; 12] = [
        "add handle",
        "delete handle",
        "add derived prefix",
        "delete derived prefix",
        "modify value",
        "remove value",
        "add value",
        "modify admin",
        "remove admin",
        "add admin",
        "read value",
        "list handles",
    ];
    let granted: Vec<&str> = NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    if granted.len() == NAMES.len() {
        "all permissions".into()
    } else if granted.is_empty() {
        "no permissions".into()
    } else {
        granted.join(", ")
    }
}

fn render_data(v: &HandleValue) -> String {
    let t = v.value_type.as_str();
    if t.eq_ignore_ascii_case(types::HS_ADMIN) {
        if let Ok(a) = AdminRef::decode(&v.data) {
            return format!(
                "Administrator {} (index {}): {}",
                handle_link(&a.handle),
                a.index,
                esc(&admin_bits(a.permissions.0))
            );
        }
    }
    if t.eq_ignore_ascii_case(types::HS_VLIST) {
        if let Ok(l) = ValueList::decode(&v.data) {
            let members: Vec<String> =
                l.0.iter()
                    .map(|r| format!("{}:{}", r.index, handle_link(&r.handle)))
                    .collect();
            return format!("Group of {}: {}", members.len(), members.join(", "));
        }
    }
    if t.eq_ignore_ascii_case(types::HS_SITE) || t.eq_ignore_ascii_case(types::HS_SITE_PREFIX) {
        if let Ok(site) = SiteInfo::decode(&v.data) {
            let servers: Vec<String> = site
                .servers
                .iter()
                .map(|s| {
                    let ifs: Vec<String> = s
                        .interfaces
                        .iter()
                        .map(|i| {
                            let proto = match i.protocol.0 {
                                0 => "UDP",
                                1 => "TCP",
                                2 => "HTTP",
                                3 => "HTTPS",
                                _ => "?",
                            };
                            format!("{proto} {}", i.port)
                        })
                        .collect();
                    format!("{} ({})", s.address, ifs.join(", "))
                })
                .collect();
            let role = if site.flags & 0x80 != 0 {
                "primary"
            } else {
                "mirror"
            };
            return esc(&format!(
                "Service site, {role}, serial {}: {}",
                site.serial,
                servers.join("; ")
            ));
        }
    }
    let json = data_to_json(t, &v.data);
    let text = json["value"].as_str().unwrap_or_default();
    if json["format"] != "string" {
        return format!(
            "<span class=\"note\">binary, base64:</span> <code>{}</code>",
            esc(text)
        );
    }
    if (t.eq_ignore_ascii_case(types::HS_SERV)
        || t.eq_ignore_ascii_case(types::HS_SERV_PREFIX)
        || t.eq_ignore_ascii_case(types::HS_ALIAS))
        && Handle::parse(text).is_ok()
    {
        return handle_link(text);
    }
    if t.eq_ignore_ascii_case(types::EMAIL)
        && text.contains('@')
        && !text.contains(['<', '>', '"', ' '])
    {
        return format!("<a href=\"mailto:{}\">{}</a>", esc(text), esc(text));
    }
    if let Some(url) = safe_url(text) {
        return format!(
            "<a href=\"{}\" rel=\"nofollow noopener\">{}</a>",
            esc(url),
            esc(text)
        );
    }
    esc(text)
}

fn render_ttl(v: &HandleValue) -> String {
    if v.ttl_type == TtlType::ABSOLUTE {
        return format!("until {}", format_timestamp(v.ttl));
    }
    let s = v.ttl;
    let human = if s % 86_400 == 0 && s > 0 {
        let d = s / 86_400;
        format!(" ({d} day{})", if d == 1 { "" } else { "s" })
    } else if s % 3_600 == 0 && s > 0 {
        let h = s / 3_600;
        format!(" ({h} hour{})", if h == 1 { "" } else { "s" })
    } else if s % 60 == 0 && s > 0 {
        format!(" ({} min)", s / 60)
    } else {
        String::new()
    };
    format!("{s} s{human}")
}

fn record_section(raw: &str, values: &[HandleValue], hidden: usize, lang: Lang) -> String {
    let mut s = String::with_capacity(1024 + values.len() * 256);
    let shown = match lang {
        Lang::En => format!(
            "{} value{} shown{}",
            values.len(),
            if values.len() == 1 { "" } else { "s" },
            if hidden > 0 {
                format!(", {hidden} not public")
            } else {
                String::new()
            }
        ),
        Lang::Zh => format!(
            "显示 {} 个值{}",
            values.len(),
            if hidden > 0 {
                format!("，{hidden} 个不公开")
            } else {
                String::new()
            }
        ),
    };
    let _ = write!(
        s,
        "<section class=\"record\"><h2 id=\"result\">{}</h2><p class=\"meta\">{shown} · \
         <a href=\"{}\">{}</a></p>",
        esc(raw),
        esc(&api_link(raw)),
        lang.t("as JSON", "JSON 格式"),
    );
    if values.is_empty() {
        let _ = write!(
            s,
            "<p>{}</p></section>",
            lang.t(
                "This identifier exists, but none of its values may be shown publicly.",
                "该标识存在，但没有可公开显示的值。"
            )
        );
        return s;
    }
    let _ = write!(
        s,
        "<table id=\"values\"><thead><tr><th scope=\"col\">{}</th><th scope=\"col\">{}</th>\
         <th scope=\"col\">{}</th><th scope=\"col\">TTL</th><th scope=\"col\">{}</th>\
         </tr></thead><tbody>",
        lang.t("Index", "索引"),
        lang.t("Type", "类型"),
        lang.t("Data", "数据"),
        lang.t("Last changed", "最后修改"),
    );
    for v in values {
        let _ = write!(
            s,
            "<tr><td class=\"num\">{}</td><td class=\"type\">{}</td><td class=\"data\">{}</td>\
             <td class=\"ttl\">{}</td><td class=\"time\">{}</td></tr>",
            v.index,
            esc(&v.value_type),
            render_data(v),
            esc(&render_ttl(v)),
            if v.timestamp == 0 {
                "—".to_owned()
            } else {
                esc(&format_timestamp(v.timestamp))
            },
        );
    }
    s.push_str("</tbody></table></section>");
    s
}

/// Words for a GS1 level (`01+10+21`).
fn level_words(lang: Lang, level: &str) -> String {
    level
        .split('+')
        .map(|ai| match ai {
            "01" => "GTIN".to_owned(),
            "00" => "SSCC".to_owned(),
            "414" => "GLN".to_owned(),
            "10" => lang.t("lot", "批次").to_owned(),
            "21" => lang.t("serial", "序列号").to_owned(),
            "22" => lang.t("variant", "产品变体").to_owned(),
            "254" => lang.t("GLN extension", "GLN 扩展").to_owned(),
            "handle" => "Handle".to_owned(),
            "oid" => "OID".to_owned(),
            "ecode" => "Ecode".to_owned(),
            "niot" => "NIoT".to_owned(),
            other if other.bytes().all(|b| b.is_ascii_digit()) => format!("AI ({other})"),
            other => other.to_uppercase(),
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Says how the identifier was read and where it led.
fn read_section(
    lang: Lang,
    r: &idres_schemes::Recognised,
    reached: Option<(&str, &str, bool)>,
) -> String {
    let mut s = format!(
        "<section class=\"read\" id=\"read\"><p>{} <strong id=\"scheme\">{}</strong> \
         (<span id=\"form\">{}</span>): <code id=\"canonical\">{}</code>",
        lang.t("Read as", "识别为"),
        esc(&r.scheme.to_uppercase()),
        esc(&r.form),
        esc(&r.canonical)
    );
    if let Some((handle, level, exact)) = reached {
        let _ = write!(
            s,
            ". {} <a id=\"reached\" href=\"{}\">{}</a> {} <strong id=\"level\">{}</strong>{}",
            lang.t("Reached record", "解析到记录"),
            esc(&page_link(handle)),
            esc(handle),
            lang.t("at level", "层级"),
            esc(&level_words(lang, level)),
            if exact {
                String::new()
            } else {
                lang.t(
                    " (no record of its own: the nearest level above answered)",
                    "（该标识无独立记录，由上一层级应答）",
                )
                .to_owned()
            }
        );
    }
    s.push_str(".</p></section>");
    s
}

/// The record page (or the page explaining why there is none), for an
/// identifier of any scheme.
fn record_page(app: &App, raw: &str, lang: Lang) -> Response {
    let schemes = app.handler().schemes();
    match idres_service::linked::read(schemes, raw) {
        Ok(r) if r.scheme != "handle" => linked_page(app, raw, &r, lang),
        Ok(_) => handle_page(app, raw, lang, false),
        Err(idres_schemes::SchemeError::Unknown(..)) => handle_page(app, raw, lang, true),
        Err(e) => page(
            lang,
            StatusCode::BAD_REQUEST,
            lang.t("Not an identifier", "不是有效的标识"),
            raw,
            &error_section(
                lang.t("This is not a valid identifier", "这不是有效的标识"),
                &format!("<code>{}</code>: {}", esc(raw), esc(&e.to_string())),
            ),
        ),
    }
}

/// A linked identifier's page: how it was read, and the record reached.
fn linked_page(app: &App, raw: &str, r: &idres_schemes::Recognised, lang: Lang) -> Response {
    let found = match idres_service::linked::find(&**app.store(), r) {
        Ok(f) => f,
        Err(_) => return failed_page(raw, lang),
    };
    let Some(found) = found else {
        return page(
            lang,
            StatusCode::NOT_FOUND,
            lang.t("Not found", "未找到"),
            raw,
            &format!(
                "{}{}",
                read_section(lang, r, None),
                error_section(
                    lang.t("Not found", "未找到"),
                    &format!(
                        "{} <code>{}</code>",
                        lang.t(
                            "No record at this node is linked to this identifier or to a level above it:",
                            "本节点没有与该标识或其上层级关联的记录："
                        ),
                        esc(&r.canonical)
                    ),
                )
            ),
        );
    };
    let Ok(values) = found.record.values() else {
        return failed_page(raw, lang);
    };
    let total = values.len();
    let mut public: Vec<HandleValue> = values
        .into_iter()
        .filter(|v| v.permissions.public_read())
        .collect();
    public.sort_by_key(|v| v.index);
    let level = found
        .level
        .as_ref()
        .map(|l| l.name.as_str())
        .unwrap_or("handle");
    page(
        lang,
        StatusCode::OK,
        &found.handle,
        raw,
        &format!(
            "{}{}",
            read_section(lang, r, Some((&found.handle, level, found.exact))),
            record_section(&found.handle, &public, total - public.len(), lang)
        ),
    )
}

fn failed_page(raw: &str, lang: Lang) -> Response {
    page(
        lang,
        StatusCode::INTERNAL_SERVER_ERROR,
        lang.t("Error", "错误"),
        raw,
        &error_section(
            lang.t("The node could not read its records", "节点无法读取记录"),
            lang.t(
                "Something went wrong inside this node while looking the identifier up. Please try again in a moment.",
                "节点在查询该标识时出错，请稍后重试。",
            ),
        ),
    )
}

/// A handle's page; `no_scheme` when no other scheme reads the input.
fn handle_page(app: &App, raw: &str, lang: Lang, no_scheme: bool) -> Response {
    match lookup(app, raw) {
        Lookup::Invalid(reason) => page(
            lang,
            StatusCode::BAD_REQUEST,
            lang.t("Not an identifier", "不是有效的标识"),
            raw,
            &error_section(
                lang.t("This is not a valid identifier", "这不是有效的标识"),
                &format!(
                    "<code>{}</code>: {} (at byte {}). {}{}",
                    esc(&reason.input),
                    esc(&sentence(reason.reason)),
                    reason.position,
                    lang.t(
                        "A handle looks like <code>88.118.8/JXDY2106023</code>: a prefix of dot-separated parts, a slash, and a suffix.",
                        "Handle 形如 <code>88.118.8/JXDY2106023</code>：以点分隔的前缀、斜杠和后缀。"
                    ),
                    if no_scheme {
                        lang.t(
                            " No other scheme (OID, GS1, Ecode, NIoT, CID) reads it either.",
                            " 其他标识体系（OID、GS1、Ecode、NIoT、CID）也无法识别。",
                        )
                    } else {
                        ""
                    }
                ),
            ),
        ),
        Lookup::NotFound(h) => page(
            lang,
            StatusCode::NOT_FOUND,
            lang.t("Not found", "未找到"),
            raw,
            &error_section(
                lang.t("Not found", "未找到"),
                &match lang {
                    Lang::En => format!(
                        "The identifier <code>{}</code> is not registered at this node. Check the \
                         suffix's spelling: upper and lower case differ there, though not in the \
                         prefix <code>{}</code>.",
                        esc(h.as_str()),
                        esc(h.prefix_str())
                    ),
                    Lang::Zh => format!(
                        "标识 <code>{}</code> 未在本节点注册。请检查后缀的拼写：后缀区分大小写，前缀 <code>{}</code> 不区分。",
                        esc(h.as_str()),
                        esc(h.prefix_str())
                    ),
                },
            ),
        ),
        Lookup::Referral(h, service, values) => {
            let sites: Vec<String> = values.iter().map(render_data).collect();
            page(
                lang,
                StatusCode::OK,
                h.as_str(),
                raw,
                &format!(
                    "<section class=\"record\"><h2 id=\"result\">{}</h2><p>{} <code>{}</code> \
                     {} {}:</p><ul><li>{}</li></ul></section>",
                    esc(h.as_str()),
                    lang.t("Prefix", "前缀"),
                    esc(&h.prefix().to_string()),
                    lang.t(
                        "is delegated to another node; ask that node for this identifier. It is described by",
                        "已委托给其他节点，请向该节点查询此标识。其描述为"
                    ),
                    handle_link(&service),
                    sites.join("</li><li>")
                ),
            )
        }
        Lookup::Found(h, values, hidden) => page(
            lang,
            StatusCode::OK,
            h.as_str(),
            raw,
            &record_section(raw, &values, hidden, lang),
        ),
        Lookup::Failed => failed_page(raw, lang),
    }
}

/// Turns a parse error into a sentence that starts with a capital.
fn sentence(reason: &str) -> String {
    let mut s = reason.to_owned();
    if let Some(first) = s.get(..1) {
        let up = first.to_uppercase();
        s.replace_range(..1, &up);
    }
    s
}

fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("application/json") && !accept.contains("text/html")
}

async fn json_for(app: &App, raw: &str, q: &Query, parts: &Parts) -> Response {
    let pretty = q.flag("pretty").ok().flatten().unwrap_or(false);
    // A handle answers as /api/handles/ does; another scheme as
    // /api/resolve does.
    let other_scheme = idres_service::linked::read(app.handler().schemes(), raw)
        .is_ok_and(|r| r.scheme != "handle");
    let conn = parts.extensions.get::<ConnInfo>();
    let answer = if other_scheme {
        crate::api::any_json(app, raw, q, &parts.headers, conn).await
    } else {
        resolve_json(app, raw, q, &parts.headers, conn).await
    };
    match answer {
        Ok((status, body)) => json_response(status, &body, pretty),
        Err(e) => e.into_response(),
    }
}

/// `GET /`: the form, or with `?handle=` the record of an identifier of
/// any scheme.
pub async fn home(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let q = Query::parse(parts.uri.query());
    let lang = Lang::of(&parts.headers, &q);
    let typed = q.first("handle").map(str::trim).unwrap_or("").to_owned();
    if typed.is_empty() {
        return page(
            lang,
            StatusCode::OK,
            lang.t("Resolve an identifier", "标识解析"),
            "",
            lang.t(
                "<section><h2>Resolve an identifier</h2><p>Type, paste or scan an identifier of any \
                 scheme above to see its record: a handle, an OID, a GTIN or GS1 Digital Link \
                 (with lot and serial), an EPC URN, an Ecode, a CID. Following \
                 <code>/&lt;identifier&gt;</code> takes you to its URL, as a Handle proxy does; add \
                 <code>?noredirect</code> to see the record instead.</p></section>",
                "<section><h2>标识解析</h2><p>在上方输入、粘贴或扫描任一体系的标识即可查看其记录：\
                 Handle、OID、GTIN 或 GS1 数字链接（含批次与序列号）、EPC URN、Ecode、CID。\
                 访问 <code>/&lt;标识&gt;</code> 会像 Handle 代理一样跳转到其 URL；加上 \
                 <code>?noredirect</code> 则显示记录。</p></section>",
            ),
        );
    }
    if wants_json(&parts.headers) {
        return json_for(&app, &typed, &q, &parts).await;
    }
    record_page(&app, &typed, lang)
}

/// `GET /{handle}`: redirect to the record's URL, or show the record.
pub async fn by_path(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    if crate::gs1::is_dl_path(&app, parts.uri.path()) {
        return crate::gs1::resolve(app, parts).await;
    }
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let mut e = ApiError::bad_request(format!("{} is not allowed here", parts.method));
        e.status = StatusCode::METHOD_NOT_ALLOWED;
        let mut resp = e.into_response();
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let path = parts.uri.path().trim_start_matches('/');
    let raw = match percent_encoding::percent_decode_str(path).decode_utf8() {
        Ok(s) => s.into_owned(),
        Err(_) => {
            return page(
                Lang::En,
                StatusCode::BAD_REQUEST,
                "Not an identifier",
                "",
                &error_section(
                    "This is not a valid identifier",
                    "The address holds bytes that are not UTF-8 text.",
                ),
            )
        }
    };
    let q = Query::parse(parts.uri.query());
    if wants_json(&parts.headers) {
        return json_for(&app, &raw, &q, &parts).await;
    }
    if !q.has("noredirect") {
        if let Lookup::Found(_, values, _) = lookup(&app, &raw) {
            let target = values
                .iter()
                .filter(|v| v.value_type.eq_ignore_ascii_case(types::URL))
                .filter_map(|v| std::str::from_utf8(&v.data).ok())
                .filter_map(safe_url)
                .find_map(|u| HeaderValue::from_str(u).ok());
            if let Some(location) = target {
                let mut resp = StatusCode::FOUND.into_response();
                resp.headers_mut().insert(header::LOCATION, location);
                return resp;
            }
        }
    }
    record_page(&app, &raw, Lang::of(&parts.headers, &q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_links() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(
            safe_url(" https://example.cn/a?b=1 "),
            Some("https://example.cn/a?b=1")
        );
        assert_eq!(safe_url("javascript:alert(1)"), None);
        assert_eq!(safe_url("HTTP://EXAMPLE.CN"), Some("HTTP://EXAMPLE.CN"));
        assert_eq!(safe_url("http://a b"), None);
        let v = HandleValue::new(1, "URL", "https://example.cn/<x>");
        assert_eq!(
            render_data(&v),
            "<a href=\"https://example.cn/&lt;x&gt;\" rel=\"nofollow noopener\">https://example.cn/&lt;x&gt;</a>"
        );
        let v = HandleValue::new(2, "DESC", "<script>");
        assert_eq!(render_data(&v), "&lt;script&gt;");
        assert_eq!(page_link("88.118.8/a b&c"), "/?handle=88.118.8%2Fa+b%26c");
        assert_eq!(
            api_link("88.118.8/a b#c"),
            "/api/handles/88.118.8/a%20b%23c"
        );
    }

    #[test]
    fn ttl_and_admin_words() {
        let mut v = HandleValue::new(1, "URL", "x");
        assert_eq!(render_ttl(&v), "86400 s (1 day)");
        v.ttl = 7200;
        assert_eq!(render_ttl(&v), "7200 s (2 hours)");
        v.ttl = 45;
        assert_eq!(render_ttl(&v), "45 s");
        assert_eq!(admin_bits(0x0FFF), "all permissions");
        assert_eq!(admin_bits(0x0041), "add handle, add value");
    }
}
