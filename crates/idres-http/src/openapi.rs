//! The OpenAPI 3.0 description of the HTTP face, at `/api/openapi.json`.
//!
//! Written by hand next to the handlers it describes; the Python tests run
//! schemathesis against it, so a status, parameter or body shape that the
//! server and this document disagree on fails a test.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use crate::error::json_response;
use crate::App;

/// Prefixes as the description promises them: short alphanumeric
/// segments. [`Prefix::parse`](idres_model::Prefix::parse) accepts more
/// (any non-space character, longer parts); the narrower pattern keeps
/// generated test data mostly valid.
const PREFIX_PATTERN: &str = r"^[0-9A-Za-z]{1,8}(\.[0-9A-Za-z]{1,8}){0,4}$";
/// Suffixes without a slash or control characters. The server also takes
/// suffixes with slashes (`/api/handles/88.118.8/a/b` is the handle
/// `88.118.8/a/b`), which a path template cannot describe.
const SUFFIX_PATTERN: &str = r"^[^/\x00-\x1F\x7F-\x9F]{1,64}$";

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn schemas() -> Value {
    json!({
        "Data": {
            "type": "object",
            "required": ["format", "value"],
            "properties": {
                "format": {"type": "string", "enum": ["string", "base64", "hex", "admin", "vlist"]},
                "value": {}
            }
        },
        "Value": {
            "type": "object",
            "required": ["index", "type", "data", "ttl", "timestamp"],
            "properties": {
                "index": {"type": "integer", "minimum": 1, "maximum": 2147483647},
                "type": {"type": "string"},
                "data": {"$ref": "#/components/schemas/Data"},
                "ttlType": {"type": "integer", "enum": [0, 1]},
                "ttl": {"type": "integer", "minimum": 0},
                "timestamp": {"type": "string", "format": "date-time"},
                "permissions": {"type": "string", "pattern": "^[01]{4}$"},
                "references": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["handle", "index"],
                        "properties": {"handle": {"type": "string"}, "index": {"type": "integer"}}
                    }
                }
            }
        },
        "ValueInput": {
            "type": "object",
            "required": ["index", "type"],
            "properties": {
                "index": {"oneOf": [
                    {"type": "integer", "minimum": 1, "maximum": 2147483647},
                    {"type": "string", "pattern": "^[1-9][0-9]{0,9}$"}
                ]},
                "type": {"type": "string", "minLength": 1, "maxLength": 256},
                "data": {"oneOf": [{"type": "string"}, {"$ref": "#/components/schemas/Data"}]},
                "ttl": {"type": "integer", "minimum": 0, "maximum": 4294967295u64},
                "permissions": {"type": "string", "pattern": "^[01]{4}$"}
            }
        },
        "Record": {
            "type": "object",
            "required": ["responseCode", "handle", "values"],
            "properties": {
                "responseCode": {"type": "integer", "enum": [1, 200]},
                "handle": {"type": "string"},
                "message": {"type": "string"},
                "values": {"type": "array", "items": {"$ref": "#/components/schemas/Value"}}
            }
        },
        "Referral": {
            "type": "object",
            "required": ["responseCode", "handle", "referral", "values"],
            "properties": {
                "responseCode": {"type": "integer", "enum": [302]},
                "handle": {"type": "string"},
                "message": {"type": "string"},
                "referral": {"type": "string"},
                "values": {"type": "array", "items": {"$ref": "#/components/schemas/Value"}}
            }
        },
        "Success": {
            "type": "object",
            "required": ["responseCode", "handle"],
            "properties": {
                "responseCode": {"type": "integer", "enum": [1]},
                "handle": {"type": "string"}
            }
        },
        "Error": {
            "type": "object",
            "required": ["responseCode", "message"],
            "properties": {
                "responseCode": {"type": "integer"},
                "handle": {"type": "string"},
                "message": {"type": "string"}
            }
        },
        "HandleList": {
            "type": "object",
            "required": ["responseCode", "prefix", "totalCount", "page", "pageSize", "handles"],
            "properties": {
                "responseCode": {"type": "integer", "enum": [1]},
                "prefix": {"type": "string"},
                "totalCount": {"type": "integer", "minimum": 0},
                "page": {"type": "integer", "minimum": 0},
                "pageSize": {"type": "integer", "minimum": 1},
                "handles": {"type": "array", "items": {"type": "string"}}
            }
        },
        "PrefixList": {
            "type": "object",
            "required": ["responseCode", "prefixes"],
            "properties": {
                "responseCode": {"type": "integer", "enum": [1]},
                "prefixes": {"type": "array", "items": {"type": "string"}}
            }
        }
    })
}

