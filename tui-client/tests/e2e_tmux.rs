//! End to end: the real `tui-client` binary in tmux against a real local
//! cluster (redis-server, three chat servers, HAProxy on loopback ports).
//!
//! It checks what a person would look at: the APP_ID on screen, a message
//! sent by another client through another instance appearing, a line typed
//! in the client reaching the other client, and, after the instance the
//! client was on is killed with SIGKILL, a different APP_ID on screen
//! ("now on appK, was appN") and messages still arriving, once each (two
//! rooms flooded across the kill, every line found once and in order); then
//! a graceful stop (close 1012) of the next instance moves it again.
//!
//! Along the way (issue 12): the nick comes from a config file (`--config`),
//! `/jo<Tab>` completes to `/join `, a bracketed paste with CR line ends
//! arrives as separate lines, `/search` brings a scrolled-off line back on
//! screen, room logs are written, and a line sent while Redis is stopped
//! (`kill -STOP`, 8 s) shows exactly once.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use chat_cluster::{Cluster, ClusterOptions};
use chat_protocol::{ClientFrame, ServerFrame};
use common::Tmux;
use futures_util::{SinkExt, StreamExt};
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message;

/// Lines the second peer sends across the kill (15 a second).
const FLOOD: usize = 60;

/// The instance named in the status bar (`on appN`).
fn status_app_id(screen: &str) -> Option<String> {
    let status = screen.lines().rev().nth(1)?;
    let at = status.find("on app")?;
    let id: String = status[at + 3..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    Some(id)
}

/// Another chat client speaking the protocol directly to one instance.
struct Peer {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    app_id: String,
}

impl Peer {
    async fn connect(url: &str, nick: &str, room: &str) -> Peer {
        let url = format!("{url}?nick={nick}&room={room}");
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        .expect("peer connect timed out")
        .expect("peer connect failed");
        let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no welcome within 10s")
            .expect("welcome")
            .expect("welcome frame");
        let Message::Text(t) = first else {
            panic!("expected a welcome, got {first:?}")
        };
        let ServerFrame::Welcome { app_id, .. } = serde_json::from_str(&t).expect("welcome json")
        else {
            panic!("first frame is not a welcome: {t}")
        };
        Peer { ws, app_id }
    }

    async fn say(&mut self, text: &str) {
        let f = ClientFrame::Send {
            room: None,
            text: text.into(),
            id: None,
            action: false,
        };
        let json = serde_json::to_string(&f).unwrap();
        self.ws
            .send(Message::Text(json.into()))
            .await
            .expect("peer send");
    }

    /// Read frames until a message with `text` arrives; returns its sender.
    async fn expect_message(&mut self, text: &str, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("peer: no message {text:?} within {limit:?}"));
            let t = match next {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                other => panic!("peer on {}: connection ended: {other:?}", self.app_id),
            };
            if let Ok(ServerFrame::Message(m)) = serde_json::from_str(&t) {
                if m.text == text {
                    return m.nick;
                }
            }
        }
    }

    /// Read whatever is waiting, so the server never sees a slow reader.
    async fn drain(&mut self) {
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_millis(20), self.ws.next()).await
        {}
    }
}

/// `/save` the room shown and check that each of the flood's lines
/// (`{prefix} 0` to `{prefix} FLOOD-1`) is there exactly once, in offset
/// order, with no gap reported.
fn check_saved(tmux: &Tmux, path: &std::path::Path, prefix: &str) {
    let before = tmux.screen().matches("saved ").count();
    tmux.type_line(&format!("/save {}", path.display()));
    tmux.wait_for("the scrollback to be saved", Duration::from_secs(10), |s| {
        s.matches("saved ").count() > before
    });
    let text = std::fs::read_to_string(path).expect("reading the saved scrollback");
    let mut offsets = Vec::new();
    for i in 0..FLOOD {
        let needle = format!("{prefix} {i}");
        let hits: Vec<&str> = text.lines().filter(|l| l.ends_with(&needle)).collect();
        assert_eq!(
            hits.len(),
            1,
            "{needle:?} seen {} times:\n{text}",
            hits.len()
        );
        let offset: u64 = hits[0]
            .split_whitespace()
            .nth(1)
            .and_then(|o| o.strip_prefix('#'))
            .and_then(|o| o.parse().ok())
            .expect("an offset");
        offsets.push(offset);
    }
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets out of order: {offsets:?}"
    );
    assert!(!text.contains("missed here"), "a gap was reported:\n{text}");
}

