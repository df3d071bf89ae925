//! The flags-admin function serves exactly the routes the template declares for it.

use keel_tests::repo_root;

#[test]
fn flags_admin_serves_exactly_the_routes_the_template_declares() {
    let template = keel_local::Template::load(&repo_root().join("template.yaml")).unwrap();
    let function = template.functions.iter().find(|f| f.binary == "flags-admin").unwrap();
    let mut declared: Vec<String> = function.routes.iter().map(|r| r.route_key()).collect();
    let mut ours: Vec<String> = flags_admin::ROUTES.iter().map(|r| r.to_string()).collect();
    declared.sort();
    ours.sort();
    assert_eq!(ours, declared);
}
