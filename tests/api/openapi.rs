//! The OpenAPI document (`GET /openapi.json`) and Swagger UI (`GET /docs`) of the running app:
//! every route of the router is documented (a route added without a `#[utoipa::path]` fails
//! here), the admin routes carry the `ADMIN_TOKEN` bearer scheme, errors are `ErrorBody`, and the
//! documented schemas match what the routes really answer, examples included.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually, spawn_app, spawn_app_with};

const TOKEN: &str = "test-admin-token";

/// Every (method, path) of the router in `src/http/mod.rs`, the documentation routes aside.
/// `router_routes()` checks this list against the router's source, so it cannot lag behind.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/orders"),
    ("get", "/orders/{id}"),
    ("get", "/orders/metrics"),
    ("get", "/inventory/products"),
    ("put", "/inventory/products/{sku}"),
    ("get", "/inventory/products/{sku}"),
    ("post", "/payments/webhook"),
    ("get", "/metrics"),
    ("get", "/health"),
    ("get", "/health/ready"),
    ("get", "/actors"),
    ("get", "/cluster"),
    ("get", "/actors/stuck"),
    ("get", "/actors/orders/{id}"),
    ("get", "/actors/inventory/{sku}"),
    ("post", "/actors/orders/{id}/retry"),
    ("post", "/actors/orders/{id}/cancel"),
    ("post", "/actors/orders/{id}/pause"),
    ("post", "/actors/orders/{id}/resume"),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

type Route = (String, String);

fn expected_routes() -> BTreeSet<Route> {
    ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect()
}

/// The (method, path) pairs registered with `.route(...)` in `src/http/mod.rs`, read from its
/// source: the path is the call's first string literal, the methods are the method-router calls
/// (`get(`, `post(`, ...) inside it.
fn router_routes() -> BTreeSet<Route> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/mod.rs");
    let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    assert!(
        !source.contains(".nest(") && !source.contains(".route_service("),
        "src/http/mod.rs nests routers or services: teach router_routes() to read them"
    );
    let mut routes = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = source[from..].find(".route(") {
        let open = from + found + ".route(".len();
        let mut depth = 1;
        let len = source[open..]
            .char_indices()
            .find_map(|(i, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(i)
            })
            .expect("unbalanced .route( call in src/http/mod.rs");
        let call = &source[open..open + len];
        from = open + len;
        let path = call
            .split('"')
            .nth(1)
            .unwrap_or_else(|| panic!("no path literal in .route({call})"));
        let mut found = false;
        for method in METHODS {
            let needle = format!("{method}(");
            let is_call = call.match_indices(&needle).any(|(i, _)| {
                !call[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            });
            if is_call {
                routes.insert(((*method).to_owned(), path.to_owned()));
                found = true;
            }
        }
        assert!(found, "no method router found in .route({call})");
    }
    routes
}

fn documented_routes(spec: &Value) -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            if item.get(*method).is_some() {
                routes.insert(((*method).to_owned(), path.clone()));
            }
        }
    }
    routes
}

async fn fetch_spec(app: &TestApp) -> Value {
    let response = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200, "GET /openapi.json");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type}"
    );
    response.json().await.expect("/openapi.json is not JSON")
}

fn error_body_ref() -> Value {
    json!({"$ref": "#/components/schemas/ErrorBody"})
}

