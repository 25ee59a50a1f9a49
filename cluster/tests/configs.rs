//! The container files stay correct without a Docker engine: the compose
//! HAProxy config equals the generator's output and passes `haproxy -c`,
//! the local one passes too, and docker-compose.yml has the topology the
//! launcher has, in its default services and in its `sentinel` and
//! `cluster` profiles, each with its archive (PostgreSQL and an archiver
//! with the profile's Redis settings), and the Dockerfile builds every
//! binary the services run.

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
        "http-request deny deny_status 404 if { path -m beg /metrics /cluster }",
        "option forwardfor",
        "tcp-request connection track-sc0 src",
        "tcp-request connection reject if { sc0_conn_cur gt 200 }",
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
        max_conn_per_ip: Some(5),
    });
    let dir = chat_cluster::procs::temp_dir("haproxy-cfg-test").unwrap();
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    haproxy_check(&path);
    std::fs::remove_dir_all(&dir).unwrap();
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
    assert_eq!(
        names,
        ["redis", "app1", "app2", "app3", "postgres", "archiver", "haproxy"]
    );
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
        assert_eq!(
            env["ADMIN_LISTEN"].as_str(),
            Some("0.0.0.0:9100"),
            "{name}: /metrics and /cluster only on the unpublished admin port"
        );
        // Only the WebSocket port is published, for direct connects
        // through the registry, and PUBLIC_URL names it; never the admin
        // port.
        let published: Vec<&str> = svc["ports"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} publishes its WebSocket port"))
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(published.len(), 1, "{name}: {published:?}");
        let (host, inner) = published[0].split_once(':').unwrap();
        assert_eq!(inner, port, "{name} publishes its WebSocket port only");
        assert_eq!(
            env["PUBLIC_URL"].as_str(),
            Some(format!("ws://localhost:{host}/ws").as_str()),
            "{name}: /connect names the published port"
        );
        assert_eq!(env["REDIS_URL"].as_str(), Some("redis://redis:6379/"));
        assert_eq!(
            env["DATABASE_URL"].as_str(),
            Some(DATABASE_URL),
            "{name} reads history from the archive"
        );
        for dep in ["redis", "postgres"] {
            assert_eq!(
                svc["depends_on"][dep]["condition"].as_str(),
                Some("service_healthy"),
                "{name} waits for {dep}"
            );
        }
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
    // The Dockerfile builds the binaries the compose services run.
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("--bin server")
            && dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/server\"]")
    );
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage");
    let env = |name: &str| doc["services"][name]["environment"].clone();
    check_archive(&doc, "postgres", "archiver", None, &env("app1"));
    assert_eq!(
        env("archiver")["REDIS_URL"],
        env("app1")["REDIS_URL"],
        "the archiver reads the servers' Redis"
    );
    for dep in ["redis", "postgres"] {
        assert_eq!(
            doc["services"]["archiver"]["depends_on"][dep]["condition"].as_str(),
            Some("service_healthy"),
            "the archiver waits for {dep}"
        );
    }
}

/// What every chat server and archiver is given: on each network
/// `postgres` names that network's PostgreSQL.
const DATABASE_URL: &str = "postgres://chat:chat@postgres:5432/chat";

