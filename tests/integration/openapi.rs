//! `docs/openapi.json`, the OpenAPI 3.1 document of the whole HTTP surface, against the real
//! routers, both ways: every (method, path) it documents is served, and every route a function
//! serves is documented, tagged with the function that serves it (`GET /health` with all five).
//! Also the document's own consistency: `openapi` is 3.1.0, every `$ref` resolves, operation ids
//! are unique, every path parameter is declared, and its error codes are exactly `ErrorCode`'s.
//!
//! Routes are enumerated without touching production code. axum's `Router` implements `Debug`,
//! printing its path router's `Node { paths: {RouteId(n): "/path", …} }`; a request with a method
//! no route takes (`OPTIONS`) to the *unwrapped* function router gets axum's default 405 with an
//! `Allow` header listing the path's methods (`HEAD` comes with `GET` and is left out). `/health`
//! is the runtime's ([`http::wrap`]), so it is checked on each wrapped router.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::header::ALLOW;
use axum::http::{Method, Request, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use shared::api_error::ErrorCode;
use shared::app::App;
use shared::config::Config;
use shared::crypto::new_keyring_spec;
use shared::runtime::http;
use tower::ServiceExt as _;

/// The document, as `make dev` serves it.
const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// What builds a function's routes (`shared::functions::*::router`).
type FunctionRouter = fn(Arc<App>) -> Router;

/// Each Cloud Run function: its name (the tag its operations carry) and its router.
const FUNCTIONS: [(&str, FunctionRouter); 5] = [
    ("oauth-callback", shared::functions::oauth_callback::router),
    (
        "klaviyo-webhook",
        shared::functions::klaviyo_webhook::router,
    ),
    ("omneo-webhook", shared::functions::omneo_webhook::router),
    ("inbound-task", shared::functions::inbound_task::router),
    ("outbound-task", shared::functions::outbound_task::router),
];

/// The keys of a path item that are operations.
const OPERATION_KEYS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// (lowercase method, path template) → the functions serving it (or the tags documenting it).
type Routes = BTreeMap<(String, String), BTreeSet<String>>;

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON")
}

/// An app over the memory store and the local queue; nothing is called, only routed.
async fn app() -> Arc<App> {
    let vars = HashMap::from([
        ("PUBLIC_URL", "http://127.0.0.1:9".to_owned()),
        ("KLAVIYO_CLIENT_ID", "client".to_owned()),
        ("KLAVIYO_CLIENT_SECRET", "client-secret".to_owned()),
        ("STORE", "memory".to_owned()),
        ("QUEUE", "local".to_owned()),
        (
            "ENCRYPTION_KEY",
            new_keyring_spec("test").expose_secret().to_owned(),
        ),
        ("OPERATOR_TOKEN", "operator-token-0123456789".to_owned()),
    ]);
    let config = Config::from_env(&|name: &str| vars.get(name).cloned()).expect("configuration");
    App::from_config(config).await.expect("app")
}

/// The path templates of `router`'s path router, parsed from its `Debug` output (axum 0.8:
/// `Router { path_router: PathRouter { routes: {…}, node: Node { paths: {RouteId(0): "/a", …} } },
/// fallback_router: …`). Panics, showing the output, when it is not of that form.
fn router_paths(router: &Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    let path_router = debug.split_once("fallback_router:").map_or_else(
        || unexpected("no fallback_router", &debug),
        |(head, _)| head,
    );
    let marker = "node: Node { paths: {";
    let start = path_router
        .find(marker)
        .unwrap_or_else(|| unexpected("no path router node", &debug));
    let mut rest = &path_router[start + marker.len()..];
    let mut paths = BTreeSet::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if rest.starts_with('}') {
            return paths;
        }
        let entry = rest
            .strip_prefix("RouteId(")
            .and_then(|entry| entry.split_once("): \""))
            .and_then(|(id, after_id)| Some((id, after_id.split_once('"')?)));
        match entry {
            Some((id, (path, after_path)))
                if !id.is_empty()
                    && id.bytes().all(|b| b.is_ascii_digit())
                    && !path.contains('\\') =>
            {
                paths.insert(path.to_owned());
                rest = after_path;
            }
            _ => unexpected("an entry not of the form RouteId(n): \"/path\"", &debug),
        }
    }
}

fn unexpected(what: &str, debug: &str) -> ! {
    panic!("{what} in the router's Debug output: {debug}")
}

