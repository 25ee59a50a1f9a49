//! A connection's outbound queue: bounded, many producers (fan-out of every
//! room it is in), one consumer (its session task), and the reason to stop
//! (slow consumer, shutdown) in the same place: the session polls one lock,
//! not a shared cancellation token that every socket would contend on.
//!
//! Not a tokio mpsc: that allocates about a kilobyte per channel up front
//! (cache-padded fields and a first block of slots), which would dominate
//! the memory of an idle connection. This is one small allocation, no
//! buffer until something is queued, and one lock per push.
//!
//! # Direct writes
//! The fan-out does not wake a connection's task for every delivery. A
//! push into an idle outbox (empty, nobody writing, the task waiting)
//! leaves the task asleep and says so ([`Push::Idle`]); once the fan-out
//! has let go of the hub's lock it calls [`Outbox::flush`], which writes
//! what is queued straight to the socket with one non-blocking `writev`.
//! Only what the kernel refuses stays queued, and then the task is woken
//! to write it. Whoever writes (the fan-out's flush, the session's batch,
//! the session's own replies) holds the socket by the `writing` flag or
//! this lock, so frames never interleave, and a frame the kernel took only
//! in part is finished before anything else is written.
//!
//! # The delivery filter
//! Each room the connection is in has a filter entry here: the epoch and
//! the last offset sent (what the session used to keep). A chat frame at
//! or below it in the same epoch is a live copy of something the join's
//! replay already sent, and is dropped; the filter is applied to queued
//! frames in queue order by whoever writes them. A room whose join is
//! still replaying is not settled: its frames wait for the session.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::net::TcpStream;

use crate::hub::{Out, RoomKey};

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// Queued into an idle outbox without waking its task: call
    /// [`Outbox::flush`] once the hub's lock is released.
    Idle,
    /// The queue was full: the frame was dropped and the connection kicked.
    /// `true` the first time (count it once).
    Full(bool),
    /// The connection is gone; nothing was queued.
    Closed,
}

/// Why the connection must end, as told through its outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Its queue filled: a slow consumer.
    SlowConsumer,
    /// The server is shutting down.
    Restart,
}

/// What the consumer gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// Frames were moved into the batch (already filtered); the first
    /// `skip` bytes of the first one's encoding are already written. The
    /// consumer owns the socket until [`Outbox::end_write`].
    Frames { skip: usize },
    /// Redis was replaced and may have lost presence: record it again.
    Refresh,
    /// The shared clock ticked (`crate::session::run_clock`): time to look
    /// at the ping and idle deadlines.
    Tick,
    /// The connection must end.
    Stop(Stop),
}

#[derive(Debug, Default)]
struct Inner {
    buf: VecDeque<Out>,
    waker: Option<Waker>,
    stop: Option<Stop>,
    closed: bool,
    /// Asked to record presence again (see [`Recv::Refresh`]).
    refresh: bool,
    /// The shared clock ticked (see [`Recv::Tick`]).
    tick: bool,
    /// The session owns the socket for a write of its own (or of frames
    /// it took from `buf`): nobody else writes.
    writing: bool,
    /// A push found the outbox idle and left the consumer asleep: a flush
    /// is due, and later pushes ride along without waking it.
    flush_pending: bool,
    /// How many frames at the front of `buf` the filter already admitted
    /// (a direct write took them, but the kernel did not take them all).
    admitted: usize,
    /// Bytes of the first queued frame's encoding already written (the
    /// kernel took a direct write in part).
    partial: usize,
    /// The delivery filter of each room the connection is in.
    rooms: Vec<RoomFilter>,
}

/// What the connection was sent of one room (see the module docs).
#[derive(Debug)]
struct RoomFilter {
    key: RoomKey,
    /// The epoch of `last`: offsets compare only within one epoch.
    epoch: Arc<str>,
    /// The highest chat offset of `epoch` sent in this room (or the point
    /// the client resumed from, or the head it joined at).
    last: u64,
    /// The join's replay is over: frames may be written by the fan-out.
    settled: bool,
}

impl Inner {
    /// Whether `d` is to be sent, and if so record it as sent (the last
    /// offset of its room). `None`: its room is not settled and `commit`
    /// was not asked (the fan-out leaves it to the session).
    fn admit(&mut self, d: &Out, settled_only: bool) -> Option<bool> {
        let Some(r) = self.rooms.iter_mut().find(|r| r.key == d.room) else {
            // Left the room while the frame was queued (or, for the
            // fan-out, the join has not recorded the room yet).
            return if settled_only { None } else { Some(false) };
        };
        if settled_only && !r.settled {
            return None;
        }
        if d.offset == 0 {
            return Some(true);
        }
        if !Arc::ptr_eq(&r.epoch, &d.epoch) && *r.epoch != *d.epoch {
            r.epoch = d.epoch.clone();
        } else if d.offset <= r.last {
            return Some(false);
        }
        r.last = d.offset;
        Some(true)
    }

