//! Who gets in (issue 10): tokens at the upgrade, Origin, nicks bound to
//! tokens, private and direct-message rooms, expiry and refresh, and the
//! admin listener, on real processes.

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "current-secret";
const PREVIOUS: &str = "previous-secret";

const OPTIONAL: &[&str] = &[
    "--auth",
    "optional",
    "--jwt-secret",
    SECRET,
    "--jwt-previous-secret",
    PREVIOUS,
    "--allowed-origins",
    "http://good.example",
];

const REQUIRED: &[&str] = &[
    "--auth",
    "required",
    "--jwt-secret",
    SECRET,
    "--jwt-previous-secret",
    PREVIOUS,
    "--allowed-origins",
    "http://good.example",
];

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint(secret: &str, claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A valid token for `sub` for ten minutes, with extra claims.
fn token(sub: &str, extra: Value) -> String {
    let mut c = json!({"sub": sub, "exp": now() + 600});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    mint(SECRET, c)
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Read frames for `t`; every one that mentions `room` is a leak.
async fn assert_nothing_of(c: &mut Client, room: &str, t: Duration) {
    let deadline = tokio::time::Instant::now() + t;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        let Some(f) = c.try_next(left).await else {
            return;
        };
        assert_ne!(f["room"], room, "leaked a frame of {room}: {f}");
        if f["type"] == "members" {
            assert!(
                !f.to_string().contains("private."),
                "leaked a member list: {f}"
            );
        }
    }
}

/// The next error frame (other frames skipped).
async fn error_code(c: &mut Client) -> String {
    c.until("error").await["code"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_401_and_its_reason_and_origin_with_403() {
    let c = cluster_async(1, REQUIRED).await;
    let addr = c.server_addr(0);
    let exp = now() + 600;
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg":"none","typ":"JWT"})),
        b64(&json!({"sub":"ann","exp":exp}))
    );
    let hs512 = encode(
        &Header::new(Algorithm::HS512),
        &json!({"sub":"ann","exp":exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "token required"),
        ("?token=garbage".into(), "token malformed"),
        (format!("?token={alg_none}"), "algorithm \"none\""),
        (format!("?token={hs512}"), "algorithm \"HS512\""),
        (
            format!("?token={}", mint("wrong", json!({"sub":"ann","exp":exp}))),
            "token signature invalid",
        ),
        (
            format!(
                "?token={}",
                mint(SECRET, json!({"sub":"ann","exp":now() - 5}))
            ),
            "token expired",
        ),
        (
            format!("?token={}", mint(SECRET, json!({"exp":exp}))),
            "no sub",
        ),
        (
            format!("?token={}", mint(SECRET, json!({"sub":"a b!","exp":exp}))),
            "sub may hold only",
        ),
        (
            format!("?token={}", mint(SECRET, json!({"sub":"ann"}))),
            "exp",
        ),
    ];
    for (query, why) in &cases {
        let (status, body) = upgrade_raw(&addr, None, query, "").await;
        assert_eq!(status, 401, "{query}: {body}");
        assert!(body.starts_with("401 "), "{query}: {body:?}");
        assert!(body.contains(why), "{query}: {body:?} should say {why:?}");
    }
    // Bearer header with a bad token.
    let (status, body) = upgrade_raw(&addr, None, "", "Authorization: Bearer nonsense\r\n").await;
    assert_eq!((status, body.contains("malformed")), (401, true), "{body}");

    // Good tokens: current secret, previous secret (rotation), Bearer.
    let good = token("ann", json!({}));
    assert_eq!(
        upgrade_raw(&addr, None, &format!("?token={good}"), "")
            .await
            .0,
        101
    );
    let old = mint(PREVIOUS, json!({"sub":"old","exp":exp}));
    assert_eq!(
        upgrade_raw(&addr, None, &format!("?token={old}"), "")
            .await
            .0,
        101
    );
    let hdr = format!("Authorization: Bearer {good}\r\n");
    assert_eq!(upgrade_raw(&addr, None, "", &hdr).await.0, 101);

    // Origin: a foreign one is 403 even with a good token; the allowed one
    // and none at all get 101.
    let q = format!("?token={good}");
    let (status, body) = upgrade_raw(&addr, None, &q, "Origin: http://evil.example\r\n").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("evil.example"), "{body}");
    let (status, _) = upgrade_raw(&addr, None, &q, "Origin: http://good.example\r\n").await;
    assert_eq!(status, 101);
    // Through a WebSocket client too: the welcome names the token's nick.
    let mut req = format!("{}?token={old}", c.server_ws_url(0))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Origin", "http://good.example".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap();
    let welcome: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(welcome["nick"], "old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nicks_are_bound_to_tokens_and_anonymous_clients_cannot_take_them() {
    let c = cluster_async(1, OPTIONAL).await;
    let url = c.server_ws_url(0);
    let ann_token = token("ann", json!({"name":"Ann"}));
    let mut ann = Client::connect(&format!("{url}?room=n1&nick=zed&token={ann_token}")).await;
    assert_eq!(ann.welcome["nick"], "Ann", "?nick is ignored with a token");
    ann.until("joined").await;
    let m = ann.until("members").await;
    assert_eq!(m["members"][0]["sub"], "ann", "{m}");
    assert_eq!(m["members"][0]["nick"], "Ann", "{m}");
    ann.send(json!({"type":"nick","nick":"zed"})).await;
    assert_eq!(error_code(&mut ann).await, "forbidden");

    // An anonymous client asking for Ann's nick in her room is refused;
    // in another room it may use it.
    let mut anon = Client::connect(&format!("{url}?room=n1&nick=Ann")).await;
    let e = anon.next().await;
    assert_eq!(e["code"], "nick_taken", "{e}");
    anon.send(json!({"type":"join","room":"elsewhere"})).await;
    anon.until("joined").await;
    // An anonymous member in the room cannot rename to Ann either.
    let mut bob = Client::joined(&format!("{url}?room=n1&nick=bob")).await;
    let p = ann.until("presence").await;
    assert_eq!(p["nick"], "bob");
    assert!(p.get("sub").is_none(), "anonymous presence has no sub: {p}");
    bob.send(json!({"type":"nick","nick":"Ann"})).await;
    assert_eq!(error_code(&mut bob).await, "nick_taken");
    bob.send(json!({"type":"nick","nick":"bobby"})).await;
    assert_eq!(bob.until("nick").await["nick"], "bobby");
    // Presence of an authenticated member carries its sub.
    let cat_token = token("cat", json!({}));
    let _cat = Client::joined(&format!("{url}?room=n1&token={cat_token}")).await;
    let p = loop {
        let p = bob.until("presence").await;
        if p["event"] == "join" {
            break p;
        }
    };
    assert_eq!(
        (p["nick"].clone(), p["sub"].clone()),
        (json!("cat"), json!("cat"))
    );
}

/// Invariant: two live members of a room never share a nick, even
/// anonymous ones on different instances with `--auth off`; a reconnect
/// with the same `nick_key` gets its nick back while the old connection
/// still holds it; a nick is free again once its holder leaves or renames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_members_never_share_a_nick_and_a_nick_key_reclaims_it() {
    let c = cluster_async(2, &["--auth", "off"]).await;
    let (u0, u1) = (c.server_ws_url(0), c.server_ws_url(1));
    let mut ann = Client::joined(&format!("{u0}?room=n2&nick=ann&nick_key=ann-secret-1")).await;
    // Another client, another instance: refused, and not joined.
    let mut other = Client::connect(&format!("{u1}?room=n2&nick=ann")).await;
    let e = other.next().await;
    assert_eq!(e["code"], "nick_taken", "{e}");
    let own = ann.welcome["conn_id"].clone();
    let t = tokio::time::Instant::now() + Duration::from_millis(400);
    while let Some(f) = ann.try_next(t - tokio::time::Instant::now()).await {
        assert!(
            f["type"] != "presence" || f["conn_id"] == own,
            "the refused client was announced: {f}"
        );
    }
    // A wrong key is another client.
    let mut wrong = Client::connect(&format!("{u1}?room=n2&nick=ann&nick_key=not-anns-key")).await;
    assert_eq!(error_code(&mut wrong).await, "nick_taken");
    // A member cannot rename to a held nick.
    let mut bob = Client::joined(&format!("{u1}?room=n2&nick=bob")).await;
    bob.send(json!({"type":"nick","nick":"ann"})).await;
    assert_eq!(error_code(&mut bob).await, "nick_taken");
    // The same key (a reconnect while the old connection lingers) gets it.
    let again = Client::joined(&format!("{u1}?room=n2&nick=ann&nick_key=ann-secret-1")).await;
    assert_eq!(again.welcome["nick"], "ann");
    drop(again);
    // Once every holder is gone, anyone may take it.
    drop(ann);
    let mut freed = None;
    for _ in 0..50 {
        let mut c = Client::connect(&format!("{u1}?room=n2&nick=ann")).await;
        if c.next().await["type"] == "joined" {
            freed = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed.is_some(), "the nick was freed when its holders left");
    // A renamed member's old nick is free at once.
    bob.send(json!({"type":"nick","nick":"robert"})).await;
    assert_eq!(bob.until("nick").await["nick"], "robert");
    let mut b2 = Client::connect(&format!("{u0}?room=n2&nick=bob")).await;
    assert_eq!(b2.next().await["type"], "joined");
    // A bad key is refused at the upgrade.
    let (status, body) = upgrade_raw(
        &c.server_addr(0),
        None,
        "?room=n2&nick=cat&nick_key=short",
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("nick_key"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_dm_rooms_refuse_others_and_leak_nothing() {
    let c = cluster_async(1, OPTIONAL).await;
    let url = c.server_ws_url(0);
    let ann_t = token("ann", json!({"rooms":["private.t*"]}));
    let bob_t = token("bob", json!({"rooms":["private.other"]}));
    let cat_t = token("cat", json!({}));
    let mut ann = Client::joined(&format!("{url}?room=private.team&token={ann_t}")).await;
    // Refused at the initial join, through a join frame and through who;
    // an anonymous client too.
    let mut bob = Client::connect(&format!("{url}?room=private.team&token={bob_t}")).await;
    assert_eq!(bob.next().await["code"], "forbidden");
    bob.send(json!({"type":"join","room":"lobby"})).await;
    bob.until("members").await;
    bob.send(json!({"type":"join","room":"private.team"})).await;
    assert_eq!(error_code(&mut bob).await, "forbidden");
    bob.send(json!({"type":"who","room":"private.team"})).await;
    assert_eq!(error_code(&mut bob).await, "forbidden");
    bob.send(json!({"type":"send","room":"private.team","text":"in?"}))
        .await;
    assert_eq!(error_code(&mut bob).await, "not_in_room");
    let mut anon = Client::joined(&format!("{url}?nick=eve")).await;
    anon.send(json!({"type":"join","room":"private.team","history":100}))
        .await;
    assert_eq!(error_code(&mut anon).await, "forbidden");
    anon.send(json!({"type":"who","room":"private.team"})).await;
    assert_eq!(error_code(&mut anon).await, "forbidden");
    // Ann chats; neither refused client ever sees a frame of the room.
    for i in 0..5 {
        ann.say(&format!("secret {i}"), &format!("s{i}")).await;
    }
    assert_eq!(ann.messages(5).await.len(), 5);
    let leak = Duration::from_millis(1500);
    tokio::join!(
        assert_nothing_of(&mut bob, "private.team", leak),
        assert_nothing_of(&mut anon, "private.team", leak)
    );
    // The members list Ann gets holds only her.
    ann.send(json!({"type":"who"})).await;
    let m = ann.until("members").await;
    assert_eq!(m["total"], 1, "{m}");

    // Direct messages: only the two subjects, in byte order.
    let mut ann_dm = Client::joined(&format!("{url}?room=dm.ann.bob&token={ann_t}")).await;
    let mut bob_dm = Client::joined(&format!("{url}?room=dm.ann.bob&token={bob_t}")).await;
    let mut cat = Client::connect(&format!("{url}?room=dm.ann.bob&token={cat_t}")).await;
    assert_eq!(cat.next().await["code"], "forbidden");
    let mut wrong_order = Client::connect(&format!("{url}?room=dm.bob.ann&token={ann_t}")).await;
    assert_eq!(wrong_order.next().await["code"], "forbidden");
    let mut anon_dm = Client::connect(&format!("{url}?room=dm.ann.bob&nick=ann")).await;
    assert_eq!(anon_dm.next().await["code"], "forbidden");
    ann_dm.say("hi bob", "d1").await;
    assert_eq!(bob_dm.until("message").await["text"], "hi bob");
    let leak = Duration::from_millis(1000);
    tokio::join!(
        assert_nothing_of(&mut cat, "dm.ann.bob", leak),
        assert_nothing_of(&mut anon_dm, "dm.ann.bob", leak)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_closes_with_4003_unless_refreshed() {
    let c = cluster_async(1, OPTIONAL).await;
    let url = c.server_ws_url(0);
    let short = |sub: &str| mint(SECRET, json!({"sub": sub, "exp": now() + 3}));
    let mut a = Client::joined(&format!("{url}?token={}", short("ann"))).await;
    let mut b = Client::joined(&format!("{url}?token={}", short("bob"))).await;
    // Refusals keep the connection: another sub, a bad token.
    b.send(json!({"type":"refresh","token": token("cat", json!({}))}))
        .await;
    assert_eq!(error_code(&mut b).await, "forbidden");
    b.send(json!({"type":"refresh","token":"garbage"})).await;
    assert_eq!(error_code(&mut b).await, "unauthorized");
    let later = now() + 600;
    b.send(json!({"type":"refresh","token": mint(SECRET, json!({"sub":"bob","exp":later}))}))
        .await;
    assert_eq!(b.until("refreshed").await["exp"], later);
    let (code, reason) = a.closed(Duration::from_secs(8)).await;
    assert_eq!((code, reason.as_str()), (4003, "token_expired"));
    // Bob outlived his first token and still chats.
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.say("still here", "b1").await;
    assert_eq!(b.until("message").await["text"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listen_moves_metrics_and_cluster_off_the_public_port() {
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let args: &'static [&'static str] = Box::leak(Box::new([
        "--admin-listen",
        Box::leak(admin.clone().into_boxed_str()) as &str,
    ]));
    let c = cluster_async(1, args).await;
    let public = c.server_addr(0);
    assert_eq!(get(public.clone(), "/metrics").await.0, 404);
    assert_eq!(get(public.clone(), "/cluster").await.0, 404);
    assert_eq!(get(public, "/healthz").await.0, 200);
    let (code, body) = get(admin.clone(), "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("chat_"), "{body}");
    let (code, body) = get(admin, "/cluster").await;
    assert_eq!(code, 200);
    assert!(body.contains("app1"), "{body}");
}

#[test]
fn auth_required_without_a_secret_refuses_to_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--app-id",
            "x",
            "--auth",
            "required",
        ])
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--auth required needs --jwt-secret"), "{err}");
}