#[tokio::test]
async fn every_route_of_the_router_is_documented_and_served() {
    let app = spawn_app().await;
    let spec = fetch_spec(&app).await;

    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "not OpenAPI 3: {}",
        spec["openapi"]
    );
    assert_eq!(spec["info"]["title"], "ordersaga");
    assert!(
        spec["info"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );

    // The fixed list is the router, and the document is the fixed list.
    let expected = expected_routes();
    let in_router = router_routes();
    assert_eq!(
        in_router
            .symmetric_difference(&expected)
            .collect::<Vec<_>>(),
        Vec::<&Route>::new(),
        "ROUTES differs from the router in src/http/mod.rs"
    );
    let documented = documented_routes(&spec);
    assert_eq!(
        expected.difference(&documented).collect::<Vec<_>>(),
        Vec::<&Route>::new(),
        "routes without documentation (add #[utoipa::path] and list the handler in src/http/openapi.rs)"
    );
    assert_eq!(
        documented.difference(&expected).collect::<Vec<_>>(),
        Vec::<&Route>::new(),
        "documented routes that the router does not have"
    );

    // The error shape and the admin scheme.
    let schemas = &spec["components"]["schemas"];
    assert_eq!(
        schemas["ErrorBody"]["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    let required: BTreeSet<&str> = schemas["ErrorDetail"]["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, BTreeSet::from(["code", "message", "field"]));
    let scheme = &spec["components"]["securitySchemes"]["ADMIN_TOKEN"];
    assert_eq!(
        (scheme["type"].as_str(), scheme["scheme"].as_str()),
        (Some("http"), Some("bearer")),
        "{scheme}"
    );

    let mut operation_ids = BTreeSet::new();
    for (method, path) in &expected {
        let operation = &spec["paths"][path][method];
        assert!(
            operation_ids.insert(operation["operationId"].as_str().unwrap_or_default()),
            "{method} {path}: operationId {} is not unique",
            operation["operationId"]
        );
        let what = format!("{} {path}", method.to_uppercase());
        let responses = operation["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{what}: no responses"));
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{what}: no success response"
        );
        for (status, response) in responses {
            let schema = &response["content"]["application/json"]["schema"];
            let is_error = status.starts_with('4') || status.starts_with('5');
            if is_error && !schema.is_null() && path != "/health/ready" {
                assert_eq!(
                    schema,
                    &error_body_ref(),
                    "{what} {status}: errors are ErrorBody"
                );
            }
        }
        let admin = path.starts_with("/actors") || path == "/cluster";
        if admin {
            assert_eq!(
                operation["security"],
                json!([{"ADMIN_TOKEN": []}]),
                "{what}: needs the admin scheme"
            );
            assert!(responses.contains_key("401"), "{what}: documents 401");
        } else {
            assert!(
                operation.get("security").is_none(),
                "{what}: has no security"
            );
        }

        // The route exists in the running app: neither the fallback nor 405.
        let url = format!(
            "{}{}",
            app.base,
            path.replace("{id}", &uuid::Uuid::new_v4().to_string())
                .replace("{sku}", "NO-SUCH-SKU")
        );
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = app
            .http
            .request(method, &url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{what}: method not allowed: {body}");
        assert_ne!(
            body["error"]["message"], "no such route",
            "{what} is documented but not routed"
        );
    }
}

#[tokio::test]
async fn swagger_ui_is_served_at_docs() {
    let app = spawn_app().await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects
        .get(format!("{}/docs", app.base))
        .send()
        .await
        .expect("GET /docs");
    assert!(response.status().is_redirection(), "{}", response.status());
    assert_eq!(
        response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some("/docs/")
    );

    let response = app
        .http
        .get(format!("{}/docs", app.base))
        .send()
        .await
        .expect("GET /docs (followed)");
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/html")),
        "{:?}",
        response.headers()
    );
    let html = response.text().await.unwrap_or_default();
    assert!(html.to_lowercase().contains("swagger"), "{html}");

    // The UI loads this app's document.
    let (status, initializer) = get_text(&app, "/docs/swagger-initializer.js").await;
    assert_eq!(status, 200);
    assert!(initializer.contains("/openapi.json"), "{initializer}");
}

async fn get_text(app: &TestApp, path: &str) -> (u16, String) {
    let response = app
        .http
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Checks `value` against `schema` as utoipa writes them: `$ref`, `oneOf`/`anyOf`/`allOf`,
/// `type` (one or several), `enum`, `properties` (no undocumented key, every required one
/// present), `additionalProperties`, `items`.
fn conforms(spec: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .ok_or_else(|| format!("{at}: unexpected $ref {reference}"))?;
        let target = &spec["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: dangling $ref {reference}"));
        }
        return conforms(spec, target, value, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let failures: Vec<String> = options
                .iter()
                .filter_map(|o| conforms(spec, o, value, at).err())
                .collect();
            if failures.len() == options.len() {
                return Err(format!("{at}: matches no {key}: {failures:?}"));
            }
        }
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        conforms(spec, part, value, at)?;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| match *t {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "string" => value.is_string(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => true,
        });
        if !ok {
            return Err(format!("{at}: {value} is not of type {types:?}"));
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Some(object) = value.as_object() {
        if let Some(properties) = schema["properties"].as_object() {
            for (key, item) in object {
                let property = properties
                    .get(key)
                    .ok_or_else(|| format!("{at}: key `{key}` is not documented"))?;
                conforms(spec, property, item, &format!("{at}.{key}"))?;
            }
            for key in schema["required"].as_array().into_iter().flatten() {
                let key = key.as_str().unwrap_or_default();
                if !object.contains_key(key) {
                    return Err(format!("{at}: required key `{key}` is missing"));
                }
            }
        }
        if schema["additionalProperties"].is_object() {
            for (key, item) in object {
                conforms(
                    spec,
                    &schema["additionalProperties"],
                    item,
                    &format!("{at}.{key}"),
                )?;
            }
        }
    }
    if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            conforms(spec, schema, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Asserts that a real answer matches the schema documented for its route and status.
fn assert_documented(spec: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let response = &spec["paths"][path][method]["responses"][status.to_string()];
    assert!(
        !response.is_null(),
        "{} {path} answered {status}, which is not documented: {body}",
        method.to_uppercase()
    );
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} {status}: no JSON schema"
    );
    if let Err(e) = conforms(spec, schema, body, "$") {
        panic!(
            "{} {path} {status} does not match its documentation: {e}\n{body:#}",
            method.to_uppercase()
        );
    }
}

