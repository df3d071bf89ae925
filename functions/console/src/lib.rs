//! The web console (`console/`, a static single-page app) at `GET /console`, on the same origin as the API it
//! calls: the page and its assets are public, every call the page makes carries the signed-in user's bearer token
//! and is refused or allowed by the API as any client's is.
//!
//! The assets are the build's (`console/dist`, embedded by `build.rs`): a function built before the console was
//! answers 503 `console_not_built` instead of a page. Hashed asset names never change content, so they may be
//! cached for a year; the page itself is never cached, so a deployment shows at the next load. The page may only
//! load its own assets and talk to its own origin, the event stream's (`EVENTS_STREAM_URL`, the stack's
//! `EventsStreamUrl`; the API's own `/v1/events/stream` when unset) and the OIDC issuer's (`JWT_ISSUER`).
//!
//! Sign-in: with `JWT_ISSUER` and `JWT_AUDIENCE` (the HTTP API's authorizer's issuer and audience), the page offers
//! the issuer's authorization code flow with PKCE, as the public client `JWT_AUDIENCE` names; a pasted token works
//! either way. An issuer whose token endpoint is on another origin (Cognito's hosted domain) names it in
//! `CONSOLE_TOKEN_ORIGIN`.

use keel::config::{ConfigError, Env};
use keel::http::{self, Response};
use keel::openapi::{Content, Doc, Param, Reply, inline};
use keel::problem::Problem;
use keel::resources::Resources;
use keel::route::{Access, Api, Route};

mod assets {
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}

pub const STREAM_VAR: &str = "EVENTS_STREAM_URL";
pub const ISSUER_VAR: &str = "JWT_ISSUER";
pub const CLIENT_VAR: &str = "JWT_AUDIENCE";
pub const TOKEN_ORIGIN_VAR: &str = "CONSOLE_TOKEN_ORIGIN";

pub struct Console {
    /// The event stream's base URL (ending in `/`), or empty for the API's own origin.
    stream_base: String,
    /// The issuer and client id of the sign-in through the issuer, when configured.
    oidc: Option<(String, String)>,
    csp: String,
}

/// An `http(s)` URL from `var`, if set.
fn url_var(env: &Env, var: &str) -> Result<Option<String>, ConfigError> {
    match env.get(var) {
        None | Some("") => Ok(None),
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => Ok(Some(url.to_string())),
        Some(_) => Err(ConfigError::Malformed { name: var.into(), reason: "expected an http(s) URL".into() }),
    }
}

pub fn build(env: &Env, _: &dyn Resources) -> Result<Console, ConfigError> {
    let stream_base = match url_var(env, STREAM_VAR)? {
        None => String::new(),
        Some(url) if url.ends_with('/') => url,
        Some(url) => format!("{url}/"),
    };
    let oidc = match (url_var(env, ISSUER_VAR)?, env.get(CLIENT_VAR).filter(|c| !c.is_empty())) {
        (Some(issuer), Some(client)) => Some((issuer, client.to_string())),
        _ => None,
    };
    // The page talks to its origin, the stream's, the issuer's (discovery) and the issuer's token endpoint's,
    // which some issuers serve from another host (`CONSOLE_TOKEN_ORIGIN`).
    let token_origin = url_var(env, TOKEN_ORIGIN_VAR)?;
    let mut connect: Vec<String> = vec!["'self'".into()];
    let issuer = oidc.as_ref().map(|(issuer, _)| issuer.as_str());
    for url in [Some(stream_base.as_str()), issuer, token_origin.as_deref()].into_iter().flatten() {
        let origin = origin(url);
        if !origin.is_empty() && !connect.contains(&origin) {
            connect.push(origin);
        }
    }
    let csp = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src {}; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        connect.join(" ")
    );
    Ok(Console { stream_base, oidc, csp })
}

/// `https://host:port` of a URL.
fn origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return String::new() };
    format!("{scheme}://{}", rest.split('/').next().unwrap_or_default())
}

/// The content type of an asset, by its extension.
fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

impl Console {
    fn asset(&self, name: &str, cache: &str) -> Result<Response, Problem> {
        if assets::ASSETS.is_empty() {
            return Err(Problem::new(
                503,
                "console_not_built",
                "this build has no console: run `npm --prefix console ci && npm --prefix console run build` before \
                 building the functions",
            ));
        }
        let Some((_, bytes)) = assets::ASSETS.iter().find(|(path, _)| *path == name) else {
            return Err(Problem::not_found("asset"));
        };
        let mut response = http::response(200, content_type(name), bytes.to_vec());
        let headers = response.headers_mut();
        for (header, value) in [
            ("cache-control", cache),
            ("content-security-policy", self.csp.as_str()),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ] {
            if let Ok(value) = http::HeaderValue::from_str(value) {
                headers.insert(header, value);
            }
        }
        Ok(response)
    }

    fn config(&self) -> Response {
        let oidc =
            self.oidc.as_ref().map(|(issuer, client)| serde_json::json!({"issuer": issuer, "client_id": client}));
        http::json(200, &serde_json::json!({ "events_stream_base": self.stream_base, "oidc": oidc }))
    }
}

impl Api for Console {
    const ROUTES: &'static [Route<Self>] = &[
        Route::get("/console", Access::Public, PAGE, |console, _| {
            Box::pin(async move { console.asset("index.html", "no-cache") })
        }),
        Route::get("/console/config.json", Access::Public, CONFIG, |console, _| {
            Box::pin(async move { Ok(console.config()) })
        }),
        Route::get("/console/assets/{file}", Access::Public, ASSET, |console, call| {
            Box::pin(async move {
                let file = http::path_param(&call.request, "file").ok_or_else(|| Problem::not_found("asset"))?;
                console.asset(&format!("assets/{file}"), "public, max-age=31536000, immutable")
            })
        }),
    ];
}

const PAGE: Doc = Doc {
    summary: "The web console",
    description: "The console's page (HTML). It signs in with a bearer token and calls this API with it.",
    replies: &[
        Reply { status: 200, description: "The page (HTML).", content: Some(Content::Bytes) },
        Reply::problem(503, "This build has no console (`console_not_built`)."),
    ],
    ..Doc::NONE
};

const CONFIG: Doc = Doc {
    summary: "The console's configuration",
    description: "Where the console reads the event stream (`events_stream_base`, empty: this API's origin), and the \
        issuer it signs in through (`oidc`: `issuer` and `client_id`, or null).",
    replies: &[Reply::json(200, "The configuration.", inline::<serde_json::Value>)],
    ..Doc::NONE
};

const ASSET: Doc = Doc {
    summary: "One of the console's built assets",
    params: &[Param::path("file", "The asset's file name (content-hashed).")],
    replies: &[
        Reply { status: 200, description: "The asset (JavaScript or CSS).", content: Some(Content::Bytes) },
        Reply::problem(404, "No such asset."),
        Reply::problem(503, "This build has no console (`console_not_built`)."),
    ],
    ..Doc::NONE
};