fn handle_params() -> [Value; 2] {
    [
        json!({
            "name": "prefix", "in": "path", "required": true,
            "description": "The handle's prefix, such as 88.118.8 (not case-sensitive).",
            "schema": {"type": "string", "pattern": PREFIX_PATTERN}
        }),
        json!({
            "name": "suffix", "in": "path", "required": true,
            "description": "The handle's suffix (case-sensitive). Suffixes containing '/' are accepted too.",
            "schema": {"type": "string", "pattern": SUFFIX_PATTERN}
        }),
    ]
}

fn flag(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description,
           "schema": {"type": "boolean"}})
}

fn index_param(description: &str) -> Value {
    json!({"name": "index", "in": "query", "required": false, "description": description,
           "style": "form", "explode": true,
           "schema": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 2147483647}}})
}

fn handle_paths() -> Value {
    json!({
        "get": {
            "summary": "Resolve a handle",
            "operationId": "getHandle",
            "parameters": [
                handle_params()[0], handle_params()[1],
                index_param("Only the value at this index (repeatable)."),
                {"name": "type", "in": "query", "required": false, "style": "form", "explode": true,
                 "description": "Only values of this type (repeatable); a type ending in '.' takes its sub-types.",
                 "schema": {"type": "array", "items": {"type": "string"}}},
                flag("auth", "Authoritative resolution; this node always is."),
                flag("publicOnly", "Only public values (default for anonymous callers); false asks for all and needs the read-value permission."),
                flag("pretty", "Indent the JSON.")
            ],
            "responses": {
                "200": {"description": "The record (responseCode 1), or responseCode 200 when no value matches.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Record"}}}},
                "300": {"description": "The prefix is homed at another service (responseCode 302).",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Referral"}}}},
                "400": error_response("Invalid handle (102) or parameter (4)."),
                "401": error_response("Wrong credentials, or publicOnly=false without credentials."),
                "403": error_response("publicOnly=false without the read-value permission."),
                "404": error_response("Handle not found (100)."),
                "500": error_response("Storage failure.")
            }
        },
        "put": {
            "summary": "Create or replace a handle, or add or modify some of its values",
            "operationId": "putHandle",
            "security": [{"basic": []}],
            "parameters": [
                handle_params()[0], handle_params()[1],
                {"name": "index", "in": "query", "required": false, "style": "form", "explode": true,
                 "description": "Add or modify only the body's values at these indexes ('various': every value in the body).",
                 "schema": {"type": "array", "items": {"oneOf": [
                     {"type": "integer", "minimum": 1, "maximum": 2147483647},
                     {"type": "string", "enum": ["various"]}]}}},
                flag("overwrite", "Replace an existing record or value (default true)."),
                flag("mintNewSuffix", "Append a random UUID to the handle and create it.")
            ],
            "requestBody": {
                "required": true,
                "content": {"application/json": {"schema": {"oneOf": [
                    {"type": "object", "required": ["values"], "properties": {
                        "values": {"type": "array", "items": {"$ref": "#/components/schemas/ValueInput"}}}},
                    {"type": "array", "items": {"$ref": "#/components/schemas/ValueInput"}},
                    {"$ref": "#/components/schemas/ValueInput"}
                ]}}}
            },
            "responses": {
                "200": {"description": "Replaced, modified, or created with overwrite=true.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Success"}}}},
                "201": {"description": "Created with overwrite=false or mintNewSuffix=true; handle is the one created.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Success"}}}},
                "400": error_response("Invalid handle (102), values (202) or parameters (4)."),
                "401": error_response("No credentials (402) or wrong credentials (403, 404)."),
                "403": error_response("The identity lacks the permission (401)."),
                "404": error_response("Handle not found (100) when adding values."),
                "409": error_response("Handle (101) or value (201) exists and overwrite=false."),
                "413": error_response("Body too large."),
                "500": error_response("Storage failure.")
            }
        },
        "delete": {
            "summary": "Delete a handle, or some of its values",
            "operationId": "deleteHandle",
            "security": [{"basic": []}],
            "parameters": [handle_params()[0], handle_params()[1],
                           index_param("Delete only the value at this index (repeatable).")],
            "responses": {
                "200": {"description": "Deleted.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Success"}}}},
                "400": error_response("Invalid handle (102), parameter (4), or no value at an index (200)."),
                "401": error_response("No credentials (402) or wrong credentials (403, 404)."),
                "403": error_response("The identity lacks the permission (401)."),
                "404": error_response("Handle not found (100)."),
                "500": error_response("Storage failure.")
            }
        }
    })
}

