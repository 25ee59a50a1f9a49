//! The container files stay correct without a Docker engine: the compose
//! HAProxy config equals the generator's output and passes `haproxy -c`,
//! the local one passes too, and docker-compose.yml has the topology the
//! launcher has.

use std::path::{Path, PathBuf};
use std::process::Command;

use chat_cluster::haproxy::{compose_config, compose_settings, render, HaproxySettings};
use chat_cluster::procs::{haproxy_path, require_tools};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn haproxy_check(path: &Path) {
    require_tools().unwrap();
    let out = Command::new(haproxy_path())
        .arg("-c")
        .arg("-f")
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "haproxy -c {}: {text}",
        path.display()
    );
    assert!(text.contains("Configuration file is valid"), "{text}");
}

#[test]
fn compose_haproxy_cfg_is_generated_and_valid() {
    let path = repo().join("haproxy.cfg");
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert_eq!(on_disk, compose_config(), "haproxy.cfg drifted: regenerate with `cargo run -p chat-cluster -- haproxy-cfg > haproxy.cfg`");
    haproxy_check(&path);
    for key in [
        "balance leastconn",
        "timeout tunnel",
        "option httpchk GET /healthz",
        "bind :8080",
    ] {
        assert!(on_disk.contains(key), "{key}");
    }
}

#[test]
fn local_haproxy_cfg_is_valid() {
    let cfg = render(&HaproxySettings {
        bind: "127.0.0.1:18080".into(),
        servers: vec![
            ("app1".into(), "127.0.0.1:19001".into()),
            ("app2".into(), "127.0.0.1:19002".into()),
        ],
        stats_bind: "127.0.0.1:18404".into(),
        maxconn: 9000,
        docker_dns: false,
    });
    let dir = chat_cluster::procs::temp_dir("haproxy-cfg-test").unwrap();
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    haproxy_check(&path);
}

#[test]
fn compose_file_matches_the_launcher_topology() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML");
    let mut doc = doc;
    doc.apply_merge().expect("merge keys resolve");
    let services = doc["services"].as_mapping().expect("services");
    let names: Vec<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(names, ["redis", "app1", "app2", "app3", "haproxy"]);
    let settings = compose_settings();
    for (name, addr) in &settings.servers {
        let svc = &doc["services"][name.as_str()];
        let env = &svc["environment"];
        assert_eq!(env["APP_ID"].as_str(), Some(name.as_str()));
        let port = addr.rsplit(':').next().unwrap();
        assert_eq!(
            env["LISTEN_ADDR"].as_str(),
            Some(format!("0.0.0.0:{port}").as_str())
        );
        assert_eq!(env["REDIS_URL"].as_str(), Some("redis://redis:6379/"));
        assert_eq!(
            svc["build"].as_str(),
            Some("."),
            "{name} builds the Dockerfile"
        );
        assert_eq!(svc["stop_signal"].as_str(), Some("SIGTERM"));
    }
    let hap = &doc["services"]["haproxy"];
    let ports: Vec<&str> = hap["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(ports.contains(&"8080:8080"), "{ports:?}");
    let vols: Vec<&str> = hap["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        vols.iter().any(|v| v.starts_with("./haproxy.cfg:")),
        "{vols:?}"
    );
    // The Dockerfile builds the binary the compose services run.
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("--bin server")
            && dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/server\"]")
    );
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage");
}
