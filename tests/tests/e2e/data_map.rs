//! The data map covers the template: every table and bucket a function is wired to has entries, every entry names
//! a store the template wires, and entry names are unique. (Each domain's own tests check that what it writes is declared.)

use keel_gdpr::datamap::data_map;
use keel_local::template::{Template, VarValue};
use keel_tests::repo_root;
use std::collections::{BTreeMap, BTreeSet};

#[test]
fn every_store_the_template_wires_is_in_the_data_map_and_nothing_else_is() {
    let template = Template::load(&repo_root().join("template.yaml")).unwrap();
    // Variable name -> the tables or buckets (logical ids) it is wired to.
    let mut wired: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for function in &template.functions {
        for (var, value) in &function.variables {
            if let VarValue::Table(id) | VarValue::Bucket(id) = value {
                wired.entry(var.clone()).or_default().insert(id.clone());
            }
        }
    }
    for (var, stores) in &wired {
        assert_eq!(stores.len(), 1, "{var} names one store everywhere: {stores:?}");
    }
    let wired_stores: BTreeSet<&String> = wired.values().flatten().collect();
    let declared_stores: BTreeSet<&String> = template.tables.iter().chain(&template.buckets).collect();
    assert_eq!(wired_stores, declared_stores, "every table and bucket of the template is wired to some function");

    let map = data_map();
    let mapped: BTreeSet<&str> = map.iter().map(|e| e.table).collect();
    let wired_vars: BTreeSet<&str> = wired.keys().map(String::as_str).collect();
    assert_eq!(mapped, wired_vars, "the data map's tables and the template's");

    let mut names = BTreeSet::new();
    for entry in &map {
        assert!(names.insert(entry.name), "{} is declared twice", entry.name);
        assert!(entry.name.split_once('.').is_some_and(|(d, k)| !d.is_empty() && !k.is_empty()), "{}", entry.name);
        assert!(!entry.purpose.is_empty() && !entry.description.is_empty(), "{}", entry.name);
    }
}