    fn wake(&mut self) -> Option<Waker> {
        self.waker.take()
    }

    /// A burst grew the queue: once it is empty, an idle connection goes
    /// back to the smallest buffer (a presence burst on join had left up
    /// to 512 bytes per idle connection).
    fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 4 {
            self.buf = VecDeque::new();
        }
    }
}

/// The queue; share it as `Arc<Outbox>`.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    cap: usize,
    /// The socket, for direct writes (none in unit tests).
    tcp: Option<Arc<TcpStream>>,
}

/// Most frames one direct write takes (each frame is two slices).
const DIRECT_BATCH: usize = 64;

impl Outbox {
    /// A queue of at most `cap` frames, without direct writes.
    pub fn new(cap: usize) -> Arc<Self> {
        Self::with_socket(cap, None)
    }

    /// A queue of at most `cap` frames whose fan-out writes to `tcp`
    /// directly when it can.
    pub fn with_socket(cap: usize, tcp: Option<Arc<TcpStream>>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            cap: cap.max(1),
            tcp,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a frame, or kick the consumer if the queue is full. Into an
    /// idle outbox with a socket the consumer is not woken: the caller
    /// must [`Outbox::flush`] it (see the module docs).
    pub fn push(&self, frame: Out) -> Push {
        let mut q = self.lock();
        if q.closed {
            return Push::Closed;
        }
        if q.stop.is_some() {
            return Push::Full(false);
        }
        if q.buf.len() >= self.cap {
            q.stop = Some(Stop::SlowConsumer);
            let w = q.wake();
            drop(q);
            if let Some(w) = w {
                w.wake();
            }
            return Push::Full(true);
        }
        let idle = self.tcp.is_some()
            && q.buf.is_empty()
            && !q.writing
            && !q.flush_pending
            && q.waker.is_some();
        q.buf.push_back(frame);
        if idle {
            q.flush_pending = true;
            return Push::Idle;
        }
        if q.flush_pending {
            return Push::Queued; // the flush due writes it too
        }
        // Wake only on the first frame after the consumer went to sleep:
        // later frames ride along in the same batch.
        let w = q.wake();
        drop(q);
        if let Some(w) = w {
            w.wake();
        }
        Push::Queued
    }

    /// Write what is queued straight to the socket (one non-blocking
    /// `writev`, filtered like a batch), unless the session is writing;
    /// wake the session for whatever is left. Returns how many frames went
    /// out (0: the session was woken for them, or nothing was queued).
    pub fn flush(&self) -> usize {
        let mut q = self.lock();
        q.flush_pending = false;
        let written = match &self.tcp {
            Some(tcp) if !q.writing && !q.closed && q.stop.is_none() => {
                Self::write_queued(&mut q, tcp)
            }
            _ => 0,
        };
        q.shrink();
        let w = if q.buf.is_empty() { None } else { q.wake() };
        drop(q);
        if let Some(w) = w {
            w.wake();
        }
        written
    }

    /// The direct write under the lock: frames from the front of the
    /// queue while their rooms are settled, admitted by the filter, in one
    /// `writev`. What the kernel does not take stays queued, admitted.
    fn write_queued(q: &mut Inner, tcp: &TcpStream) -> usize {
        let mut i = q.admitted;
        while i < q.buf.len() && i < DIRECT_BATCH {
            let d = q.buf[i].clone();
            match q.admit(&d, true) {
                None => break,
                Some(false) => {
                    q.buf.remove(i);
                }
                Some(true) => {
                    i += 1;
                    q.admitted = i;
                }
            }
        }
        let take = q.admitted.min(DIRECT_BATCH);
        if take == 0 {
            return 0;
        }
        let heads: Vec<([u8; 10], usize)>;
        let one;
        let heads: &[([u8; 10], usize)] = if take == 1 {
            // The common case, one frame: no allocation.
            one = [crate::ws::text_header(q.buf[0].frame.len())];
            &one
        } else {
            heads = q
                .buf
                .iter()
                .take(take)
                .map(|d| crate::ws::text_header(d.frame.len()))
                .collect();
            &heads
        };
        let wrote = {
            let pair;
            let many: Vec<IoSlice<'_>>;
            let slices: &[IoSlice<'_>] = if take == 1 {
                pair = [
                    IoSlice::new(&heads[0].0[..heads[0].1]),
                    IoSlice::new(&q.buf[0].frame),
                ];
                &pair
            } else {
                many = heads
                    .iter()
                    .zip(q.buf.iter())
                    .flat_map(|(h, d)| [IoSlice::new(&h.0[..h.1]), IoSlice::new(&d.frame)])
                    .collect();
                &many
            };
            let mut owned: Vec<IoSlice<'_>>;
            let mut view: &[IoSlice<'_>] = slices;
            if q.partial > 0 {
                owned = slices.to_vec();
                let mut v = &mut owned[..];
                IoSlice::advance_slices(&mut v, q.partial);
                view = v;
            }
            // Would block, or an error the session's own write will meet.
            tcp.try_write_vectored(view).unwrap_or(0)
        };
        let mut left = wrote.saturating_add(q.partial);
        let mut sent = 0;
        for h in heads.iter().take(take) {
            let whole = h.1.saturating_add(q.buf[0].frame.len());
            if left < whole {
                q.partial = left;
                break;
            }
            left -= whole;
            q.buf.pop_front();
            q.admitted -= 1;
            q.partial = 0;
            sent += 1;
        }
        sent
    }

    /// The session takes the socket for a write of its own. A frame the
    /// fan-out wrote only in part comes back with the bytes already
    /// written: it must be finished first.
    pub fn begin_write(&self) -> Option<(Out, usize)> {
        let mut q = self.lock();
        q.writing = true;
        Self::take_partial(&mut q)
    }

    fn take_partial(q: &mut Inner) -> Option<(Out, usize)> {
        if q.partial == 0 {
            return None;
        }
        let skip = std::mem::take(&mut q.partial);
        q.admitted = q.admitted.saturating_sub(1);
        q.buf.pop_front().map(|d| (d, skip))
    }

    /// The session's write (or batch) is done: the fan-out may write again.
    pub fn end_write(&self) {
        self.lock().writing = false;
    }

    /// Start following a room (before the join subscribes): its frames
    /// wait for the session until [`Outbox::settle`].
    pub fn add_room(&self, key: RoomKey) {
        let mut q = self.lock();
        if !q.rooms.iter().any(|r| r.key == key) {
            // Most connections are in one room: no room for four.
            q.rooms.reserve_exact(1);
            q.rooms.push(RoomFilter {
                key,
                epoch: crate::hub::no_epoch(),
                last: 0,
                settled: false,
            });
        }
    }

    /// Stop the fan-out writing a room's frames (a join replays it again)
    /// and say where the connection stands in it: its epoch and last offset.
    pub fn unsettle(&self, key: RoomKey) -> Option<(Arc<str>, u64)> {
        let mut q = self.lock();
        let r = q.rooms.iter_mut().find(|r| r.key == key)?;
        r.settled = false;
        Some((r.epoch.clone(), r.last))
    }

    /// Where a room's replay ended: frames after it are live, and the
    /// fan-out may write them.
    pub fn settle(&self, key: RoomKey, epoch: Arc<str>, last: u64) {
        let mut q = self.lock();
        if let Some(r) = q.rooms.iter_mut().find(|r| r.key == key) {
            (r.epoch, r.last, r.settled) = (epoch, last, true);
        }
    }

    /// Forget a room (left): its queued frames are dropped.
    pub fn remove_room(&self, key: RoomKey) {
        self.lock().rooms.retain(|r| r.key != key);
    }

    /// Mark the connection gone: later pushes are refused. A frame the
    /// fan-out wrote only in part comes back, to be finished before a
    /// close frame.
    pub fn close(&self) -> Option<(Out, usize)> {
        let mut q = self.lock();
        q.closed = true;
        q.writing = true;
        let partial = Self::take_partial(&mut q);
        q.buf = VecDeque::new();
        q.admitted = 0;
        partial
    }

    /// Tell the consumer to stop (shutdown); wakes it. A stop already
    /// given stands.
    pub fn stop(&self, why: Stop) {
        let mut q = self.lock();
        if q.stop.is_none() {
            q.stop = Some(why);
        }
        let w = q.waker.take();
        drop(q);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Ask the consumer to record its presence again; wakes it.
    pub fn refresh(&self) {
        let mut q = self.lock();
        q.refresh = true;
        let w = q.waker.take();
        drop(q);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Tell the consumer the shared clock ticked; wakes it.
    pub fn tick(&self) {
        let mut q = self.lock();
        q.tick = true;
        let w = q.waker.take();
        drop(q);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Move up to `max` queued frames into `batch`, filtered; pending while
    /// none passes. With frames, the consumer owns the socket until
    /// [`Outbox::end_write`].
    pub fn poll_recv(&self, cx: &mut Context<'_>, batch: &mut Vec<Out>, max: usize) -> Poll<Recv> {
        let mut q = self.lock();
        if let Some(why) = q.stop {
            return Poll::Ready(Recv::Stop(why));
        }
        if std::mem::take(&mut q.refresh) {
            return Poll::Ready(Recv::Refresh);
        }
        if std::mem::take(&mut q.tick) {
            return Poll::Ready(Recv::Tick);
        }
        let skip = q.partial;
        let before = batch.len();
        while batch.len() == before && !q.buf.is_empty() {
            let n = q.buf.len().min(max);
            for k in 0..n {
                let Some(d) = q.buf.pop_front() else { break };
                if k < q.admitted || q.admit(&d, false) == Some(true) {
                    batch.push(d);
                }
            }
            q.admitted = q.admitted.saturating_sub(n);
        }
        q.partial = 0;
        q.shrink();
        if batch.len() == before {
            register(&mut q.waker, cx);
            return Poll::Pending;
        }
        q.writing = true;
        Poll::Ready(Recv::Frames { skip })
    }

    /// Resolves when the consumer must stop.
    pub fn poll_stopped(&self, cx: &mut Context<'_>) -> Poll<Stop> {
        let mut q = self.lock();
        if let Some(why) = q.stop {
            return Poll::Ready(why);
        }
        register(&mut q.waker, cx);
        Poll::Pending
    }

    /// `poll_recv` as a future.
    pub async fn recv(&self, batch: &mut Vec<Out>, max: usize) -> Recv {
        std::future::poll_fn(|cx| self.poll_recv(cx, batch, max)).await
    }

    /// `poll_stopped` as a future.
    pub async fn stopped(&self) -> Stop {
        std::future::poll_fn(|cx| self.poll_stopped(cx)).await
    }
}

/// Every live session's outbox, so shutdown can tell each one to close.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<std::collections::HashMap<u64, Arc<Outbox>>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, std::collections::HashMap<u64, Arc<Outbox>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a session; its connection's guard removes it (`crate::session`).
    pub fn insert(&self, id: u64, outbox: Arc<Outbox>) {
        self.lock().insert(id, outbox);
    }

    /// Remove a session.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Ask every session to record its presence again.
    pub fn refresh_all(&self) {
        let all: Vec<Arc<Outbox>> = self.lock().values().cloned().collect();
        for o in all {
            o.refresh();
        }
    }

    /// Tell every session the shared clock ticked.
    pub fn tick_all(&self) {
        let all: Vec<Arc<Outbox>> = self.lock().values().cloned().collect();
        for o in all {
            o.tick();
        }
    }

    /// Tell every session to stop.
    pub fn stop_all(&self, why: Stop) {
        let all: Vec<Arc<Outbox>> = self.lock().values().cloned().collect();
        for o in all {
            o.stop(why);
        }
    }
}

fn register(slot: &mut Option<Waker>, cx: &mut Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Delivery;

    fn frame(offset: u64) -> Out {
        Out(Arc::new(Delivery {
            room: 1,
            offset,
            epoch: Arc::from("e"),
            frame: "x".into(),
        }))
    }

    #[tokio::test]
    async fn batches_kicks_and_closes() {
        let q = Outbox::new(3);
        q.add_room(1);
        for i in 1..=3 {
            assert_eq!(q.push(frame(i)), Push::Queued);
        }
        let mut batch = Vec::new();
        assert_eq!(q.recv(&mut batch, 2).await, Recv::Frames { skip: 0 });
        q.end_write();
        assert_eq!(batch.len(), 2);
        assert_eq!(q.recv(&mut batch, 10).await, Recv::Frames { skip: 0 });
        q.end_write();
        assert_eq!(
            batch.iter().map(|d| d.offset).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        for i in 4..=6 {
            q.push(frame(i));
        }
        assert_eq!(q.push(frame(7)), Push::Full(true));
        assert_eq!(q.push(frame(8)), Push::Full(false));
        assert_eq!(q.recv(&mut batch, 10).await, Recv::Stop(Stop::SlowConsumer));
        q.stop(Stop::Restart);
        assert_eq!(
            q.stopped().await,
            Stop::SlowConsumer,
            "the first stop stands"
        );
        q.close();
        assert_eq!(q.push(frame(9)), Push::Closed);
    }

    #[tokio::test]
    async fn a_push_wakes_the_waiting_consumer() {
        let q = Outbox::new(8);
        q.add_room(1);
        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            let mut batch = Vec::new();
            q2.recv(&mut batch, 8).await;
            batch.len()
        });
        tokio::task::yield_now().await;
        q.push(frame(1));
        assert_eq!(waiter.await.unwrap(), 1);
    }

    fn frame_of(room: RoomKey, offset: u64, text: &str) -> Out {
        Out(Arc::new(Delivery {
            room,
            offset,
            epoch: Arc::from("e"),
            frame: bytes::Bytes::copy_from_slice(text.as_bytes()),
        }))
    }

    /// A connected pair: the server side's socket and the client side.
    async fn pair() -> (Arc<TcpStream>, std::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().await.unwrap();
        (Arc::new(server), client)
    }

    fn read_n(c: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
        use std::io::Read;
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut out = vec![0u8; n];
        c.read_exact(&mut out).unwrap();
        out
    }

    /// Invariant: into an idle outbox of a settled room, a delivery is
    /// written by the fan-out's flush without waking the consumer, once,
    /// filtered (a copy at or below the room's last offset is dropped),
    /// and frames of a room still replaying wait for the consumer.
    #[tokio::test]
    async fn an_idle_settled_connection_is_written_directly_and_filtered() {
        let (tcp, mut client) = pair().await;
        let q = Outbox::with_socket(8, Some(tcp));
        q.add_room(1);
        q.settle(1, Arc::from("e"), 5);
        let q2 = q.clone();
        let consumer = tokio::spawn(async move {
            let mut batch = Vec::new();
            let r = q2.recv(&mut batch, 8).await;
            (r, batch.iter().map(|d| d.offset).collect::<Vec<_>>())
        });
        tokio::task::yield_now().await;
        // A copy of offset 5 (already sent) and offset 6.
        assert_eq!(q.push(frame_of(1, 5, "five")), Push::Idle);
        assert_eq!(q.push(frame_of(1, 6, "six")), Push::Queued);
        assert_eq!(q.flush(), 1, "one frame written, the duplicate dropped");
        assert_eq!(read_n(&mut client, 5), b"\x81\x03six");
        tokio::task::yield_now().await;
        assert!(!consumer.is_finished(), "the consumer was not woken");
        // A room still replaying: its frame waits, and the consumer is woken.
        q.add_room(2);
        q.push(frame_of(2, 1, "r2"));
        assert_eq!(q.flush(), 0);
        let (r, offsets) = consumer.await.unwrap();
        assert_eq!((r, offsets), (Recv::Frames { skip: 0 }, vec![1]));
        q.end_write();
    }

    /// Invariant: a frame the kernel took only in part is finished before
    /// anything else is written: by the session's next write of its own,
    /// and never admitted twice.
    #[tokio::test]
    async fn a_frame_cut_short_is_finished_first() {
        let (tcp, client) = pair().await;
        socket2::SockRef::from(&*tcp)
            .set_send_buffer_size(4096)
            .unwrap();
        let q = Outbox::with_socket(64, Some(tcp.clone()));
        q.add_room(1);
        q.settle(1, Arc::from("e"), 0);
        let q2 = q.clone();
        let consumer = tokio::spawn(async move {
            let mut batch = Vec::new();
            q2.recv(&mut batch, 8).await
        });
        tokio::task::yield_now().await;
        // Frames far larger than the socket buffers, while the client reads
        // nothing: the kernel takes part of the first.
        let big = "x".repeat(1 << 20);
        assert_eq!(q.push(frame_of(1, 1, &big)), Push::Idle);
        q.push(frame_of(1, 2, "after"));
        let written = q.flush();
        assert_eq!(written, 0, "the first frame cannot go out whole");
        // The consumer was woken for the rest and gets it with its skip.
        let r = consumer.await.unwrap();
        let Recv::Frames { skip } = r else {
            panic!("{r:?}")
        };
        assert!(skip > 0, "part of the first frame was written");
        q.end_write();
        // And the session's own write would have finished it first.
        let q3 = Outbox::with_socket(64, Some(tcp));
        q3.add_room(1);
        q3.settle(1, Arc::from("e"), 0);
        assert!(q3.begin_write().is_none());
        q3.end_write();
        drop(client.shutdown(std::net::Shutdown::Both));
    }
}
