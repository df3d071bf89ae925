//! `GET /docs`: the API's OpenAPI document as a page to read, rendered here from the document the API serves at
//! `GET /openapi.json` (no script, nothing fetched from elsewhere, so it works offline).

use serde_json::Value;
use std::fmt::Write;

pub const DOCS_PATH: &str = "/docs";

/// The page for `document`.
pub fn page(document: &Value) -> String {
    let title = text(&document["info"]["title"]);
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} API</title><style>\
         body{{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}\
         h2{{border-bottom:1px solid #ccc;margin-top:2.5rem}}code,pre{{font:13px ui-monospace,monospace}}\
         pre{{background:#f6f6f6;padding:.5rem;overflow:auto}}table{{border-collapse:collapse;width:100%}}\
         td,th{{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}}\
         .op{{border:1px solid #ddd;border-radius:4px;padding:.5rem 1rem;margin:1rem 0}}\
         .method{{font-weight:bold;text-transform:uppercase;margin-right:.5rem}}</style></head><body>\
         <h1>{title} API <small>{version}</small></h1><p>{description}</p>\
         <p>The document itself: <a href=\"/openapi.json\"><code>/openapi.json</code></a> (OpenAPI {openapi}).</p>",
        version = text(&document["info"]["version"]),
        description = text(&document["info"]["description"]),
        openapi = text(&document["openapi"]),
    );
    let mut by_tag: Vec<(String, String, String, &Value)> = Vec::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            let tag = operation["tags"][0].as_str().unwrap_or_default().to_string();
            by_tag.push((tag, path.clone(), method.clone(), operation));
        }
    }
    by_tag.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
    let mut current = None;
    for (tag, path, method, operation) in by_tag {
        if current.as_ref() != Some(&tag) {
            let _ = write!(html, "<h2>{}</h2>", escape(&tag));
            current = Some(tag);
        }
        operation_html(&mut html, &path, &method, operation);
    }
    html.push_str("<h2>Schemas</h2>");
    for (name, schema) in document["components"]["schemas"].as_object().into_iter().flatten() {
        let pretty = serde_json::to_string_pretty(schema).unwrap_or_default();
        let _ = write!(html, "<h3 id=\"{0}\">{0}</h3><pre>{1}</pre>", escape(name), escape(&pretty));
    }
    html.push_str("</body></html>");
    html
}

fn operation_html(html: &mut String, path: &str, method: &str, operation: &Value) {
    let _ = write!(
        html,
        "<div class=\"op\"><p><span class=\"method\">{}</span><code>{}</code> {}</p>",
        escape(method),
        escape(path),
        text(&operation["summary"])
    );
    if let Some(description) = operation["description"].as_str() {
        let _ = write!(html, "<p>{}</p>", escape(description));
    }
    let public = operation["security"].as_array().is_some_and(Vec::is_empty);
    html.push_str(if public { "<p>No token.</p>" } else { "<p>Bearer token.</p>" });
    let parameters = operation["parameters"].as_array().filter(|p| !p.is_empty());
    if let Some(parameters) = parameters {
        html.push_str("<table><tr><th>Parameter</th><th>In</th><th>Schema</th><th>Description</th></tr>");
        for p in parameters {
            let _ = write!(
                html,
                "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                text(&p["name"]),
                if p["required"] == Value::Bool(true) { " (required)" } else { "" },
                text(&p["in"]),
                schema_html(&p["schema"]),
                text(&p["description"])
            );
        }
        html.push_str("</table>");
    }
    if let Some(content) = operation["requestBody"]["content"].as_object() {
        for (media, body) in content {
            let _ = write!(html, "<p>Body <code>{}</code>: {}</p>", escape(media), schema_html(&body["schema"]));
        }
    }
    html.push_str("<table><tr><th>Status</th><th>Answer</th><th>Body</th></tr>");
    for (status, response) in operation["responses"].as_object().into_iter().flatten() {
        let body = response["content"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(media, c)| format!("<code>{}</code> {}", escape(media), schema_html(&c["schema"])))
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{body}</td></tr>",
            escape(status),
            text(&response["description"])
        );
    }
    html.push_str("</table></div>");
}

/// A reference as a link to its schema; anything else as compact JSON.
fn schema_html(schema: &Value) -> String {
    match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
        Some(name) => format!("<a href=\"#{0}\">{0}</a>", escape(name)),
        None => format!("<code>{}</code>", escape(&schema.to_string())),
    }
}

fn text(value: &Value) -> String {
    escape(value.as_str().unwrap_or_default())
}

fn escape(raw: &str) -> String {
    raw.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_schemas_and_links_are_rendered_and_text_is_escaped() {
        let document = serde_json::json!({
            "openapi": "3.1.0",
            "info": {"title": "Keel", "version": "1", "description": "<b>x</b>"},
            "paths": {"/a/{id}": {"get": {"summary": "Read", "tags": ["fn"], "security": [],
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "ok",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}}}}}},
            "components": {"schemas": {"Thing": {"type": "object"}}}
        });
        let html = page(&document);
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;"), "{html}");
        assert!(html.contains("<code>/a/{id}</code> Read"));
        assert!(html.contains("<a href=\"#Thing\">Thing</a>"));
        assert!(html.contains("<h3 id=\"Thing\">Thing</h3>"));
        assert!(html.contains("No token."));
    }
}