/// SIGCONT for a stopped Redis, also when the test fails halfway.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("running kill")
        .success();
    assert!(ok, "kill {sig} {pid} failed");
}

/// The input line (the last row).
fn input_row(screen: &str) -> String {
    screen.lines().last().unwrap_or_default().to_string()
}

fn log_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("tui-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn tui_client_follows_the_cluster_through_a_killed_instance() {
    let mut cluster = Cluster::start(ClusterOptions {
        servers: 3,
        ..Default::default()
    })
    .expect("starting the local cluster (needs redis-server, haproxy and the server binary)");
    let logs = log_dir();
    let client_log = logs.join("tui-client.log");
    let room_logs = logs.join("rooms");
    // The nick, the rooms and the URL come from the config file.
    let config = logs.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "url = \"{}\"\nnick = \"tester\"\nrooms = [\"e2e\", \"e2e-b\"]\nlog_dir = \"{}\"\n",
            cluster.ws_url(),
            room_logs.display()
        ),
    )
    .unwrap();
    let program = format!(
        "{} --config {} --log-file {} --log debug --utc",
        env!("CARGO_BIN_EXE_tui-client"),
        config.display(),
        client_log.display()
    );
    let mut tmux = Tmux::start("e2e", &program, &logs);
    tmux.log = Some(client_log.clone());
    let fail_ctx = || {
        let log = std::fs::read_to_string(&client_log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        format!("client log tail (newest first):\n{}", tail.join("\n"))
    };

    // 1. The APP_ID the client landed on is on screen.
    let screen = tmux.wait_for("the client to connect", Duration::from_secs(30), |s| {
        s.contains("● connected") && status_app_id(s).is_some_and(|id| id != "–")
    });
    eprintln!("--- connected:\n{screen}");
    assert!(
        screen.contains("tester in e2e"),
        "the configured nick is not shown:\n{screen}"
    );
    let first_app = status_app_id(&screen).unwrap();
    let landed: usize = first_app
        .trim_start_matches("app")
        .parse::<usize>()
        .expect("appN")
        - 1;
    assert!(landed < cluster.len(), "{first_app} is not in the cluster");
    // The peer talks to an instance the client is not on.
    let other = (landed + 1) % cluster.len();

    let rt = Runtime::new().unwrap();
    let mut peer = rt.block_on(Peer::connect(&cluster.server_ws_url(other), "peer", "e2e"));
    assert_eq!(peer.app_id, cluster.app_id(other));

    // 2. A message through another instance appears.
    let hello = format!("hello via {}", peer.app_id);
    rt.block_on(peer.say(&hello));
    tmux.wait_for("the peer's message", Duration::from_secs(10), |s| {
        s.contains(&hello)
    });
    // ...and what the user types reaches the peer.
    tmux.type_line("typed in tmux ünïcödé 日本");
    let from =
        rt.block_on(peer.expect_message("typed in tmux ünïcödé 日本", Duration::from_secs(10)));
    assert_eq!(from, "tester");
    tmux.wait_for("the typed line's echo", Duration::from_secs(10), |s| {
        s.lines().any(|l| l.contains("tester │ typed in tmux"))
    });

    // Tab completes a command with a space, and Enter then runs it.
    tmux.cmd(&["send-keys", "-t", "main", "-l", "/jo"]);
    tmux.cmd(&["send-keys", "-t", "main", "Tab"]);
    let screen = tmux.wait_for("/jo<Tab> to complete", Duration::from_secs(5), |s| {
        input_row(s).contains("/join")
    });
    assert!(
        input_row(&screen).ends_with("/join") || input_row(&screen).contains("/join "),
        "{}",
        input_row(&screen)
    );
    assert!(!input_row(&screen).contains("/join:"), "{screen}");
    tmux.type_line("e2e-b");
    tmux.wait_for("/join to run", Duration::from_secs(5), |s| {
        s.contains("tester in e2e-b")
    });
    assert!(!tmux.screen().contains("unknown command"));
    tmux.cmd(&["send-keys", "-t", "main", "M-1"]);

    // A bracketed paste whose lines end in CR arrives as two lines.
    tmux.cmd(&[
        "set-buffer",
        "-b",
        "crpaste",
        "pasted line one\rpasted line two",
    ]);
    tmux.cmd(&["paste-buffer", "-p", "-b", "crpaste", "-t", "main"]);
    tmux.cmd(&["send-keys", "-t", "main", "Enter"]);
    rt.block_on(peer.expect_message("pasted line one\npasted line two", Duration::from_secs(10)));
    let screen = tmux.wait_for("the pasted lines", Duration::from_secs(10), |s| {
        s.lines().any(|l| l.contains("tester │ pasted line one"))
    });
    assert!(
        !screen.contains("pasted line onepasted"),
        "the lines were glued:\n{screen}"
    );
    assert!(
        screen
            .lines()
            .any(|l| l.contains("pasted line two") && !l.contains("one")),
        "the second line is not on a row of its own:\n{screen}"
    );

    // 3. Kill the instance under the client while a second peer on
    //    another instance keeps talking: it reconnects elsewhere.
    // One flooder per room the client is in (each connection has its own
    // rate limit): both rooms must resume, not only the one on screen.
    let mut flooder = rt.block_on(Peer::connect(
        &cluster.server_ws_url(other),
        "flooder",
        "e2e",
    ));
    let mut flooder_b = rt.block_on(Peer::connect(
        &cluster.server_ws_url(other),
        "flooder-b",
        "e2e-b",
    ));
    let flood = rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / 15));
        for i in 0..FLOOD {
            tick.tick().await;
            flooder.say(&format!("seq {i}")).await;
            flooder_b.say(&format!("bseq {i}")).await;
        }
        flooder.drain().await;
        flooder_b.drain().await;
    });
    std::thread::sleep(Duration::from_millis(1200));
    cluster.kill_server(landed);
    let screen = tmux.wait_for(
        "the client to land on another instance",
        Duration::from_secs(30),
        |s| s.contains(&format!("was {first_app}")) && s.contains("● connected"),
    );
    eprintln!("--- after killing {first_app}:\n{screen}");
    let second_app = status_app_id(&screen).unwrap();
    assert_ne!(second_app, first_app, "{screen}\n{}", fail_ctx());
    assert!(
        screen.contains(&format!("now on {second_app}, was {first_app}")),
        "{screen}"
    );
    assert!(
        screen.contains(&format!("disconnected from {first_app}")),
        "the outage is not told in the scrollback:\n{screen}"
    );

    // 4. Messages still arrive, once each, and sending still works.
    rt.block_on(peer.drain());
    let after = format!("after the kill, via {}", peer.app_id);
    rt.block_on(peer.say(&after));
    let screen = tmux.wait_for("a message after the kill", Duration::from_secs(10), |s| {
        s.contains(&after)
    });
    for line in [&hello, &after] {
        assert_eq!(
            screen.matches(line.as_str()).count(),
            1,
            "{line:?} not shown exactly once:\n{screen}"
        );
    }
    eprintln!("--- a message after the kill:\n{screen}");
    // Every line of the flood arrived exactly once, in offset order,
    // including those sent while the client was reconnecting.
    rt.block_on(flood).expect("flood task");
    tmux.wait_for("the end of the flood", Duration::from_secs(15), |s| {
        s.contains(&format!("seq {}", FLOOD - 1))
    });
    check_saved(&tmux, &logs.join("e2e-room.log"), "<flooder> seq");
    // The other room, shown with Alt+2.
    tmux.cmd(&["send-keys", "-t", "main", "M-2"]);
    tmux.wait_for("the second room's flood", Duration::from_secs(15), |s| {
        s.contains(&format!("bseq {}", FLOOD - 1)) && s.contains("tester in e2e-b")
    });
    check_saved(&tmux, &logs.join("e2e-b-room.log"), "<flooder-b> bseq");
    tmux.cmd(&["send-keys", "-t", "main", "M-1"]);

    // /search brings a line that scrolled off back on screen.
    let screen = tmux.wait_for("room 1 again", Duration::from_secs(5), |s| {
        s.contains("tester in e2e │") || s.contains("tester in e2e ")
    });
    let hello_row = |s: &str| s.lines().any(|l| l.contains(&format!("peer │ {hello}")));
    assert!(
        !hello_row(&screen),
        "the line to search for is still on screen:\n{screen}"
    );
    tmux.type_line(&format!("/search {hello}"));
    let screen = tmux.wait_for("the search to jump", Duration::from_secs(5), |s| {
        hello_row(s) && s.contains("1 of 1")
    });
    eprintln!("--- /search:\n{screen}");
    tmux.cmd(&["send-keys", "-t", "main", "Escape"]);
    tmux.wait_for("Esc to end the search", Duration::from_secs(5), |s| {
        !s.contains("1 of 1") && s.contains(&format!("seq {}", FLOOD - 1))
    });
    // The room log has the talk, with dates.
    let room_log = std::fs::read_to_string(room_logs.join("e2e.log")).expect("the room log");
    assert!(
        room_log
            .lines()
            .any(|l| l.ends_with(&format!("<peer> {hello}")) && l.starts_with("20")),
        "{room_log}"
    );

    tmux.type_line("still here");
    let from = rt.block_on(peer.expect_message("still here", Duration::from_secs(10)));
    assert_eq!(from, "tester");

    // 5. A graceful stop (SIGTERM: close 1012) of the instance it is on
    //    now moves it once more.
    let second: usize = second_app
        .trim_start_matches("app")
        .parse::<usize>()
        .unwrap()
        - 1;
    // The one instance left: a new peer talks through it, and the client
    // must land on it.
    let last = (0..cluster.len())
        .find(|i| *i != landed && *i != second)
        .unwrap();
    let mut peer = rt.block_on(Peer::connect(&cluster.server_ws_url(last), "peer3", "e2e"));
    cluster
        .stop_server(second)
        .expect("stopping the second instance");
    let screen = tmux.wait_for("a move after SIGTERM", Duration::from_secs(30), |s| {
        s.contains(&format!("was {second_app})")) && s.contains("● connected")
    });
    assert!(
        screen.contains("1012"),
        "the restart close was not reported:\n{screen}"
    );
    assert_eq!(
        status_app_id(&screen).unwrap(),
        cluster.app_id(last),
        "{screen}"
    );
    tmux.type_line("after the restart");
    let from = rt.block_on(peer.expect_message("after the restart", Duration::from_secs(10)));
    assert_eq!(from, "tester");

    // 6. Redis stalls (SIGSTOP, 8 s) while a line is sent: it shows once.
    let redis = cluster.redis_pid().expect("the Redis pid");
    signal(redis, "-STOP");
    let resume = Resume(redis);
    tmux.type_line("sent during the stall");
    std::thread::sleep(Duration::from_secs(8));
    drop(resume);
    let from = rt.block_on(peer.expect_message("sent during the stall", Duration::from_secs(40)));
    assert_eq!(from, "tester");
    let screen = tmux.wait_for(
        "the stalled line to be delivered",
        Duration::from_secs(40),
        |s| {
            s.lines()
                .any(|l| l.contains("tester │ sent during the stall") && !l.contains("sending"))
        },
    );
    eprintln!("--- after the Redis stall:\n{screen}");
    assert_eq!(
        screen.matches("sent during the stall").count(),
        1,
        "the line is not shown exactly once:\n{screen}\n{}",
        fail_ctx()
    );
    let saved = logs.join("stall.log");
    let before = tmux.screen().matches("saved ").count();
    tmux.type_line(&format!("/save {}", saved.display()));
    tmux.wait_for("the scrollback to be saved", Duration::from_secs(10), |s| {
        s.matches("saved ").count() > before
    });
    let text = std::fs::read_to_string(&saved).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.ends_with("<tester> sent during the stall"))
            .count(),
        1,
        "{text}"
    );

    // 7. /quit ends the program and gives the terminal back.
    tmux.type_line("/quit");
    let status = tmux.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.as_deref(),
        Some("0"),
        "the client did not exit cleanly on /quit\n{}\n{}",
        tmux.screen(),
        fail_ctx()
    );
    assert_eq!(tmux.display("#{alternate_on}#{mouse_any_flag}"), "00");
    drop(tmux);
    drop(cluster);
    // Passed: the logs are not needed (a failure keeps them for a look).
    let _ = std::fs::remove_dir_all(&logs);
}
