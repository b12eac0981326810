//! The contract in `proto/openapi.yaml` is served as is, lists every route of the server,
//! and every operation it lists exists on the server.

use std::collections::BTreeSet;

use reqwest::Method;

use crate::harness::*;

/// Every `(METHOD, path)` operation under `paths:` in the spec. Read by indentation: paths
/// are keys at two spaces, methods keys at four.
fn spec_operations(yaml: &str) -> BTreeSet<(String, String)> {
    const METHODS: [&str; 7] = ["get", "put", "post", "patch", "delete", "head", "options"];
    let mut ops = BTreeSet::new();
    let mut in_paths = false;
    let mut current: Option<String> = None;
    for line in yaml.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            in_paths = line.trim_end() == "paths:";
            current = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        let key = line
            .trim()
            .strip_suffix(':')
            .map(|k| k.trim_matches(['"', '\'']));
        match (indent, key) {
            (2, Some(path)) if path.starts_with('/') => current = Some(path.to_string()),
            (2, _) => current = None,
            (4, Some(m)) if METHODS.contains(&m) => {
                if let Some(path) = &current {
                    ops.insert((m.to_uppercase(), path.clone()));
                }
            }
            _ => {}
        }
    }
    ops
}

/// The operations the contract promises (the REST API and the operations endpoints).
const CONTRACT: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.yaml"),
    ("GET", "/v1/pools"),
    ("GET", "/v1/pools/{name}"),
    ("PUT", "/v1/pools/{name}"),
    ("PATCH", "/v1/pools/{name}"),
    ("DELETE", "/v1/pools/{name}"),
    ("GET", "/v1/pools/{name}/numbers"),
    ("POST", "/v1/pools/{name}/numbers"),
    ("PATCH", "/v1/pools/{name}/numbers/{number}"),
    ("DELETE", "/v1/pools/{name}/numbers/{number}"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/{id}"),
    ("PATCH", "/v1/sessions/{id}"),
    ("DELETE", "/v1/sessions/{id}"),
    ("POST", "/v1/route"),
    ("DELETE", "/v1/participants/{number}"),
];

/// A concrete path for a template.
fn concrete(template: &str) -> String {
    template
        .replace("{name}", "demo")
        .replace("{number}", "%2B12015550100")
        .replace("{id}", "ses_00000000000000000000000000")
}

#[tokio::test]
async fn openapi_is_served_and_matches_the_server() {
    // The sandbox's paths exist only while it is on.
    let app = TestApp::start_with(|c| c.sandbox = true).await;
    let file = std::fs::read_to_string(repo_path("proto/openapi.yaml"))
        .expect("proto/openapi.yaml exists");

    let r = app.call(Method::GET, "/openapi.yaml", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text, file,
        "/openapi.yaml must serve proto/openapi.yaml as is"
    );
    let ct = r.content_type();
    assert!(
        ct.contains("yaml") || ct.starts_with("text/"),
        "content type {ct:?}"
    );

    let spec = spec_operations(&file);
    assert!(!spec.is_empty(), "no operations found under `paths:`");

    let mut promised: BTreeSet<(String, String)> = CONTRACT
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    promised.extend(
        hush::api::ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string())),
    );
    let missing: Vec<_> = promised.difference(&spec).collect();
    assert!(
        missing.is_empty(),
        "routes served but not in proto/openapi.yaml: {missing:?}"
    );

    // Everything the spec lists exists: without a key it answers, but never 404 or 405.
    for (method, template) in &spec {
        let path = concrete(template);
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let r = app.call(m, &path, None, None).await;
        assert!(
            r.status != 404 && r.status != 405,
            "{method} {template} is in the spec but the server answers {} to {path}: {}",
            r.status,
            r.text
        );
        assert!(r.status < 500, "{method} {path}: {} {}", r.status, r.text);
    }
}

/// The response statuses each operation lists, and whether it needs an API key, read by
/// indentation like [`spec_operations`]: statuses are keys at eight spaces under the
/// operation's `responses:` at six.
fn spec_statuses(yaml: &str) -> Vec<(String, bool, BTreeSet<u16>)> {
    let mut ops = Vec::new();
    let mut path: Option<String> = None;
    let mut in_responses = false;
    for line in yaml.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let key = line.trim().trim_end_matches(':').trim_matches('"');
        match indent {
            0 => path = None,
            2 => path = key.starts_with('/').then(|| key.to_string()),
            4 if path.is_some() => {
                ops.push((
                    format!("{} {}", key.to_uppercase(), path.as_ref().unwrap()),
                    true,
                    BTreeSet::new(),
                ));
                in_responses = false;
            }
            6 if path.is_some() => {
                in_responses = key == "responses";
                if line.trim() == "security: []"
                    && let Some(op) = ops.last_mut()
                {
                    op.1 = false;
                }
            }
            8 if in_responses => {
                if let (Ok(status), Some(op)) = (key.parse(), ops.last_mut()) {
                    op.2.insert(status);
                }
            }
            _ => {}
        }
    }
    ops
}

/// Every operation lists what the server can answer before or around its handler: a request
/// it cannot read (400, 408, 413, 414, 431) and its own fault (500); one behind an API key
/// also lists 401, 403 and 503 (keys are looked up in Redis).
#[test]
fn every_operation_lists_the_statuses_any_request_can_get() {
    let file = std::fs::read_to_string(repo_path("proto/openapi.yaml"))
        .expect("proto/openapi.yaml exists");
    let ops = spec_statuses(&file);
    assert_eq!(ops.len(), spec_operations(&file).len(), "{ops:?}");
    for (op, authenticated, statuses) in &ops {
        let mut needed = vec![400, 408, 413, 414, 431, 500];
        if *authenticated {
            needed.extend([401, 403, 503]);
        }
        let missing: Vec<_> = needed.iter().filter(|s| !statuses.contains(s)).collect();
        assert!(missing.is_empty(), "{op} does not list {missing:?}");
    }
}

/// The property names of `components.schemas.<name>` in the contract.
fn schema_properties(name: &str) -> BTreeSet<String> {
    use yaml_rust2::YamlLoader;
    let file = std::fs::read_to_string(repo_path("proto/openapi.yaml")).unwrap();
    let doc = &YamlLoader::load_from_str(&file).expect("the contract is YAML")[0];
    doc["components"]["schemas"][name]["properties"]
        .as_hash()
        .unwrap_or_else(|| panic!("no properties in schema {name}"))
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

/// Every setting the contract lets a PUT give is one the server takes and shows, and every
/// field of a pool as the server shows it is in the contract's `Pool`.
#[tokio::test]
async fn the_pool_schemas_name_what_the_server_takes_and_shows() {
    let app = TestApp::start().await;
    let settable = schema_properties("PoolPolicy");
    let shown = schema_properties("Pool");
    // Every settable field, sent as null (its default): an unknown one would be refused.
    let body: serde_json::Map<String, serde_json::Value> = settable
        .iter()
        .map(|f| (f.clone(), serde_json::Value::Null))
        .collect();
    let pool = app
        .put_pool("described", serde_json::Value::Object(body))
        .await
        .expect(201);
    let keys: BTreeSet<String> = pool.as_object().unwrap().keys().cloned().collect();
    let not_shown: Vec<_> = settable.difference(&keys).collect();
    assert!(
        not_shown.is_empty(),
        "settable but not shown: {not_shown:?}"
    );
    let undocumented: Vec<_> = keys.difference(&shown).collect();
    assert!(
        undocumented.is_empty(),
        "shown but not in the contract's Pool: {undocumented:?}"
    );
}