fn other_paths() -> Value {
    json!({
        "/api/handles": {"get": {
            "summary": "List the handles of a prefix",
            "operationId": "listHandles",
            "security": [{"basic": []}],
            "parameters": [
                {"name": "prefix", "in": "query", "required": true,
                 "schema": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": PREFIX_PATTERN}},
                {"name": "page", "in": "query", "required": false, "description": "Page number, from 0.",
                 "schema": {"type": "integer", "minimum": 0}},
                {"name": "pageSize", "in": "query", "required": false,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000}},
                flag("pretty", "Indent the JSON.")
            ],
            "responses": {
                "200": {"description": "One page of handles and the prefix's total.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HandleList"}}}},
                "400": error_response("Missing or invalid parameter."),
                "401": error_response("No or wrong credentials."),
                "403": error_response("The identity lacks the list-handles permission."),
                "500": error_response("Storage failure.")
            }
        }},
        "/api/resolve": {"get": {
            "summary": "Resolve an identifier of any scheme",
            "description": "A handle, an OID, a GTIN or SSCC, a GS1 Digital Link URI or element string, an EPC URN, an Ecode, an NIoT code or a configured scheme (CID). The answer is the record's, as /api/handles/ gives it, with id, scheme, form, canonical, level, exact and levels. A GS1 key with qualifiers and no record of its own walks up (serial, lot, GTIN).",
            "operationId": "resolveAny",
            "parameters": [
                {"name": "id", "in": "query", "required": true,
                 "schema": {"type": "string", "minLength": 1, "maxLength": 2048}},
                {"name": "type", "in": "query", "required": false, "schema": {"type": "string"}},
                flag("pretty", "Indent the JSON.")
            ],
            "responses": {
                "200": {"description": "The record reached, and how the identifier was read.",
                        "content": {"application/json": {"schema": {"type": "object",
                            "required": ["responseCode", "handle", "id", "scheme", "canonical", "level", "exact"]}}}},
                "400": error_response("The identifier is refused by its scheme, or by every scheme."),
                "401": error_response("Wrong credentials."),
                "403": error_response("The identity may not read the values asked for."),
                "404": error_response("Nothing is linked to the identifier or a level above it."),
                "500": error_response("Storage failure.")
            }
        }},
        "/api/links": {"get": {
            "summary": "Records by linked identifier (prefix)",
            "operationId": "listLinks",
            "parameters": [
                {"name": "id", "in": "query", "required": false,
                 "description": "An identifier of any scheme: its records and those of every identifier below it.",
                 "schema": {"type": "string", "maxLength": 2048}},
                {"name": "prefix", "in": "query", "required": false,
                 "description": "A link-key prefix with its scheme, such as gs1:01/0952.",
                 "schema": {"type": "string", "maxLength": 2048}},
                {"name": "limit", "in": "query", "required": false,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}},
                {"name": "cursor", "in": "query", "required": false, "schema": {"type": "string"}},
                flag("pretty", "Indent the JSON.")
            ],
            "responses": {
                "200": {"description": "One page of (link, handle) pairs and the next page's cursor.",
                        "content": {"application/json": {"schema": {"type": "object",
                            "required": ["prefix", "items", "next"],
                            "properties": {"items": {"type": "array", "items": {"type": "object",
                                "required": ["link", "handle"],
                                "properties": {"link": {"type": "string"}, "handle": {"type": "string"}}}}}}}}},
                "400": error_response("Neither or both of id and prefix, a bad identifier, limit or cursor."),
                "500": error_response("Storage failure.")
            }
        }},
        "/api/prefixes": {"get": {
            "summary": "The prefixes that have a prefix record at this node",
            "operationId": "listPrefixes",
            "parameters": [flag("pretty", "Indent the JSON.")],
            "responses": {
                "200": {"description": "The prefixes.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PrefixList"}}}},
                "400": error_response("Invalid parameter.")
            }
        }},
        "/hrls/handles": {"get": {
            "summary": "Reverse lookup: handles with a value matching a pattern",
            "description": "Every parameter not listed here is a criterion TYPE=pattern ('*' matches any run, ASCII case ignored); all must hold. Deep pages: follow X-Next-Cursor.",
            "operationId": "searchHandles",
            "parameters": [
                {"name": "URL", "in": "query", "required": true,
                 "description": "Glob over URL values, such as *example.cn*: at most 512 bytes and 16 '*'.",
                 "schema": {"type": "string", "maxLength": 512}},
                {"name": "limit", "in": "query", "required": false,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000}},
                {"name": "page", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0}},
                {"name": "cursor", "in": "query", "required": false, "schema": {"type": "string"}},
                {"name": "prefix", "in": "query", "required": false, "schema": {"type": "string"}},
                flag("retrieverecords", "Return each handle with its values.")
            ],
            "responses": {
                "200": {"description": "Matching handles, or records with retrieverecords=true.",
                        "content": {"application/json": {"schema": {"anyOf": [
                            {"type": "array", "items": {"type": "string"}},
                            {"type": "array", "items": {"type": "object", "required": ["handle", "values"],
                                "properties": {"handle": {"type": "string"},
                                    "values": {"type": "array", "items": {"$ref": "#/components/schemas/Value"}}}}}
                        ]}}}},
                "400": error_response("No criterion, or an invalid parameter."),
                "401": error_response("Wrong credentials."),
                "500": error_response("Storage failure.")
            }
        }},
        "/": {
            "get": {
                "summary": "The web resolver page",
                "operationId": "webHome",
                "parameters": [{"name": "handle", "in": "query", "required": false, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "The form, or the record as a table.", "content": {"text/html": {"schema": {"type": "string"}}}},
                    "400": {"description": "Not an identifier, explained.", "content": {"text/html": {"schema": {"type": "string"}}}},
                    "404": {"description": "Not registered, explained.", "content": {"text/html": {"schema": {"type": "string"}}}},
                    "500": {"description": "Storage failure, explained.", "content": {"text/html": {"schema": {"type": "string"}}}}
                }
            },
            "post": {
                "summary": "A native Handle message (envelope and message, RFC 3652)",
                "operationId": "nativeMessage",
                "requestBody": {"required": true, "content": {"application/x-hdl-message": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {
                    "200": {"description": "The Handle reply.", "content": {"application/x-hdl-message": {"schema": {"type": "string", "format": "binary"}}}},
                    "400": error_response("The envelope or header could not be read."),
                    "413": error_response("Message too large."),
                    "415": error_response("Wrong Content-Type.")
                }
            }
        },
        "/api/openapi.json": {"get": {
            "summary": "This document",
            "operationId": "openapi",
            "responses": {"200": {"description": "OpenAPI 3.0", "content": {"application/json": {"schema": {"type": "object"}}}}}
        }}
    })
}

/// The document.
pub fn spec() -> Value {
    let mut paths = other_paths();
    if let Some(p) = paths.as_object_mut() {
        p.insert("/api/handles/{prefix}/{suffix}".into(), handle_paths());
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "idres HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Handle.Net-compatible JSON API of an idres top-level node: resolution, registration, reverse lookup and native Handle messages."
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic",
                          "description": "User index%3Ahandle (e.g. 300%3A88.118.8%2FADMIN), password the HS_SECKEY. Over TLS with a client CA configured, a client certificate whose CN or UID is index:handle authenticates too."}
            }
        }
    })
}

/// `GET /api/openapi.json`.
pub async fn document(State(_app): State<Arc<App>>) -> Response {
    static DOC: OnceLock<Value> = OnceLock::new();
    json_response(StatusCode::OK, DOC.get_or_init(spec), false)
}
