//! The OpenAPI 3.1 document, generated from the route tables. Each route's [`Doc`] sits next to its handler and
//! names the types the handler reads and answers; their JSON Schemas come from `utoipa`'s `ToSchema`, derived on
//! those very types, so a field renamed in code is renamed in the document. What the router itself answers
//! (401 and 403 for access, 429 for rate limits, 400/409/422 for `Idempotency-Key`, 503 for a backend) is added
//! here, once, because the router is where those answers come from.

use crate::function::RouteInfo;
use crate::route::Access;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use utoipa::openapi::{Ref, RefOr, schema::Schema};

/// Schemas the document's `components` hold, by name.
pub type Components = Vec<(String, RefOr<Schema>)>;

/// A type's schema: a reference, its definition (and every definition it refers to) added to the components.
pub type SchemaOf = fn(&mut Components) -> RefOr<Schema>;

/// The schema of a named type (a struct or enum deriving `ToSchema`), by reference.
pub fn schema<T: utoipa::ToSchema>(components: &mut Components) -> RefOr<Schema> {
    T::schemas(components);
    let name = T::name();
    components.push((name.to_string(), T::schema()));
    RefOr::Ref(Ref::from_schema_name(name))
}

/// The schema of a plain type (`String`, `u32`), written in place.
pub fn inline<T: utoipa::PartialSchema>(_: &mut Components) -> RefOr<Schema> {
    T::schema()
}

/// What the document says of one route.
#[derive(Debug, Clone, Copy)]
pub struct Doc {
    pub summary: &'static str,
    pub description: &'static str,
    /// Query parameters and request headers, and path parameters that need more than their name (the rest are
    /// documented as strings).
    pub params: &'static [Param],
    pub body: Option<Content>,
    /// Whether the request may come without a body (the handler then takes its defaults).
    pub body_optional: bool,
    /// The handler's own answers; the router's are added by [`document`].
    pub replies: &'static [Reply],
}

impl Doc {
    /// A route not yet documented: [`document`] refuses it.
    pub const NONE: Doc =
        Doc { summary: "", description: "", params: &[], body: None, body_optional: false, replies: &[] };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Path,
    Query,
    Header,
}

#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub place: Place,
    pub description: &'static str,
    pub required: bool,
    pub schema: SchemaOf,
}

impl Param {
    pub const fn query(name: &'static str, description: &'static str, schema: SchemaOf) -> Self {
        Param { name, place: Place::Query, description, required: false, schema }
    }

    pub const fn header(name: &'static str, description: &'static str) -> Self {
        Param { name, place: Place::Header, description, required: false, schema: inline::<String> }
    }

    pub const fn path(name: &'static str, description: &'static str) -> Self {
        Param { name, place: Place::Path, description, required: true, schema: inline::<String> }
    }
}

/// A body, of a request or a response.
#[derive(Debug, Clone, Copy)]
pub enum Content {
    /// `application/json` of a type.
    Json(SchemaOf),
    /// `application/problem+json` ([`crate::problem::Problem`]).
    Problem,
    /// Any media type, any bytes (a webhook as its provider sends it).
    Bytes,
    /// A 401: API Gateway's JWT authorizer answers `{"message": "Unauthorized"}` for a missing or invalid token;
    /// the router's own check (claims without a user or organization) answers problem+json.
    Unauthorized,
}

#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub status: u16,
    pub description: &'static str,
    pub content: Option<Content>,
}

impl Reply {
    pub const fn json(status: u16, description: &'static str, schema: SchemaOf) -> Self {
        Reply { status, description, content: Some(Content::Json(schema)) }
    }

    pub const fn problem(status: u16, description: &'static str) -> Self {
        Reply { status, description, content: Some(Content::Problem) }
    }

    pub const fn empty(status: u16, description: &'static str) -> Self {
        Reply { status, description, content: None }
    }
}

/// The router's own answers to a route: who may call it, its rate limits, `Idempotency-Key` on a writing route.
fn router_replies(access: Access, writes: bool) -> Vec<Reply> {
    let mut replies = Vec::new();
    if access != Access::Public {
        replies.push(Reply {
            status: 401,
            description: "No valid bearer token.",
            content: Some(Content::Unauthorized),
        });
        replies.push(Reply::problem(403, "The token's roles do not allow this operation."));
        replies.push(Reply::problem(429, "A rate limit is exhausted; `Retry-After` says when to try again."));
        if writes {
            replies.push(Reply::problem(400, "The `Idempotency-Key` header is malformed."));
            replies.push(Reply::problem(409, "A request with this `Idempotency-Key` is still in progress."));
            replies.push(Reply::problem(422, "This `Idempotency-Key` was used with a different request."));
        }
    }
    replies.push(Reply::problem(503, "A backend is temporarily unavailable; retry the request."));
    replies
}