/// A concrete URI for a path template: every `{param}` becomes `sample-{param}` (a valid tenant
/// id for `{tenant}`; the handlers never run).
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment.strip_prefix('{') {
            Some(name) => format!("sample-{}", name.trim_end_matches('}')),
            None => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The methods `router` routes on `template` (lowercase, without `HEAD`), from the `Allow` header
/// of its 405 to an `OPTIONS` request.
async fn methods_of(router: &Router, template: &str) -> BTreeSet<String> {
    let request = Request::builder()
        .method(Method::OPTIONS)
        .uri(concrete(template))
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::METHOD_NOT_ALLOWED,
        "OPTIONS {template} should be axum's 405 with Allow"
    );
    let allow = response.headers()[ALLOW].to_str().unwrap();
    allow
        .split(',')
        .map(str::trim)
        .filter(|method| !method.is_empty() && *method != "HEAD")
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Every (method, path) each function serves, with the functions serving it — `GET /health`
/// included, after checking that `wrap` adds exactly that route and that it answers.
async fn served_routes() -> Routes {
    let app = app().await;
    let mut routes = Routes::new();
    for (function, router) in FUNCTIONS {
        let routes_only = router(app.clone());
        let own = router_paths(&routes_only);
        assert!(!own.is_empty(), "{function}: no paths in {routes_only:?}");
        for path in &own {
            for method in methods_of(&routes_only, path).await {
                routes
                    .entry((method, path.clone()))
                    .or_default()
                    .insert(function.to_owned());
            }
        }

        let wrapped = http::wrap(function, router(app.clone()));
        let added: Vec<String> = router_paths(&wrapped).difference(&own).cloned().collect();
        assert_eq!(added, ["/health"], "{function}: what the runtime adds");
        let request = Request::get("/health").body(Body::empty()).unwrap();
        let response = wrapped.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{function}: GET /health");
        let body: Value =
            serde_json::from_slice(&to_bytes(response.into_body(), 1 << 16).await.unwrap())
                .unwrap();
        assert_eq!(body["function"], function, "{body}");
        routes
            .entry(("get".to_owned(), "/health".to_owned()))
            .or_default()
            .insert(function.to_owned());
    }
    routes
}

/// Every operation of the document: (lowercase method, path template) → its tags.
fn documented_routes(document: &Value) -> Routes {
    let mut routes = Routes::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in OPERATION_KEYS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let tags = operation["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            routes.insert((method.to_owned(), path.clone()), tags);
        }
    }
    routes
}

/// Every difference between what is served and what is documented, one line each.
fn differences(documented: &Routes, served: &Routes) -> Vec<String> {
    let mut problems = Vec::new();
    for ((method, path), functions) in served {
        let route = format!("{} {path}", method.to_uppercase());
        match documented.get(&(method.clone(), path.clone())) {
            None => problems.push(format!("{route}: served by {functions:?}, not documented")),
            Some(tags) if tags != functions => {
                problems.push(format!("{route}: tagged {tags:?}, served by {functions:?}"));
            }
            Some(_) => {}
        }
    }
    for ((method, path), tags) in documented {
        if !served.contains_key(&(method.clone(), path.clone())) {
            let route = format!("{} {path}", method.to_uppercase());
            problems.push(format!("{route}: documented (tagged {tags:?}), not served"));
        }
    }
    problems
}

#[tokio::test]
async fn the_document_and_the_routers_agree_both_ways() {
    let served = served_routes().await;
    let problems = differences(&documented_routes(&document()), &served);
    assert!(
        problems.is_empty(),
        "docs/openapi.json and the routers differ:\n{}",
        problems.join("\n")
    );
}

/// Routes from `(method, path, [function…])` triples.
fn routes(entries: &[(&str, &str, &[&str])]) -> Routes {
    entries
        .iter()
        .map(|(method, path, functions)| {
            (
                ((*method).to_owned(), (*path).to_owned()),
                functions.iter().map(|f| (*f).to_owned()).collect(),
            )
        })
        .collect()
}

#[test]
fn the_comparison_names_every_difference() {
    let served = routes(&[
        ("get", "/a", &["one"]),
        ("post", "/a", &["one"]),
        ("post", "/b", &["two"]),
        ("get", "/health", &["one", "two"]),
    ]);
    let sample = json!({"paths": {
        "/a": {"get": {"tags": ["one"]}, "parameters": []},
        "/c": {"put": {"tags": ["two"]}},
        "/health": {"get": {"tags": ["one"]}},
    }});
    assert_eq!(
        differences(&documented_routes(&sample), &served),
        [
            r#"GET /health: tagged {"one"}, served by {"one", "two"}"#,
            r#"POST /a: served by {"one"}, not documented"#,
            r#"POST /b: served by {"two"}, not documented"#,
            r#"PUT /c: documented (tagged {"two"}), not served"#,
        ]
    );

    // The real document, with one path taken out, against what it documents.
    let full = document();
    let everything = documented_routes(&full);
    assert!(differences(&everything, &everything).is_empty());
    let mut cut = full.clone();
    cut["paths"]
        .as_object_mut()
        .unwrap()
        .remove("/{tenant}/api/v1/backfill")
        .expect("the document has the backfill path");
    assert_eq!(
        differences(&documented_routes(&cut), &everything),
        [
            r#"DELETE /{tenant}/api/v1/backfill: served by {"oauth-callback"}, not documented"#,
            r#"GET /{tenant}/api/v1/backfill: served by {"oauth-callback"}, not documented"#,
            r#"POST /{tenant}/api/v1/backfill: served by {"oauth-callback"}, not documented"#,
        ]
    );
}

