//! Every HTTP function's route table against the template: the same routes (method and path), public exactly
//! where the template turns the authorizer off, and each route reaching the handler its table names (the router
//! marks the route it dispatched to on the response). Functions are the ones `keel-local` builds from the real
//! template, called directly with the request `lambda_http` makes of an API Gateway event.

use keel::config::Env;
use keel::route::{Access, Matched};
use keel_local::template::Auth;
use keel_local::{Backend, Host, HostOptions, Template};
use keel_tests::{api_request, repo_root, with_claims};
use std::collections::BTreeSet;

async fn start(dir: &std::path::Path, template: &std::path::Path) -> Host {
    let env = Env::from_pairs([("KEEL_STAGE", "dev")]);
    let options = HostOptions {
        port: 0,
        data_dir: dir.to_path_buf(),
        backend: Backend::Embedded,
        template: template.into(),
        env,
    };
    Host::start(options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_serves_exactly_its_template_routes_and_each_reaches_its_handler() {
    let dir = tempfile::tempdir().unwrap();
    let template_path = repo_root().join("template.yaml");
    let host = start(dir.path(), &template_path).await;
    let template = Template::load(&template_path).unwrap();
    let mut checked = 0;
    for declared in template.functions.iter().filter(|function| !function.routes.is_empty()) {
        let function =
            host.http_function(&declared.binary).unwrap_or_else(|| panic!("{} is not built", declared.binary));
        let routes = function.routes();
        let table: BTreeSet<(String, String, bool)> = routes
            .iter()
            .map(|route| (route.method.to_string(), route.path.to_string(), route.access == Access::Public))
            .collect();
        if routes.iter().any(|route| route.writes && route.access != Access::Public) {
            assert!(
                function.keeps_idempotency_keys(),
                "{} writes but keeps no Idempotency-Key records",
                declared.binary
            );
        }
        let in_template: BTreeSet<(String, String, bool)> = declared
            .routes
            .iter()
            .map(|route| (route.method.clone(), route.path.clone(), route.auth == Auth::None))
            .collect();
        assert_eq!(table, in_template, "{}: the route table and the template differ", declared.binary);

        for (method, path, _) in &table {
            let concrete =
                path.split('/').map(|part| if part.starts_with('{') { "x" } else { part }).collect::<Vec<_>>();
            let mut event = api_request(method.parse().unwrap(), &format!("{method} {path}"), &concrete.join("/"));
            for part in path.split('/').filter_map(|part| part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))) {
                event.path_parameters.insert(part.to_string(), "x".to_string());
            }
            let event = with_claims(event, "routes-test", "org-routes", &["platform-admin"]);
            let request = keel::lambda::request_of(event);
            let response = function.handle(request).await;
            let matched = response.extensions().get::<Matched>().map(|m| (m.method.to_string(), m.path.to_string()));
            assert_eq!(
                matched,
                Some((method.clone(), path.clone())),
                "{} {method} {path} did not reach its handler (status {})",
                declared.binary,
                response.status()
            );
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} routes checked");
    host.shutdown().await;
}

/// The committed OpenAPI document is the one the route tables generate, and it covers exactly the template's
/// routes. `KEEL_WRITE_OPENAPI=1` rewrites the committed copy instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_openapi_document_is_what_the_route_tables_generate() {
    let dir = tempfile::tempdir().unwrap();
    let template_path = repo_root().join("template.yaml");
    let host = start(dir.path(), &template_path).await;
    let generated = host.openapi().unwrap_or_else(|undocumented| panic!("{undocumented}"));
    host.shutdown().await;

    let template = Template::load(&template_path).unwrap();
    let in_template: BTreeSet<(String, String)> = template
        .functions
        .iter()
        .flat_map(|function| function.routes.iter().map(|route| (route.method.to_lowercase(), route.path.clone())))
        .collect();
    let documented: BTreeSet<(String, String)> = generated["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |method| (method.clone(), path.clone())))
        .collect();
    assert_eq!(documented, in_template, "the document and the template's routes differ");

    let committed_path = repo_root().join("functions/api-docs/openapi.json");
    let pretty = serde_json::to_string_pretty(&generated).unwrap() + "\n";
    if std::env::var_os("KEEL_WRITE_OPENAPI").is_some() {
        std::fs::write(&committed_path, &pretty).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&committed_path).unwrap(),
        pretty,
        "functions/api-docs/openapi.json is not what the code generates: run the e2e tests with KEEL_WRITE_OPENAPI=1"
    );
}
