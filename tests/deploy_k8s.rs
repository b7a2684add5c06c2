//! deploy/k8s against the binary: every manifest parses; the Deployment's args and
//! `WSLOOP_*` variables are flags `wsloop` accepts (the binary is started with them, on
//! loopback, with a test secret and a Redis port nobody listens on); the probes' paths
//! answer on the port the admin listener serves, with 200; the container ports are the
//! ones the flags listen on; the Service, autoscaler and disruption budget point at the
//! Deployment; the grace period outlasts the drain; the pod runs as non-root with a
//! read-only root file system; the Secret holds every key the Deployment reads.
#![cfg(all(feature = "cli", feature = "redis"))]

mod deploy_util;
mod ops;

use deploy_util::{closed_port, Wsloop};
use serde_yaml::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn manifests() -> BTreeMap<String, Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s");
    let mut by_kind = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("{}: no kind", path.display())).to_string();
        assert!(doc["apiVersion"].is_string(), "{}: no apiVersion", path.display());
        assert!(by_kind.insert(kind.clone(), doc).is_none(), "two {kind} manifests");
    }
    for kind in ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret", "Kustomization"] {
        assert!(by_kind.contains_key(kind), "deploy/k8s has no {kind}");
    }
    by_kind
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str().unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

/// The port of `HOST:PORT`.
fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The variable's plain value, `None` for one taken from a Secret.
fn env_value(var: &Value) -> Option<&str> {
    var["value"].as_str()
}

#[test]
fn manifests_match_what_the_binary_serves_and_accepts() {
    let m = manifests();
    let deploy = &m["Deployment"];
    let pod = &deploy["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let args: Vec<String> = c["args"].as_sequence().unwrap().iter().map(|a| str_of(a, "arg").to_string()).collect();
    let env: Vec<&Value> = c["env"].as_sequence().unwrap().iter().collect();
    let var = |name: &str| env.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no env {name}"));

    // Container ports are the ones the flags listen on.
    let ports: BTreeMap<String, u64> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| (str_of(&p["name"], "port name").to_string(), p["containerPort"].as_u64().unwrap()))
        .collect();
    let listen = env_value(var("WSLOOP_LISTEN")).unwrap();
    let admin_listen = env_value(var("WSLOOP_ADMIN_LISTEN")).unwrap();
    assert_eq!(ports["ws"], port_of(listen) as u64);
    assert_eq!(ports["admin"], port_of(admin_listen) as u64);
    let annotations = &deploy["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"].as_str().unwrap().parse::<u16>().unwrap(), port_of(admin_listen));

    // Start the binary with the container's args and every WSLOOP_* variable. What
    // points at the cluster is replaced: listening on loopback port 0, a test secret
    // file, a Redis port that refuses (the bridge retries in the background).
    let dir = std::env::temp_dir().join(format!("wsloop-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, [b'k'; 32]).unwrap();
    let mut run_env = Vec::new();
    for v in &env {
        let name = str_of(&v["name"], "env name");
        if !name.starts_with("WSLOOP_") {
            continue;
        }
        let value = match name {
            "WSLOOP_LISTEN" | "WSLOOP_ADMIN_LISTEN" => "127.0.0.1:0".to_string(),
            "WSLOOP_JWT_SECRET_FILE" => secret.to_str().unwrap().to_string(),
            "WSLOOP_REDIS" => format!("redis://127.0.0.1:{}/", closed_port()),
            _ => env_value(v).unwrap_or_else(|| panic!("{name} from a Secret the test does not stand in for")).into(),
        };
        run_env.push((name.to_string(), value));
    }
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_wsloop")).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for (name, _) in &run_env {
        assert!(help.contains(&format!("[env: {name}=")), "{name} is no flag's variable in `wsloop --help`");
    }
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap();
        assert!(help.contains(&format!("  {flag} ")), "{flag} is not in `wsloop --help`");
    }
    let server = Wsloop::start(&args, &run_env);

    // Probes: the path answers 200 on the port the admin listener serves.
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        let port = match &get["port"] {
            Value::String(name) => ports[name.as_str()],
            p => p.as_u64().unwrap(),
        };
        assert_eq!(port, ports["admin"], "{probe} is not on the admin port");
        let path = str_of(&get["path"], "probe path");
        let (status, body) = ops::http_get(server.admin, path);
        assert_eq!(status, 200, "{probe} GET {path}: {body}");
    }
    // Readiness is the endpoint that turns 503 while draining (tests/metrics_promtool.rs).
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();

    // The grace period outlasts the preStop pause plus the drain.
    let drain: f64 = env_value(var("WSLOOP_DRAIN_TIMEOUT")).unwrap().parse().unwrap();
    let pause = c["lifecycle"]["preStop"]["sleep"]["seconds"].as_f64().unwrap_or(0.0);
    let grace = pod["terminationGracePeriodSeconds"].as_f64().unwrap();
    assert!(grace > drain + pause, "terminationGracePeriodSeconds {grace} <= drain {drain} + preStop {pause}");

    // Non-root, read-only, no privileges; resource requests.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["runAsUser"].as_u64().unwrap() > 0);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert!(c["resources"]["requests"]["cpu"].is_string() && c["resources"]["requests"]["memory"].is_string());

    // Service, HPA, PDB point at this Deployment's pods and ports.
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deploy["spec"]["selector"]["matchLabels"], labels);
    let svc = &m["Service"]["spec"];
    assert_eq!(&svc["selector"], labels);
    assert_eq!(svc["sessionAffinity"], "ClientIP");
    for p in svc["ports"].as_sequence().unwrap() {
        let target = str_of(&p["targetPort"], "targetPort");
        assert_eq!(target, "ws", "the Service must not expose the admin port");
    }
    let hpa = &m["HorizontalPodAutoscaler"]["spec"];
    assert_eq!(hpa["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["scaleTargetRef"]["name"], deploy["metadata"]["name"]);
    assert_eq!(hpa["metrics"][0]["resource"]["name"], "cpu");
    assert_eq!(&m["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], labels);

    // The Secret has every key the Deployment reads from it.
    let secret = &m["Secret"];
    let mut wanted = Vec::new();
    for v in &env {
        if let Some(r) = v["valueFrom"]["secretKeyRef"].as_mapping() {
            wanted.push((r[&Value::from("name")].clone(), r[&Value::from("key")].clone()));
        }
    }
    for vol in pod["volumes"].as_sequence().unwrap() {
        if let Some(s) = vol["secret"].as_mapping() {
            for item in s[&Value::from("items")].as_sequence().unwrap() {
                wanted.push((s[&Value::from("secretName")].clone(), item["key"].clone()));
            }
        }
    }
    assert!(wanted.len() >= 2, "the JWT key and the Redis URL come from the Secret: {wanted:?}");
    for (name, key) in wanted {
        assert_eq!(name, secret["metadata"]["name"]);
        let value = secret["stringData"][&key].as_str().unwrap_or_else(|| panic!("the Secret has no {key:?}"));
        if key == "jwt-secret" {
            assert!(value.len() >= 32, "the example JWT secret would be refused (under 32 bytes)");
        }
    }
    // kustomization.yaml lists every manifest.
    let listed: Vec<&str> =
        m["Kustomization"]["resources"].as_sequence().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert_eq!(listed.len(), m.len() - 1, "{listed:?}");
}