/// A route that cannot be documented as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{method} {path}: {reason}")]
pub struct Undocumented {
    pub method: String,
    pub path: String,
    pub reason: String,
}

/// The document of every route of `functions` (tag, routes), served at `GET /openapi.json`.
pub fn document(version: &str, functions: &[(&str, Vec<RouteInfo>)]) -> Result<Value, Undocumented> {
    let mut components = Components::new();
    let problem = schema::<crate::problem::Problem>(&mut components);
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for (tag, routes) in functions {
        for route in routes {
            let operation = operation(tag, route, &problem, &mut components)?;
            paths.entry(route.path).or_default().insert(route.method.as_str().to_lowercase(), operation);
        }
    }
    let mut schemas = Map::new();
    for (name, schema) in components {
        let schema = serde_json::to_value(schema).unwrap_or(Value::Null);
        if let Some(earlier) = schemas.get(&name).filter(|earlier| **earlier != schema) {
            let reason = format!("two types are named `{name}` ({earlier} and {schema})");
            return Err(Undocumented { method: String::new(), path: String::new(), reason });
        }
        schemas.insert(name, schema);
    }
    Ok(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Keel",
            "version": version,
            "description": "Keel's HTTP API: verified webhook ingest, webhook operations, feature-flag evaluation \
                (Keel's API and OFREP) and administration. Errors are RFC 9457 problem+json with a stable `code`; \
                writing routes honour `Idempotency-Key`; authenticated routes are rate limited per organization \
                and per client address and answer the `RateLimit` and `RateLimit-Policy` headers.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A token of the deployment's OIDC issuer, with `sub`, `org_id` and `roles`."
                }
            }
        }
    }))
}

fn operation(
    tag: &str,
    route: &RouteInfo,
    problem: &RefOr<Schema>,
    components: &mut Components,
) -> Result<Value, Undocumented> {
    let doc = &route.doc;
    let refuse = |reason: &str| Undocumented {
        method: route.method.to_string(),
        path: route.path.to_string(),
        reason: reason.to_string(),
    };
    if doc.summary.is_empty() {
        return Err(refuse("the route has no summary"));
    }
    if !doc.replies.iter().any(|reply| (200..400).contains(&reply.status)) {
        return Err(refuse("the route documents no successful answer"));
    }
    let mut parameters = Vec::new();
    for name in route.path.split('/').filter_map(|part| part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))) {
        let declared = doc.params.iter().find(|param| param.place == Place::Path && param.name == name);
        let description = declared.map(|param| param.description).unwrap_or_default();
        parameters.push(json!({"name": name, "in": "path", "required": true, "description": description,
            "schema": {"type": "string", "minLength": 1}}));
    }
    for param in doc.params.iter().filter(|param| param.place != Place::Path) {
        let place = if param.place == Place::Query { "query" } else { "header" };
        let schema = serde_json::to_value((param.schema)(components)).unwrap_or(Value::Null);
        parameters.push(json!({"name": param.name, "in": place, "required": param.required,
            "description": param.description, "schema": schema}));
    }
    if route.writes && route.access != Access::Public {
        parameters.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Makes the request safe to retry: the first answer is kept for 24 hours per caller, \
                route and key, and a repeat gets it back with `Idempotent-Replayed: true`.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255}}));
    }
    let mut replies: BTreeMap<u16, (Vec<&str>, Option<Content>)> = BTreeMap::new();
    for reply in doc.replies.iter().copied().chain(router_replies(route.access, route.writes)) {
        let entry = replies.entry(reply.status).or_insert_with(|| (Vec::new(), reply.content));
        entry.0.push(reply.description);
        if entry.1.is_none() {
            entry.1 = reply.content;
        }
    }
    let mut responses = Map::new();
    for (status, (descriptions, content)) in replies {
        let mut response = json!({"description": descriptions.join(" Or: ")});
        if let Some(content) = content {
            response["content"] = content_of(content, problem, components);
        }
        responses.insert(status.to_string(), response);
    }
    let mut operation = json!({
        "operationId": operation_id(route),
        "summary": doc.summary,
        "tags": [tag],
        "parameters": parameters,
        "responses": responses,
        "security": if route.access == Access::Public { json!([]) } else { json!([{"bearer": []}]) },
    });
    if !doc.description.is_empty() {
        operation["description"] = doc.description.into();
    }
    if let Some(body) = doc.body {
        let content = content_of(body, problem, components);
        operation["requestBody"] = json!({"required": !doc.body_optional, "content": content});
    }
    Ok(operation)
}

