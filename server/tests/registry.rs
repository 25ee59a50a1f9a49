//! `GET /connect` (issue 11): the service registry names the least-loaded
//! healthy instance, through HAProxy, and a client connects straight to it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

async fn ask(addr: &str) -> (u16, Value) {
    let (status, body) = get(addr.to_string(), "/connect").await;
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{status} {body:?}: {e}"));
    (status, v)
}

/// Invariant: `/connect` never names an instance that holds more
/// connections than another healthy one (within one load report), nor a
/// dead one; the URL it names reaches that very instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_names_the_least_loaded_live_instance_and_its_url_reaches_it() {
    let mut c = cluster_async(3, &["--heartbeat", "500ms", "--instance-ttl", "1500ms"]).await;
    let proxy = c.addr();
    // 40 sockets held on app1.
    let mut held = Vec::new();
    for i in 0..40 {
        held.push(Client::joined(&format!("{}?room=reg&nick=h{i}", c.server_ws_url(0))).await);
    }
    assert_eq!(held[0].app_id(), "app1");
    // Asked at once, through HAProxy (whichever instance answers): never
    // app1, and a burst of asks is spread over the others.
    let mut named: HashMap<String, usize> = HashMap::new();
    for _ in 0..12 {
        let (status, v) = ask(&proxy).await;
        assert_eq!(status, 200, "{v}");
        let app = v["app_id"].as_str().unwrap().to_string();
        assert_ne!(app, "app1", "app1 holds 40 sockets: {v}");
        let url = v["url"].as_str().unwrap();
        assert!(
            url.starts_with("ws://127.0.0.1:") && url.ends_with("/ws"),
            "{v}"
        );
        *named.entry(app).or_default() += 1;
    }
    assert_eq!(
        named.len(),
        2,
        "asks are spread over app2 and app3: {named:?}"
    );

    // The named URL reaches the named instance.
    let (_, v) = ask(&proxy).await;
    let direct = Client::joined(&format!(
        "{}?room=reg&nick=direct",
        v["url"].as_str().unwrap()
    ))
    .await;
    assert_eq!(direct.app_id(), v["app_id"].as_str().unwrap());

    // A killed instance is never named once its entry expires.
    c = tokio::task::spawn_blocking(move || {
        c.kill_server(1);
        c
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    for _ in 0..6 {
        let (status, v) = ask(&proxy).await;
        assert_eq!(status, 200, "{v}");
        assert_ne!(v["app_id"], "app2", "app2 is dead: {v}");
    }
    // With app1 the only other one, app3 is named while it holds fewer.
    let (_, v) = ask(&c.server_addr(0)).await;
    assert_eq!(v["app_id"], "app3", "{v}");
    assert!(v["connections"].as_u64().unwrap() < 40, "{v}");
    drop(held);
}
