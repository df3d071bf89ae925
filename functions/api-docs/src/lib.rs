//! `GET /openapi.json`, unauthenticated: the OpenAPI 3.1 document of every route of the HTTP API, as committed
//! in `functions/api-docs/openapi.json`. The document is generated from the route tables (`keel::openapi`) by the
//! end-to-end tests, which fail when the committed copy differs from what the code and the template say
//! (`KEEL_WRITE_OPENAPI=1` rewrites it). Serving the committed copy keeps this function free of every other
//! function's code: it starts in the time of an empty function.

use keel::config::{ConfigError, Env};
use keel::http::{self, Response};
use keel::openapi::{Doc, Reply, inline};
use keel::problem::Problem;
use keel::resources::Resources;
use keel::route::{Access, Api, Route};

/// The document, byte for byte as committed.
pub const DOCUMENT: &str = include_str!("../openapi.json");

pub struct ApiDocs;

/// Needs no configuration and no resource; the signature is every function's.
pub fn build(_: &Env, _: &dyn Resources) -> Result<ApiDocs, ConfigError> {
    Ok(ApiDocs)
}

impl Api for ApiDocs {
    const ROUTES: &'static [Route<Self>] = &[Route::get("/openapi.json", Access::Public, DOCUMENT_DOC, |_, _| {
        Box::pin(async { Ok::<Response, Problem>(http::response(200, "application/json", DOCUMENT)) })
    })];
}

const DOCUMENT_DOC: Doc = Doc {
    summary: "The OpenAPI document of this API",
    replies: &[Reply::json(200, "This document (OpenAPI 3.1).", inline::<serde_json::Value>)],
    ..Doc::NONE
};
