//! The data map covers the template: every table a function is wired to has entries, every entry names a table
//! the template wires, and entry names are unique. (Each domain's own tests check that what it writes is declared.)

use keel_gdpr::datamap::data_map;
use keel_local::template::{Template, VarValue};
use keel_tests::repo_root;
use std::collections::{BTreeMap, BTreeSet};

#[test]
fn every_table_the_template_wires_is_in_the_data_map_and_nothing_else_is() {
    let template = Template::load(&repo_root().join("template.yaml")).unwrap();
    // Variable name -> the tables (logical ids) it is wired to.
    let mut wired: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for function in &template.functions {
        for (var, value) in &function.variables {
            if let VarValue::Table(id) = value {
                wired.entry(var.clone()).or_default().insert(id.clone());
            }
        }
    }
    for (var, tables) in &wired {
        assert_eq!(tables.len(), 1, "{var} names one table everywhere: {tables:?}");
    }
    let wired_tables: BTreeSet<&String> = wired.values().flatten().collect();
    let declared_tables: BTreeSet<&String> = template.tables.iter().collect();
    assert_eq!(wired_tables, declared_tables, "every table of the template is wired to some function");

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
