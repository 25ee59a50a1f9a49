//! The terminal is given back on every way out: after a panic and after a
//! normal quit, the real binary in tmux leaves no alternate screen, no
//! mouse reporting and no raw mode behind.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Tmux;

/// Run the client in tmux (see [`Tmux::start`] for what the shell around
/// it records).
fn run(name: &str, extra: &str, dir: &Path) -> Tmux {
    // Nothing listens on port 9 (discard) here: the client keeps retrying,
    // which is fine, the UI is up all the same.
    let program = format!(
        "{} --url ws://127.0.0.1:9/ws --nick t --log-file {dir}/client.log {extra} 2>{dir}/stderr.txt",
        env!("CARGO_BIN_EXE_tui-client"),
        dir = dir.display()
    );
    Tmux::start(name, &program, dir)
}

fn assert_restored(tmux: &Tmux) {
    assert!(
        tmux.wait_exit(Duration::from_secs(15)).is_some(),
        "the client did not end:\n{}",
        tmux.screen()
    );
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "0",
        "left in the alternate screen"
    );
    assert_eq!(
        tmux.display("#{mouse_any_flag}"),
        "0",
        "mouse reporting left on"
    );
    let stty = tmux.stty_after();
    let flags: Vec<&str> = stty.split_whitespace().collect();
    for flag in ["icanon", "echo", "isig"] {
        assert!(flags.contains(&flag), "{flag} not restored: {stty}");
    }
}

#[test]
fn restored_after_a_panic() {
    let dir = std::env::temp_dir().join(format!("tui-panic-{}", std::process::id()));
    let tmux = run("panic", "--panic-after-start", &dir);
    assert_restored(&tmux);
    let stderr = std::fs::read_to_string(dir.join("stderr.txt")).unwrap();
    assert!(stderr.contains("--panic-after-start"), "{stderr}");
    drop(tmux);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restored_after_ctrl_c() {
    let dir = std::env::temp_dir().join(format!("tui-quit-{}", std::process::id()));
    let tmux = run("quit", "", &dir);
    tmux.wait_for("the UI", Duration::from_secs(15), |s| {
        s.contains("reconnecting") || s.contains("connecting")
    });
    assert_eq!(
        tmux.display("#{alternate_on}#{mouse_any_flag}"),
        "11",
        "the UI owns the screen"
    );
    tmux.cmd(&["send-keys", "-t", "main", "C-c"]);
    assert_restored(&tmux);
    drop(tmux);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The client's pid: below the pane's `sh` (and the `timeout` around it).
fn client_pid(tmux: &Tmux) -> u32 {
    let mut pid: u32 = tmux.display("#{pane_pid}").parse().expect("pane pid");
    for _ in 0..3 {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "tui-client" {
            return pid;
        }
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .expect("reading a process's children");
        pid = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the client runs under sh and timeout");
    }
    panic!("no tui-client process below the pane");
}

#[test]
fn restored_after_sigterm() {
    let dir = std::env::temp_dir().join(format!("tui-term-{}", std::process::id()));
    let tmux = run("term", "", &dir);
    tmux.wait_for("the UI", Duration::from_secs(15), |s| {
        s.contains("connecting")
    });
    let pid = client_pid(&tmux);
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid} failed");
    assert_restored(&tmux);
    drop(tmux);
    let _ = std::fs::remove_dir_all(&dir);
}
