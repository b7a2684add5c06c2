//! deploy/prometheus and deploy/grafana against the real server: the alert rules pass
//! `promtool check rules` and their unit test (`promtool test rules`), and every metric
//! that the rules and the dashboard's queries use appears in a `/metrics` scrape of
//! `wsloop rooms` with the Redis bridge on (the bridge's series exist from the start,
//! whether Redis answers or not; here nothing listens on its port).
#![cfg(all(feature = "cli", feature = "redis"))]

mod deploy_util;
mod ops;

use deploy_util::{closed_port, metric_names, promtool, Wsloop};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

/// The metric names of every sample line in a text exposition.
fn scraped_names(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

fn scrape() -> BTreeSet<String> {
    let redis = format!("--redis=redis://127.0.0.1:{}/", closed_port());
    let args: Vec<String> =
        ["rooms", "--listen=127.0.0.1:0", "--admin-listen=127.0.0.1:0", "--workers=2", &redis].map(String::from).into();
    let server = Wsloop::start(&args, &[]);
    let (status, body) = ops::http_get(server.admin, "/metrics");
    assert_eq!(status, 200, "{body}");
    let names = scraped_names(&body);
    assert!(names.contains("wsloop_redis_connected"), "the bridge's series are missing:\n{body}");
    names
}

/// Every `expr` in the dashboard, with the panel it belongs to.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("grafana/wsloop.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("deploy/grafana/wsloop.json is not JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for p in panels {
        let title = p["title"].as_str().expect("panel title").to_string();
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "panel id used twice: {title}");
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            queries.push((title.clone(), t["expr"].as_str().unwrap_or_else(|| panic!("{title}: no expr")).to_string()));
        }
    }
    queries
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_test() {
    let dir = deploy("prometheus");
    let out = promtool(&dir, &["check", "rules", "wsloop.rules.yml"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"), "{out:?}");
    let out = promtool(&dir, &["test", "rules", "wsloop.rules.test.yml"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"), "{out:?}");
}

#[test]
fn rules_and_dashboard_use_only_metrics_the_server_exports() {
    let exported = scrape();
    let rules = std::fs::read_to_string(deploy("prometheus/wsloop.rules.yml")).unwrap();
    let rule_doc: serde_yaml::Value = serde_yaml::from_str(&rules).unwrap();
    let mut used: Vec<(String, String)> = Vec::new();
    for group in rule_doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap().to_string();
            used.push((format!("alert {name}"), rule["expr"].as_str().unwrap().to_string()));
        }
    }
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    used.extend(queries);
    let mut missing = Vec::new();
    for (where_, expr) in &used {
        for name in metric_names(expr) {
            if !exported.contains(&name) {
                missing.push(format!("{where_}: {name} (in {expr})"));
            }
        }
    }
    assert!(missing.is_empty(), "not in a real /metrics scrape:\n{}\nexported: {exported:?}", missing.join("\n"));

    // What the dashboard must show: connections, traffic, refusals, closes, backpressure,
    // latency from the histogram, the Redis bridge.
    let all: String = dashboard_queries().into_iter().map(|(_, e)| e + "\n").collect();
    let on_dashboard = metric_names(&all);
    for want in [
        "wsloop_connections_open",
        "wsloop_messages_received_total",
        "wsloop_messages_sent_total",
        "wsloop_bytes_received_total",
        "wsloop_bytes_sent_total",
        "wsloop_connections_rejected_total",
        "wsloop_closes_total",
        "wsloop_backpressure_drops_total",
        "wsloop_message_handling_seconds_bucket",
        "wsloop_redis_connected",
        "wsloop_redis_lost_total",
    ] {
        assert!(on_dashboard.contains(want), "the dashboard does not show {want}");
    }
    assert!(all.contains("histogram_quantile(0.99,"), "no p99 from the histogram");
}