/// Follows a local `$ref` (`#/components/…`) to what it names.
fn resolve<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
    document.pointer(reference.strip_prefix('#')?)
}

/// Every `$ref` value anywhere under `value`.
fn references<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(reference)) => found.push(reference),
                    _ => references(inner, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, found)),
        _ => {}
    }
}

/// A parameter object, its `$ref` followed.
fn parameter<'a>(document: &'a Value, parameter: &'a Value) -> &'a Value {
    match parameter["$ref"].as_str() {
        Some(reference) => resolve(document, reference).unwrap_or(&Value::Null),
        None => parameter,
    }
}

#[test]
fn the_document_is_openapi_3_1_and_consistent() {
    let document = document();
    assert_eq!(document["openapi"], "3.1.0");
    let mut problems = Vec::new();

    let mut found = Vec::new();
    references(&document, &mut found);
    assert!(!found.is_empty());
    for reference in found {
        if resolve(&document, reference).is_none() {
            problems.push(format!("$ref {reference} does not resolve"));
        }
    }

    let tags: BTreeSet<&str> = document["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|tag| tag["name"].as_str())
        .collect();
    let schemes = document["components"]["securitySchemes"]
        .as_object()
        .expect("securitySchemes");
    let mut operation_ids = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        let in_template: BTreeSet<&str> = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let path_level = item["parameters"].as_array().into_iter().flatten();
        for method in OPERATION_KEYS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let route = format!("{} {path}", method.to_uppercase());
            match operation["operationId"].as_str() {
                Some(id) if operation_ids.insert(id) => {}
                Some(id) => problems.push(format!("{route}: operationId {id} is used twice")),
                None => problems.push(format!("{route}: no operationId")),
            }
            if operation["summary"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{route}: no summary"));
            }
            let operation_tags = operation["tags"].as_array().map_or(&[][..], Vec::as_slice);
            if operation_tags.is_empty() {
                problems.push(format!("{route}: no tags"));
            }
            for tag in operation_tags {
                if !tag.as_str().is_some_and(|tag| tags.contains(tag)) {
                    problems.push(format!("{route}: tag {tag} is not declared"));
                }
            }
            if operation["responses"]
                .as_object()
                .is_none_or(|r| r.is_empty())
            {
                problems.push(format!("{route}: no responses"));
            }
            for requirement in operation["security"].as_array().into_iter().flatten() {
                for scheme in requirement
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    if !schemes.contains_key(scheme) {
                        problems.push(format!("{route}: security scheme {scheme} is not declared"));
                    }
                }
            }
            let declared: Vec<&Value> = path_level
                .clone()
                .chain(operation["parameters"].as_array().into_iter().flatten())
                .map(|p| parameter(&document, p))
                .filter(|p| p["in"] == "path")
                .collect();
            for p in &declared {
                if p["required"] != true {
                    problems.push(format!(
                        "{route}: path parameter {} is not required",
                        p["name"]
                    ));
                }
            }
            let declared: BTreeSet<&str> =
                declared.iter().filter_map(|p| p["name"].as_str()).collect();
            if declared != in_template {
                problems.push(format!(
                    "{route}: path parameters declared {declared:?}, in the template {in_template:?}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every `ErrorCode`; the `match` stops compiling when a variant is added and not listed here.
fn every_error_code() -> Vec<ErrorCode> {
    use ErrorCode::*;
    let all = vec![
        InvalidField,
        InvalidJson,
        InvalidBody,
        InvalidQuery,
        UnsupportedMediaType,
        PayloadTooLarge,
        Unauthorized,
        InvalidSignature,
        NotFound,
        MethodNotAllowed,
        Conflict,
        NotInstalled,
        ReauthorizationRequired,
        ProvisioningInProgress,
        ProvisioningFailed,
        UninstallFailed,
        KlaviyoError,
        RetryLater,
        Unavailable,
        Internal,
    ];
    for code in &all {
        match code {
            InvalidField
            | InvalidJson
            | InvalidBody
            | InvalidQuery
            | UnsupportedMediaType
            | PayloadTooLarge
            | Unauthorized
            | InvalidSignature
            | NotFound
            | MethodNotAllowed
            | Conflict
            | NotInstalled
            | ReauthorizationRequired
            | ProvisioningInProgress
            | ProvisioningFailed
            | UninstallFailed
            | KlaviyoError
            | RetryLater
            | Unavailable
            | Internal => {}
        }
    }
    all
}

#[test]
fn the_error_schema_lists_exactly_the_error_codes() {
    let document = document();
    let documented: BTreeSet<&str> = document
        .pointer("/components/schemas/Error/properties/error/properties/code/enum")
        .and_then(Value::as_array)
        .expect("Error.error.code is an enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let codes: BTreeSet<&str> = every_error_code()
        .into_iter()
        .map(ErrorCode::as_str)
        .collect();
    assert_eq!(documented, codes);
}
