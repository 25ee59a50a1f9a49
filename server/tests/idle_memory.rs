//! Heap per idle connection, counted by a counting global allocator
//! (issue 11): a dependency bump, a bigger buffer or a field added to every
//! session must not bring the old 11 KiB back unnoticed.
//!
//! The server runs in this process (its own runtime), on a real
//! redis-server; the clients are blocking std sockets, which hold no heap
//! of their own, so what the counter grows by while they sit idle is the
//! server's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Counts the bytes currently allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Live allocations by size (sizes up to 4 KiB; larger ones in the last
/// slot), to say what an idle connection is made of when the budget fails.
static BY_SIZE: [AtomicIsize; 4097] = [const { AtomicIsize::new(0) }; 4097];

fn count(size: usize, n: isize) {
    BY_SIZE[size.min(4096)].fetch_add(n, Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counter is only arithmetic on the sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
            count(layout.size(), 1);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        count(layout.size(), -1);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new) };
        if !p.is_null() {
            LIVE.fetch_add(new as isize - layout.size() as isize, Relaxed);
            count(layout.size(), -1);
            count(new, 1);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap an idle connection may hold. Measured when this was set: 1,347
/// bytes in a release build and 1,355 in a debug one (the task with its
/// future, 640 bytes; tokio's per-socket readiness state, 256; the outbox,
/// 136; the socket handle, 48 / 56; a few strings and vectors). It was 2,134 (release) before the session's
/// future shrank from 1,048 to 504 bytes (`session.rs`, its size test). A
/// future that grows past about 530 bytes makes the task 768 and fails
/// this. See BENCHMARKS.md, "Issue 11: idle memory, second pass".
const BUDGET: isize = 1_440;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Open a WebSocket into `room` and read until its `members` frame: the
/// connection is then idle.
fn open(port: u16, room: &str, nick: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /ws?room={room}&nick={nick} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(9).any(|w| w == b"\"members\"") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    s
}

/// Invariant: an idle connection (joined, welcome and member list read)
/// holds at most [`BUDGET`] bytes of the server's heap.
#[test]
fn an_idle_connection_holds_at_most_its_heap_budget() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("redis-server is missing: run scripts/install-deps.sh");
    }
    let rport = free_port();
    let _redis = Redis(
        Command::new("redis-server")
            .args([
                "--port",
                &rport.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(rport);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = chat_server::Config::for_test("mem1", &format!("redis://127.0.0.1:{rport}/"));
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = chat_server::run(listener, config, std::future::pending()).await;
        });
    });
    wait_port(port);
    // Warm up: the rooms exist, maps and pools have grown.
    let mut socks: Vec<TcpStream> = (0..200)
        .map(|i| open(port, &format!("r{}", i % 4), &format!("w{i}")))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = LIVE.load(Relaxed);
    let sizes_before: Vec<isize> = BY_SIZE.iter().map(|c| c.load(Relaxed)).collect();
    const N: usize = 400;
    socks.extend((0..N).map(|i| open(port, &format!("r{}", i % 4), &format!("n{i}"))));
    // Let presence fan-out and the join's transient buffers drain.
    std::thread::sleep(Duration::from_secs(1));
    let after = LIVE.load(Relaxed);
    let per = (after - before) / N as isize;
    println!("heap per idle connection: {per} bytes ({N} connections)");
    // What it is made of: allocation sizes held about once per connection.
    let mut parts: Vec<(usize, f64)> = BY_SIZE
        .iter()
        .zip(&sizes_before)
        .enumerate()
        .map(|(size, (c, b))| (size, (c.load(Relaxed) - b) as f64 / N as f64))
        .filter(|(_, per_conn)| *per_conn >= 0.2)
        .collect();
    parts.sort_by(|a, b| (b.0 as f64 * b.1).total_cmp(&(a.0 as f64 * a.1)));
    for (size, per_conn) in parts.iter().take(16) {
        println!("  {per_conn:5.2} allocations of {size} bytes per connection");
    }
    assert!(
        per <= BUDGET,
        "an idle connection holds {per} bytes of heap, over the budget of {BUDGET}"
    );
    drop(socks);
}
