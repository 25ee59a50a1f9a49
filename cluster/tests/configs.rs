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
    // The default services: those without a profile.
    let names: Vec<&str> = services
        .iter()
        .filter(|(_, svc)| svc.get("profiles").is_none())
        .map(|(k, _)| k.as_str().unwrap())
        .collect();
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

fn strings(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| match x {
                    serde_yaml::Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `sentinel` profile: a master, two replicas of it, three sentinels
/// that monitor it under the name the chat servers ask for, on the port
/// the servers are given, and an HAProxy that does not take the default
/// one's host ports.
#[test]
fn compose_sentinel_profile_is_consistent() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    doc.apply_merge().expect("merge keys resolve");
    let services = doc["services"].as_mapping().expect("services");
    let profiled: Vec<&str> = services
        .iter()
        .filter(|(_, svc)| strings(&svc["profiles"]) == ["sentinel"])
        .map(|(k, _)| k.as_str().unwrap())
        .collect();
    assert_eq!(
        profiled,
        [
            "redis-master",
            "redis-replica1",
            "redis-replica2",
            "sentinel1",
            "sentinel2",
            "sentinel3",
            "sentinel-app1",
            "sentinel-app2",
            "sentinel-app3",
            "sentinel-haproxy"
        ]
    );
    let svc = |name: &str| &doc["services"][name];

    let master = strings(&svc("redis-master")["command"]);
    assert!(!master.contains(&"--replicaof".to_string()), "{master:?}");
    for r in ["redis-replica1", "redis-replica2"] {
        let cmd = strings(&svc(r)["command"]).join(" ");
        assert!(cmd.contains("--replicaof redis-master 6379"), "{r}: {cmd}");
        assert!(
            cmd.contains(&format!("--replica-announce-ip {r}")),
            "{r}: {cmd}"
        );
    }

    // What the servers are told.
    let env = &svc("sentinel-app1")["environment"];
    let master_name = env["REDIS_SENTINEL_MASTER"].as_str().unwrap();
    let sentinels: Vec<&str> = env["REDIS_SENTINELS"]
        .as_str()
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(
        sentinels,
        ["sentinel1:26379", "sentinel2:26379", "sentinel3:26379"]
    );
    for (i, addr) in sentinels.iter().enumerate() {
        let (host, port) = addr.split_once(':').unwrap();
        let s = svc(host);
        let conf = strings(&s["command"]).join("\n");
        assert!(conf.contains(&format!("port {port}\n")), "{host}: {conf}");
        assert!(strings(&s["expose"]).contains(&port.to_string()), "{host}");
        assert!(
            conf.contains(&format!(
                "sentinel monitor {master_name} redis-master 6379 2\n"
            )),
            "{host} monitors {master_name:?} with quorum 2: {conf}"
        );
        for line in [
            "down-after-milliseconds",
            "failover-timeout",
            "parallel-syncs",
        ] {
            assert!(
                conf.contains(&format!("sentinel {line} {master_name} ")),
                "{host}: {line}"
            );
        }
        assert_eq!(
            s["environment"]["SENTINEL_ANNOUNCE_IP"].as_str(),
            Some(host),
            "sentinel{} announces its own name",
            i + 1
        );
        assert!(strings(&s["entrypoint"]).join(" ").contains("sh -c"));
    }

    // The servers: the same image, env for sentinel and no REDIS_URL,
    // reachable under the names haproxy.cfg uses, waiting for the sentinels.
    for (i, (name, addr)) in compose_settings().servers.iter().enumerate() {
        let app = format!("sentinel-app{}", i + 1);
        let s = svc(&app);
        let e = &s["environment"];
        assert_eq!(e["APP_ID"].as_str(), Some(name.as_str()), "{app}");
        assert!(e.get("REDIS_URL").is_none(), "{app} has no REDIS_URL");
        assert_eq!(e["REDIS_SENTINEL_MASTER"].as_str(), Some(master_name));
        assert_eq!(e["REDIS_SENTINELS"], env["REDIS_SENTINELS"]);
        let port = addr.rsplit(':').next().unwrap();
        assert_eq!(
            e["LISTEN_ADDR"].as_str(),
            Some(format!("0.0.0.0:{port}").as_str())
        );
        assert_eq!(s["build"].as_str(), Some("."));
        assert_eq!(
            strings(&s["networks"]["sentinel"]["aliases"]),
            std::slice::from_ref(name),
            "{app} answers to {name} on the sentinel network"
        );
        for sentinel in ["sentinel1", "sentinel2", "sentinel3"] {
            assert_eq!(
                s["depends_on"][sentinel]["condition"].as_str(),
                Some("service_healthy"),
                "{app} waits for {sentinel}"
            );
        }
        assert!(s["depends_on"].get("redis").is_none(), "{app}");
    }

    // Its own HAProxy, on other host ports than the default one.
    let ports = |name: &str| strings(&svc(name)["ports"]);
    let host_ports = |name: &str| -> Vec<String> {
        ports(name)
            .iter()
            .map(|p| p.split(':').next().unwrap().to_string())
            .collect()
    };
    assert!(ports("sentinel-haproxy").contains(&"8081:8080".to_string()));
    for p in host_ports("sentinel-haproxy") {
        assert!(
            !host_ports("haproxy").contains(&p),
            "host port {p} taken twice"
        );
    }
    assert_eq!(
        strings(&svc("sentinel-haproxy")["networks"]),
        ["sentinel"],
        "only on the sentinel network, where app1..3 are the sentinel servers"
    );
    // Every service of the profile is on its network; no default one is.
    for name in &profiled {
        let nets = &svc(name)["networks"];
        let on = strings(nets).contains(&"sentinel".to_string()) || nets.get("sentinel").is_some();
        assert!(on, "{name} is on the sentinel network");
    }
    for name in ["redis", "app1", "app2", "app3", "haproxy"] {
        assert!(svc(name).get("networks").is_none(), "{name}");
    }
}