fn content_of(content: Content, problem: &RefOr<Schema>, components: &mut Components) -> Value {
    match content {
        Content::Json(schema) => json!({"application/json": {"schema": schema(components)}}),
        Content::Problem => json!({"application/problem+json": {"schema": problem}}),
        Content::Bytes => json!({"*/*": {"schema": {}}}),
        Content::Unauthorized => json!({
            "application/json": {"schema": {"type": "object", "required": ["message"],
                "properties": {"message": {"type": "string"}}}},
            "application/problem+json": {"schema": problem},
        }),
    }
}

/// `POST /v1/admin/flags/{key}/rules` → `postV1AdminFlagsKeyRules`.
fn operation_id(route: &RouteInfo) -> String {
    let mut id = route.method.as_str().to_lowercase();
    for word in route.path.split(|c: char| !c.is_ascii_alphanumeric()).filter(|word| !word.is_empty()) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[derive(serde::Serialize, utoipa::ToSchema)]
    struct Thing {
        name: String,
    }

    const READ: Doc = Doc {
        summary: "Read a thing",
        params: &[Param::path("id", "The thing."), Param::query("limit", "Page size.", inline::<u32>)],
        replies: &[Reply::json(200, "The thing.", schema::<Thing>), Reply::problem(404, "No such thing.")],
        ..Doc::NONE
    };
    const WRITE: Doc = Doc {
        summary: "Write a thing",
        body: Some(Content::Json(schema::<Thing>)),
        replies: &[Reply::json(201, "Written.", schema::<Thing>), Reply::problem(422, "The thing is invalid.")],
        ..Doc::NONE
    };

    fn route(method: Method, access: Access, writes: bool, doc: Doc) -> RouteInfo {
        RouteInfo { method, path: "/things/{id}", access, writes, doc }
    }

    #[test]
    fn operations_carry_their_types_and_the_routers_own_answers() {
        let routes =
            vec![route(Method::GET, Access::Public, false, READ), route(Method::PUT, Access::Member, true, WRITE)];
        let document = document("1", &[("things", routes)]).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        let get = &document["paths"]["/things/{id}"]["get"];
        assert_eq!(get["security"], json!([]));
        assert_eq!(get["parameters"][0]["name"], "id");
        assert_eq!(get["parameters"][1]["schema"]["type"], "integer");
        let statuses: Vec<&String> = get["responses"].as_object().unwrap().keys().collect();
        assert_eq!(statuses, ["200", "404", "503"], "a public reader: no 401, 403, 429");
        assert_eq!(
            get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Thing"
        );

        let put = &document["paths"]["/things/{id}"]["put"];
        let statuses: Vec<&String> = put["responses"].as_object().unwrap().keys().collect();
        assert_eq!(statuses, ["201", "400", "401", "403", "409", "422", "429", "503"]);
        assert!(put["responses"]["422"]["description"].as_str().unwrap().contains("The thing is invalid. Or:"));
        assert!(put["responses"]["401"]["content"]["application/json"].is_object(), "API Gateway's own 401");
        assert!(put["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "Idempotency-Key"));
        assert_eq!(put["requestBody"]["required"], true);
        assert_eq!(document["components"]["schemas"]["Thing"]["required"], json!(["name"]));
        assert!(document["components"]["schemas"]["Problem"].is_object());
    }

    #[test]
    fn undocumented_routes_are_refused() {
        let nameless = route(Method::GET, Access::Member, false, Doc::NONE);
        let error = document("1", &[("things", vec![nameless])]).unwrap_err();
        assert_eq!(error.reason, "the route has no summary");
        const SILENT: Doc = Doc { summary: "Read", replies: &[Reply::problem(404, "No.")], ..Doc::NONE };
        let silent = SILENT;
        let error = document("1", &[("things", vec![route(Method::GET, Access::Member, false, silent)])]).unwrap_err();
        assert_eq!(error.reason, "the route documents no successful answer");
    }

    #[test]
    fn operation_ids_follow_method_and_path() {
        let info = route(Method::POST, Access::Member, true, READ);
        assert_eq!(
            operation_id(&RouteInfo { path: "/v1/admin/flags/{key}/rules", ..info }),
            "postV1AdminFlagsKeyRules"
        );
    }
}
