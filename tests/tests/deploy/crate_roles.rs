//! The crates keep to their roles (docs/DESIGN.md, "Crates"): the simulator and the simulated
//! platform are independent oracles, so neither may reach the agent through any dependency,
//! and the virtual hardware carries no MQTT broker. Read from `Cargo.lock`, whose entries
//! list every package's dependencies (normal, build and dev), so the check is stricter than
//! `cargo tree -e normal`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use ukey_tests::workspace_root;

/// Package name → the names of its dependencies, from `Cargo.lock`.
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock")).unwrap();
    let mut graph = BTreeMap::new();
    for entry in lock.split("[[package]]").skip(1) {
        let name = entry
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap()
            .to_owned();
        let deps = match entry.split_once("dependencies = [") {
            Some((_, rest)) => rest
                .split(']')
                .next()
                .unwrap()
                .lines()
                .filter_map(|l| l.trim().strip_prefix('"'))
                .map(|l| l.split([' ', '"']).next().unwrap().to_owned())
                .collect(),
            None => Vec::new(),
        };
        // Several versions of one crate share a name: the union is good enough here.
        graph.entry(name).or_insert_with(Vec::new).extend(deps);
    }
    graph
}

/// Every package `root` reaches.
fn reach(graph: &BTreeMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_owned()];
    while let Some(name) = todo.pop() {
        for dep in graph.get(&name).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

#[test]
fn the_oracles_do_not_reach_the_agent() {
    let graph = lock_graph();
    for oracle in ["hsm-sim", "ukey-platform-sim"] {
        assert!(graph.contains_key(oracle), "{oracle} is not in Cargo.lock");
        let deps = reach(&graph, oracle);
        assert!(deps.contains("ukey-protocol"), "{oracle}: {deps:?}");
        assert!(
            !deps.contains("ukey-agent"),
            "{oracle} depends on ukey-agent: it would check the agent with the agent's code"
        );
    }
    let hardware = reach(&graph, "hsm-sim");
    for broker_side in ["rumqttd", "rumqttc", "tokio", "ukey-platform-sim"] {
        assert!(
            !hardware.contains(broker_side),
            "hsm-sim (virtual hardware only) depends on {broker_side}"
        );
    }
    assert!(!reach(&graph, "ukey-platform-sim").contains("rumqttd"));
    // The demo is where everything meets.
    let demo = reach(&graph, "ukey-demo");
    for part in ["ukey-agent", "hsm-sim", "ukey-platform-sim", "rumqttd"] {
        assert!(demo.contains(part), "ukey-demo lacks {part}");
    }
}
