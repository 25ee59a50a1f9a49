//! Golden JSON: the exact bytes of every frame. A wire change shows up here
//! as a diff, on purpose. Every variant also round-trips.

use chat_protocol::splice::{encode_tail, peek_epoch, peek_offset, splice, MessageTail};
use chat_protocol::*;

fn limits() -> Limits {
    Limits::DEFAULT
}

fn check_server(frame: ServerFrame, golden: &str) {
    assert_eq!(frame.to_json(), golden);
    let back: ServerFrame = serde_json::from_str(golden).unwrap();
    assert_eq!(back, frame);
}

fn check_client(frame: ClientFrame, golden: &str) {
    assert_eq!(serde_json::to_string(&frame).unwrap(), golden);
    let back: ClientFrame = serde_json::from_str(golden).unwrap();
    assert_eq!(back, frame);
    assert_eq!(classify(golden), Ok(Inbound::Frame(frame)));
}

#[test]
fn client_frames() {
    check_client(
        ClientFrame::Join {
            room: "lobby".into(),
            since: Some(41),
            epoch: Some("a1".into()),
            history: None,
        },
        r#"{"type":"join","room":"lobby","since":41,"epoch":"a1"}"#,
    );
    check_client(
        ClientFrame::Join {
            room: "r".into(),
            since: None,
            epoch: None,
            history: Some(50),
        },
        r#"{"type":"join","room":"r","history":50}"#,
    );
    check_client(
        ClientFrame::Leave { room: "r".into() },
        r#"{"type":"leave","room":"r"}"#,
    );
    check_client(
        ClientFrame::Send {
            room: Some("r".into()),
            text: "hi".into(),
            id: Some("c1".into()),
            action: false,
        },
        r#"{"type":"send","room":"r","text":"hi","id":"c1"}"#,
    );
    check_client(
        ClientFrame::Send {
            room: None,
            text: "waves".into(),
            id: None,
            action: true,
        },
        r#"{"type":"send","text":"waves","action":true}"#,
    );
    check_client(
        ClientFrame::Nick { nick: "bob".into() },
        r#"{"type":"nick","nick":"bob"}"#,
    );
    check_client(ClientFrame::Who { room: None }, r#"{"type":"who"}"#);
    check_client(
        ClientFrame::Refresh {
            token: "a.b.c".into(),
        },
        r#"{"type":"refresh","token":"a.b.c"}"#,
    );
    check_client(
        ClientFrame::Ping {
            id: Some("p".into()),
            ts: Some(5),
        },
        r#"{"type":"ping","id":"p","ts":5}"#,
    );
}

#[test]
fn message_alias_is_send() {
    let f: ClientFrame = serde_json::from_str(r#"{"type":"message","text":"x"}"#).unwrap();
    assert_eq!(
        f,
        ClientFrame::Send {
            room: None,
            text: "x".into(),
            id: None,
            action: false
        }
    );
}

#[test]
fn server_frames() {
    check_server(
        ServerFrame::Welcome {
            app_id: "app2".into(),
            conn_id: "app2-1f-7".into(),
            nick: "guest7".into(),
            room: "lobby".into(),
            protocol: PROTOCOL_VERSION,
            limits: limits(),
        },
        r#"{"type":"welcome","app_id":"app2","conn_id":"app2-1f-7","nick":"guest7","room":"lobby","protocol":1,"limits":{"max_message_bytes":4096,"max_frame_bytes":16384,"rate_per_sec":20,"burst":40,"max_rooms":16,"history_len":1000,"idle_timeout_ms":90000,"ping_interval_ms":30000}}"#,
    );
    check_server(
        ServerFrame::Joined {
            room: "lobby".into(),
            head: 12,
            epoch: String::new(),
            recovered: None,
        },
        r#"{"type":"joined","room":"lobby","head":12}"#,
    );
    check_server(
        ServerFrame::Joined {
            room: "lobby".into(),
            head: 12,
            epoch: "k3f9a1".into(),
            recovered: Some(false),
        },
        r#"{"type":"joined","room":"lobby","head":12,"epoch":"k3f9a1","recovered":false}"#,
    );
    check_server(
        ServerFrame::Reset {
            room: "r".into(),
            epoch: "b2".into(),
            previous: "a1".into(),
            last: 41,
        },
        r#"{"type":"reset","room":"r","epoch":"b2","previous":"a1","last":41}"#,
    );
    check_server(
        ServerFrame::Sent {
            room: "r".into(),
            id: "m1".into(),
            offset: 41,
            epoch: "a1".into(),
            duplicate: true,
        },
        r#"{"type":"sent","room":"r","id":"m1","offset":41,"epoch":"a1","duplicate":true}"#,
    );
    check_server(
        ServerFrame::error(ErrorCode::Timeout, "maybe", Some("m2".into())),
        r#"{"type":"error","code":"timeout","message":"maybe","id":"m2"}"#,
    );
    check_server(
        ServerFrame::Left {
            room: "lobby".into(),
        },
        r#"{"type":"left","room":"lobby"}"#,
    );
    check_server(
        ServerFrame::Message(ChatMessage {
            room: "lobby".into(),
            offset: 7,
            epoch: String::new(),
            nick: "ann".into(),
            text: "hello \"you\"".into(),
            app_id: "app1".into(),
            ts: 1_700_000_000_000,
            id: Some("m1".into()),
            action: false,
        }),
        r#"{"type":"message","room":"lobby","offset":7,"nick":"ann","text":"hello \"you\"","app_id":"app1","ts":1700000000000,"id":"m1"}"#,
    );
    check_server(
        ServerFrame::Gap {
            room: "r".into(),
            from: 1,
            to: 99,
        },
        r#"{"type":"gap","room":"r","from":1,"to":99}"#,
    );
    check_server(
        ServerFrame::Presence {
            room: "r".into(),
            event: PresenceEvent::Nick,
            conn_id: "c".into(),
            nick: "new".into(),
            app_id: "app3".into(),
            ts: 1,
            old_nick: Some("old".into()),
            sub: None,
        },
        r#"{"type":"presence","room":"r","event":"nick","conn_id":"c","nick":"new","app_id":"app3","ts":1,"old_nick":"old"}"#,
    );
    check_server(
        ServerFrame::Presence {
            room: "r".into(),
            event: PresenceEvent::Join,
            conn_id: "c".into(),
            nick: "Ann".into(),
            app_id: "app3".into(),
            ts: 1,
            old_nick: None,
            sub: Some("ann".into()),
        },
        r#"{"type":"presence","room":"r","event":"join","conn_id":"c","nick":"Ann","app_id":"app3","ts":1,"sub":"ann"}"#,
    );
    check_server(
        ServerFrame::Members {
            room: "r".into(),
            members: vec![Member {
                conn_id: "c".into(),
                nick: "n".into(),
                app_id: "app1".into(),
                sub: None,
            }],
            total: 1,
        },
        r#"{"type":"members","room":"r","members":[{"conn_id":"c","nick":"n","app_id":"app1"}],"total":1}"#,
    );
    check_server(
        ServerFrame::Members {
            room: "r".into(),
            members: vec![Member {
                conn_id: "c".into(),
                nick: "Ann".into(),
                app_id: "app1".into(),
                sub: Some("ann".into()),
            }],
            total: 1,
        },
        r#"{"type":"members","room":"r","members":[{"conn_id":"c","nick":"Ann","app_id":"app1","sub":"ann"}],"total":1}"#,
    );
    check_server(
        ServerFrame::Refreshed { exp: 1700000000 },
        r#"{"type":"refreshed","exp":1700000000}"#,
    );
    check_server(
        ServerFrame::error(ErrorCode::Forbidden, "private", None),
        r#"{"type":"error","code":"forbidden","message":"private"}"#,
    );
    check_server(
        ServerFrame::error(ErrorCode::NickTaken, "taken", None),
        r#"{"type":"error","code":"nick_taken","message":"taken"}"#,
    );
    check_server(
        ServerFrame::error(ErrorCode::Unauthorized, "bad token", None),
        r#"{"type":"error","code":"unauthorized","message":"bad token"}"#,
    );
    check_server(
        ServerFrame::Nick {
            nick: "b".into(),
            old: "a".into(),
        },
        r#"{"type":"nick","nick":"b","old":"a"}"#,
    );
    check_server(
        ServerFrame::Pong {
            id: None,
            ts: Some(3),
            server_ts: 4,
        },
        r#"{"type":"pong","ts":3,"server_ts":4}"#,
    );
    check_server(
        ServerFrame::error(ErrorCode::RateLimited, "slow down", Some("m9".into())),
        r#"{"type":"error","code":"rate_limited","message":"slow down","id":"m9"}"#,
    );
}

#[test]
fn members_without_total_still_parse() {
    let f: ServerFrame =
        serde_json::from_str(r#"{"type":"members","room":"r","members":[]}"#).unwrap();
    assert_eq!(
        f,
        ServerFrame::Members {
            room: "r".into(),
            members: vec![],
            total: 0
        }
    );
}

#[test]
fn unknown_error_codes_parse() {
    let f: ServerFrame =
        serde_json::from_str(r#"{"type":"error","code":"brand_new","message":"x"}"#).unwrap();
    assert!(matches!(
        f,
        ServerFrame::Error {
            code: ErrorCode::Unknown,
            ..
        }
    ));
}

#[test]
fn spliced_message_is_a_message_frame() {
    let tail = encode_tail(&MessageTail {
        room: "lobby",
        nick: "ann",
        text: "hi ✓ \"q\"",
        app_id: "app1",
        ts: 9,
        id: Some("m1"),
        action: true,
    });
    assert_eq!(
        tail,
        r#""room":"lobby","nick":"ann","text":"hi ✓ \"q\"","app_id":"app1","ts":9,"id":"m1","action":true}"#
    );
    let frame = splice(42, "e1", &tail);
    assert_eq!(peek_offset(frame.as_bytes()), Some(42));
    assert_eq!(peek_epoch(frame.as_bytes()), Some("e1"));
    assert_eq!(
        peek_epoch(br#"{"type":"message","offset":4,"room":"x"}"#),
        None
    );
    let parsed: ServerFrame = serde_json::from_str(&frame).unwrap();
    assert_eq!(
        parsed,
        ServerFrame::Message(ChatMessage {
            room: "lobby".into(),
            offset: 42,
            epoch: "e1".into(),
            nick: "ann".into(),
            text: "hi ✓ \"q\"".into(),
            app_id: "app1".into(),
            ts: 9,
            id: Some("m1".into()),
            action: true,
        })
    );
    assert_eq!(peek_offset(br#"{"type":"presence"}"#), None);
    assert_eq!(peek_offset(br#"{"type":"message","offset":x,"#), None);
}

#[test]
fn classification() {
    assert_eq!(classify("hello"), Ok(Inbound::Text));
    assert_eq!(classify("  {\"text\":\"no type\"} "), Ok(Inbound::Text));
    assert_eq!(classify("{oops"), Ok(Inbound::Text));
    assert_eq!(classify("[1,2]"), Ok(Inbound::Text));
    assert_eq!(classify("{}"), Ok(Inbound::Text));
    let e = classify(r#"{"type":"send","text":}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadJson);
    let e = classify(r#"{"type":"dance","id":"x1"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownType);
    assert_eq!(e.id.as_deref(), Some("x1"));
    assert!(e.message.contains("join"));
    let e = classify(r#"{"type":"send"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadFrame);
    assert!(e.message.contains("text"), "{}", e.message);
    let e = classify(r#"{"type":7}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadFrame);
    let e = classify(r#"{"type":"join","room":5}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadFrame);
}

#[test]
fn close_codes() {
    assert_eq!(close::name(close::SLOW_CONSUMER), "slow_consumer");
    assert!(close::should_reconnect(close::SERVICE_RESTART));
    assert!(!close::should_reconnect(close::POLICY));
    assert_eq!(close::TOKEN_EXPIRED, 4003);
    assert_eq!(close::name(close::TOKEN_EXPIRED), "token_expired");
    assert!(close::should_reconnect(close::TOKEN_EXPIRED));
    for code in [
        ErrorCode::BadJson,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Forbidden,
        ErrorCode::NickTaken,
        ErrorCode::Unauthorized,
    ] {
        assert_eq!(
            serde_json::to_string(&code).unwrap(),
            format!("\"{}\"", code.as_str())
        );
    }
}