/// A profile's archive (the default services' with `network` `None`):
/// PostgreSQL `pg` from the official image, healthy by `pg_isready`, with
/// the user, password and database of [`DATABASE_URL`], its data in a
/// declared volume of its own, reachable as `postgres` on the network; the
/// archiver `archiver` built from the Dockerfile (which builds and ships
/// the `archiver` binary) with the servers' `DATABASE_URL`, its metrics on
/// an unpublished port, stopped by SIGTERM with time to drain, and
/// waiting for PostgreSQL to be healthy.
fn check_archive(
    doc: &serde_yaml::Value,
    pg: &str,
    archiver: &str,
    network: Option<&str>,
    server_env: &serde_yaml::Value,
) {
    let svc = |name: &str| &doc["services"][name];
    let p = svc(pg);
    assert!(
        p["image"].as_str().unwrap().starts_with("postgres:"),
        "{pg}: the official image"
    );
    let e = &p["environment"];
    assert_eq!(
        [
            &e["POSTGRES_USER"],
            &e["POSTGRES_PASSWORD"],
            &e["POSTGRES_DB"]
        ]
        .map(|v| v.as_str()),
        [Some("chat"); 3],
        "{pg} matches {DATABASE_URL}"
    );
    let check = strings(&p["healthcheck"]["test"]).join(" ");
    assert!(
        check.contains("pg_isready -U chat -d chat"),
        "{pg}: {check}"
    );
    let vols = strings(&p["volumes"]);
    assert_eq!(vols.len(), 1, "{pg}: {vols:?}");
    let (vol, path) = vols[0].split_once(':').unwrap();
    assert_eq!(path, "/var/lib/postgresql/data", "{pg}");
    assert!(doc["volumes"].get(vol).is_some(), "{pg}: volume {vol}");
    assert!(p.get("ports").is_none(), "{pg} is not published");
    match network {
        None => assert_eq!(
            pg, "postgres",
            "the default network resolves the service name"
        ),
        Some(net) => assert_eq!(
            strings(&p["networks"][net]["aliases"]),
            ["postgres"],
            "{pg} answers to postgres on the {net} network"
        ),
    }

    let a = svc(archiver);
    let e = &a["environment"];
    assert_eq!(a["build"].as_str(), Some("."), "{archiver}");
    assert_eq!(
        strings(&a["entrypoint"]),
        ["/usr/local/bin/archiver"],
        "{archiver}"
    );
    assert_eq!(e["DATABASE_URL"].as_str(), Some(DATABASE_URL), "{archiver}");
    assert_eq!(server_env["DATABASE_URL"].as_str(), Some(DATABASE_URL));
    assert_eq!(
        e["METRICS_LISTEN"].as_str(),
        Some("0.0.0.0:9200"),
        "{archiver}"
    );
    assert_eq!(strings(&a["expose"]), ["9200"], "{archiver}");
    assert!(
        a.get("ports").is_none(),
        "{archiver}: metrics not published"
    );
    assert_eq!(a["stop_signal"].as_str(), Some("SIGTERM"), "{archiver}");
    assert!(a["stop_grace_period"].as_str().is_some(), "{archiver}");
    assert_eq!(
        a["depends_on"][pg]["condition"].as_str(),
        Some("service_healthy"),
        "{archiver} waits for {pg}"
    );
    if let Some(net) = network {
        assert_eq!(strings(&a["networks"]), [net], "{archiver}");
    }
    // Only the Redis settings of the profile's servers.
    for key in [
        "REDIS_URL",
        "REDIS_SENTINELS",
        "REDIS_SENTINEL_MASTER",
        "REDIS_CLUSTER_NODES",
    ] {
        assert_eq!(e[key], server_env[key], "{archiver}: {key}");
    }

    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("--bin archiver"), "{dockerfile}");
    assert!(
        dockerfile.contains("target/release/archiver"),
        "the image ships the archiver: {dockerfile}"
    );
    assert!(dockerfile.contains("COPY --from=build /out/ /usr/local/bin/"));
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
            "sentinel-postgres",
            "sentinel-archiver",
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
        assert_eq!(e["ADMIN_LISTEN"].as_str(), Some("0.0.0.0:9100"));
        assert_eq!(s["build"].as_str(), Some("."));
        assert_eq!(
            strings(&s["networks"]["sentinel"]["aliases"]),
            std::slice::from_ref(name),
            "{app} answers to {name} on the sentinel network"
        );
        for dep in ["sentinel1", "sentinel2", "sentinel3", "sentinel-postgres"] {
            assert_eq!(
                s["depends_on"][dep]["condition"].as_str(),
                Some("service_healthy"),
                "{app} waits for {dep}"
            );
        }
        assert!(s["depends_on"].get("redis").is_none(), "{app}");
        assert!(s["depends_on"].get("postgres").is_none(), "{app}");
        assert_eq!(e["DATABASE_URL"].as_str(), Some(DATABASE_URL), "{app}");
    }

    // Its archive: the archiver asks the same sentinels for the master.
    check_archive(
        &doc,
        "sentinel-postgres",
        "sentinel-archiver",
        Some("sentinel"),
        env,
    );
    let archiver = svc("sentinel-archiver");
    assert!(archiver["environment"]["REDIS_SENTINELS"]
        .as_str()
        .is_some());
    for dep in ["sentinel1", "sentinel2", "sentinel3", "sentinel-postgres"] {
        assert_eq!(
            archiver["depends_on"][dep]["condition"].as_str(),
            Some("service_healthy"),
            "sentinel-archiver waits for {dep}"
        );
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

/// The host side of every `HOST:CONTAINER` port a service publishes.
fn host_ports(svc: &serde_yaml::Value) -> Vec<String> {
    strings(&svc["ports"])
        .iter()
        .map(|p| p.split(':').next().unwrap().to_string())
        .collect()
}

/// The `cluster` profile: six Redis Cluster nodes that announce their
/// names, a one-shot service that creates the cluster (three masters with
/// a replica each) once they all answer, three chat servers given every
/// node as `REDIS_CLUSTER_NODES`, and an HAProxy with the repository's
/// (checked) haproxy.cfg on host ports no other service takes.
#[test]
fn compose_cluster_profile_is_consistent() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    doc.apply_merge().expect("merge keys resolve");
    let services = doc["services"].as_mapping().expect("services");
    let profiled: Vec<&str> = services
        .iter()
        .filter(|(_, svc)| strings(&svc["profiles"]) == ["cluster"])
        .map(|(k, _)| k.as_str().unwrap())
        .collect();
    let node_names: Vec<String> = (1..=chat_cluster::redis_cluster::NODES)
        .map(|i| format!("redis-node{i}"))
        .collect();
    let mut expected: Vec<&str> = node_names.iter().map(String::as_str).collect();
    expected.extend([
        "redis-cluster-init",
        "cluster-app1",
        "cluster-app2",
        "cluster-app3",
        "cluster-postgres",
        "cluster-archiver",
        "cluster-haproxy",
    ]);
    assert_eq!(profiled, expected);
    let svc = |name: &str| &doc["services"][name];

    // The nodes: cluster mode, the launcher's node timeout, their own name
    // announced, persisted in a volume of their own.
    let timeout_ms = chat_cluster::redis_cluster::NODE_TIMEOUT
        .as_millis()
        .to_string();
    let mut node_volumes = Vec::new();
    for name in &node_names {
        let s = svc(name);
        assert!(
            s["image"].as_str().unwrap().starts_with("redis:7"),
            "{name}: Redis 7 announces hostnames"
        );
        let cmd = strings(&s["command"]);
        assert_eq!(cmd[0], "redis-server", "{name}");
        let opt = |flag: &str| {
            cmd.iter()
                .position(|a| a == flag)
                .and_then(|i| cmd.get(i + 1))
                .map(String::as_str)
        };
        assert_eq!(opt("--cluster-enabled"), Some("yes"), "{name}");
        assert_eq!(
            opt("--cluster-node-timeout"),
            Some(timeout_ms.as_str()),
            "{name}"
        );
        assert_eq!(
            opt("--cluster-require-full-coverage"),
            Some("no"),
            "{name}: one shard's failover must not stop the others"
        );
        assert_eq!(
            opt("--cluster-announce-hostname"),
            Some(name.as_str()),
            "{name} announces its own name"
        );
        assert_eq!(
            opt("--cluster-preferred-endpoint-type"),
            Some("hostname"),
            "{name}"
        );
        assert!(opt("--cluster-config-file").is_some(), "{name}");
        assert!(opt("--replicaof").is_none(), "{name}");
        assert!(opt("--port").is_none(), "{name} listens on 6379");
        let expose = strings(&s["expose"]);
        assert!(
            expose.contains(&"6379".to_string()) && expose.contains(&"16379".to_string()),
            "{name} exposes the client and bus ports: {expose:?}"
        );
        assert_eq!(
            strings(&s["healthcheck"]["test"]),
            ["CMD", "redis-cli", "ping"]
        );
        let vols = strings(&s["volumes"]);
        assert_eq!(vols.len(), 1, "{name}: {vols:?}");
        let (vol, path) = vols[0].split_once(':').unwrap();
        assert_eq!(path, "/data", "{name}: nodes.conf and the AOF in /data");
        assert!(
            doc["volumes"].get(vol).is_some(),
            "{name}: volume {vol} is declared"
        );
        node_volumes.push(vol.to_string());
    }
    let mut distinct = node_volumes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), node_volumes.len(), "{node_volumes:?}");

    // What the servers are told: every node, once, on its client port.
    let env = &svc("cluster-app1")["environment"];
    let seeds: Vec<&str> = env["REDIS_CLUSTER_NODES"]
        .as_str()
        .unwrap()
        .split(',')
        .collect();
    let expected_seeds: Vec<String> = node_names.iter().map(|n| format!("{n}:6379")).collect();
    assert_eq!(seeds, expected_seeds);

    // The init service: waits for every node, creates the cluster with one
    // replica per master, from the same list.
    let init = svc("redis-cluster-init");
    assert_eq!(init["restart"].as_str(), Some("no"), "one-shot");
    assert!(init["image"].as_str().unwrap().starts_with("redis:7"));
    for name in &node_names {
        assert_eq!(
            init["depends_on"][name.as_str()]["condition"].as_str(),
            Some("service_healthy"),
            "the init waits for {name}"
        );
    }
    assert_eq!(
        init["environment"]["REDIS_CLUSTER_NODES"],
        env["REDIS_CLUSTER_NODES"]
    );
    assert!(strings(&init["entrypoint"]).join(" ").contains("sh -c"));
    let script = strings(&init["command"]).join("\n");
    for part in [
        "$$REDIS_CLUSTER_NODES",
        "ping",
        "redis-cli --cluster create $$nodes --cluster-replicas 1 --cluster-yes",
        "cluster_known_nodes:1",
        "cluster_state:ok",
    ] {
        assert!(
            script.contains(part),
            "init script lacks {part:?}: {script}"
        );
    }
    // Compose turns `$$` into `$`; a lone `$` would be interpolated by it.
    assert!(
        !script.replace("$$", "").contains('$'),
        "a `$` compose would interpolate: {script}"
    );

    // The servers: the same image, REDIS_CLUSTER_NODES and no other Redis
    // setting, reachable under the names haproxy.cfg uses, started once
    // the cluster is created.
    for (i, (name, addr)) in compose_settings().servers.iter().enumerate() {
        let app = format!("cluster-app{}", i + 1);
        let s = svc(&app);
        let e = &s["environment"];
        assert_eq!(e["APP_ID"].as_str(), Some(name.as_str()), "{app}");
        for absent in ["REDIS_URL", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER"] {
            assert!(e.get(absent).is_none(), "{app} has no {absent}");
        }
        assert_eq!(e["REDIS_CLUSTER_NODES"], env["REDIS_CLUSTER_NODES"]);
        let port = addr.rsplit(':').next().unwrap();
        assert_eq!(
            e["LISTEN_ADDR"].as_str(),
            Some(format!("0.0.0.0:{port}").as_str())
        );
        assert_eq!(e["ADMIN_LISTEN"].as_str(), Some("0.0.0.0:9100"));
        assert_eq!(s["build"].as_str(), Some("."));
        assert_eq!(s["stop_signal"].as_str(), Some("SIGTERM"));
        assert_eq!(
            strings(&s["networks"]["cluster"]["aliases"]),
            std::slice::from_ref(name),
            "{app} answers to {name} on the cluster network"
        );
        assert_eq!(
            s["depends_on"]["redis-cluster-init"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{app} waits for the cluster to be created"
        );
        assert_eq!(
            s["depends_on"]["cluster-postgres"]["condition"].as_str(),
            Some("service_healthy"),
            "{app} waits for its PostgreSQL"
        );
        assert_eq!(
            s["depends_on"].as_mapping().unwrap().len(),
            2,
            "{app} depends on the init and its PostgreSQL only"
        );
        assert_eq!(e["DATABASE_URL"].as_str(), Some(DATABASE_URL), "{app}");
    }

    // Its archive: the archiver scans every master of the same nodes.
    check_archive(
        &doc,
        "cluster-postgres",
        "cluster-archiver",
        Some("cluster"),
        env,
    );
    let archiver = svc("cluster-archiver");
    assert!(archiver["environment"]["REDIS_CLUSTER_NODES"]
        .as_str()
        .is_some());
    assert_eq!(
        archiver["depends_on"]["redis-cluster-init"]["condition"].as_str(),
        Some("service_completed_successfully"),
        "cluster-archiver waits for the cluster to be created"
    );
    let app_ids: Vec<&str> = (1..=3)
        .map(|i| {
            svc(&format!("cluster-app{i}"))["environment"]["APP_ID"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(app_ids, ["app1", "app2", "app3"], "distinct APP_IDs");

    // Its own HAProxy with the repository's haproxy.cfg (which
    // `compose_haproxy_cfg_is_generated_and_valid` keeps generated), valid,
    // on host ports no other service publishes.
    let hap = svc("cluster-haproxy");
    let ports = strings(&hap["ports"]);
    let settings = compose_settings();
    let container_port = |bind: &str| bind.rsplit(':').next().unwrap().to_string();
    assert_eq!(
        ports,
        [
            format!("8082:{}", container_port(&settings.bind)),
            format!("8406:{}", container_port(&settings.stats_bind)),
        ]
    );
    let vols = strings(&hap["volumes"]);
    assert_eq!(
        vols,
        ["./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"],
        "the image's config path"
    );
    let cfg = repo().join(vols[0].split(':').next().unwrap());
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), compose_config());
    haproxy_check(&cfg);
    assert_eq!(
        strings(&hap["networks"]),
        ["cluster"],
        "only on the cluster network, where app1..3 are the cluster servers"
    );
    for app in ["cluster-app1", "cluster-app2", "cluster-app3"] {
        assert!(strings(&hap["depends_on"]).contains(&app.to_string()));
    }
    let mut published: Vec<String> = services.values().flat_map(host_ports).collect();
    let n = published.len();
    published.sort();
    published.dedup();
    assert_eq!(published.len(), n, "a host port is published twice");

    // Every service of the profile is on its network; no default or
    // sentinel one is.
    assert!(doc["networks"].get("cluster").is_some());
    for name in &profiled {
        let nets = &svc(name)["networks"];
        let on = strings(nets).contains(&"cluster".to_string()) || nets.get("cluster").is_some();
        assert!(on, "{name} is on the cluster network");
    }
    for (name, s) in services {
        if strings(&s["profiles"]) != ["cluster"] {
            let nets = &s["networks"];
            assert!(
                !strings(nets).contains(&"cluster".to_string()) && nets.get("cluster").is_none(),
                "{name:?} is not on the cluster network"
            );
        }
    }
}