struct Call<'a> {
    app: &'a TestApp,
    spec: &'a Value,
}

impl Call<'_> {
    /// Sends the request, checks the answer against the spec and returns it.
    async fn check(
        &self,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let http_method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut request = self
            .app
            .http
            .request(http_method, format!("{}{path}", self.app.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let json: Value = response.json().await.unwrap_or(Value::Null);
        assert_documented(self.spec, method, template, status, &json);
        (status, json)
    }
}

#[tokio::test]
async fn documented_schemas_and_examples_match_what_the_routes_answer() {
    let app = spawn_app_with(|s| s.admin_token = Some(TOKEN.into())).await;
    let spec = fetch_spec(&app).await;
    let call = Call {
        app: &app,
        spec: &spec,
    };
    let schemas = &spec["components"]["schemas"];

    // Every example in the document matches its own schema.
    for (name, schema) in schemas.as_object().into_iter().flatten() {
        if let Some(example) = schema.get("example")
            && let Err(e) = conforms(&spec, schema, example, name)
        {
            panic!("the example of {name} does not match it: {e}");
        }
    }

    // The request examples are accepted as they are.
    let product = schemas["ProductBody"]["example"].clone();
    let (status, _) = call
        .check(
            "put",
            "/inventory/products/{sku}",
            "/inventory/products/MUG-LOGO",
            None,
            Some(&product),
        )
        .await;
    assert_eq!(status, 200);
    let mut order = schemas["PlaceOrderBody"]["example"].clone();
    order["payment_method"] = json!("pm_fake_no_webhook");
    let (status, placed) = call
        .check("post", "/orders", "/orders", None, Some(&order))
        .await;
    assert_eq!(status, 202, "{placed}");
    let order_id = placed["order_id"].as_str().unwrap_or_default().to_owned();

    // A live order waiting for its payment: payment, timer and reservation are all filled in.
    let path = format!("/orders/{order_id}");
    eventually(Duration::from_secs(15), "the payment to start", || async {
        let (_, order) = app.get_json(&path).await;
        (order["status"] == "PAYMENT_PROCESSING").then_some(())
    })
    .await;
    let (status, _) = call.check("get", "/orders/{id}", &path, None, None).await;
    assert_eq!(status, 200);
    for (template, path) in [
        ("/inventory/products", "/inventory/products?limit=1"),
        ("/inventory/products/{sku}", "/inventory/products/MUG-LOGO"),
        ("/orders/metrics", "/orders/metrics"),
        ("/health", "/health"),
        ("/health/ready", "/health/ready"),
    ] {
        call.check("get", template, path, None, None).await;
    }
    for (template, path) in [
        ("/actors", "/actors".to_owned()),
        ("/cluster", "/cluster".to_owned()),
        ("/actors/stuck", "/actors/stuck".to_owned()),
        ("/actors/orders/{id}", format!("/actors/orders/{order_id}")),
        (
            "/actors/inventory/{sku}",
            "/actors/inventory/MUG-LOGO".to_owned(),
        ),
    ] {
        let (status, body) = call.check("get", template, &path, Some(TOKEN), None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let action = schemas["OperatorAction"]["example"].clone();
    let (status, body) = call
        .check(
            "post",
            "/actors/orders/{id}/cancel",
            &format!("/actors/orders/{order_id}/cancel"),
            Some(TOKEN),
            Some(&action),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Errors are documented where they happen.
    let (status, _) = call
        .check(
            "get",
            "/orders/{id}",
            &format!("/orders/{}", uuid::Uuid::new_v4()),
            None,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = call.check("get", "/actors", "/actors", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = call
        .check(
            "post",
            "/orders",
            "/orders",
            None,
            Some(&json!({"items": 1})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = call
        .check(
            "post",
            "/payments/webhook",
            "/payments/webhook",
            None,
            Some(&json!({"id": "evt_1"})),
        )
        .await;
    assert_eq!(status, 400);

    // The plain-text answers are documented with their real content types.
    for (method, path, status, body) in [
        ("get", "/metrics", 200, None),
        (
            "post",
            "/payments/webhook",
            413,
            Some(vec![b' '; 600 * 1024]),
        ),
    ] {
        let http_method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut request = app.http.request(http_method, format!("{}{path}", app.base));
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let documented = &spec["paths"][path][method]["responses"][status.to_string()]["content"];
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        assert!(
            documented.get(&content_type).is_some() || documented.get(essence).is_some(),
            "{method} {path} {status} answers {content_type}; documented: {documented}"
        );
    }
}
