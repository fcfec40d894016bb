//! A connection's outbound queue: bounded, with a declared policy per delivery class, and a
//! direct path to the socket when nothing waits.
//!
//! Reliable frames (events, replies) must all arrive; when a client does not read and they reach
//! the bound, the connection is closed as a slow consumer instead of growing without limit. State
//! frames (a position, a snapshot) are superseded by the next one; when the queue is full the
//! oldest queued state frame is dropped to make room, and the client simply sees fresher state.
//!
//! The direct path: when the queue is empty and its writer idle, a push writes the frame to a TCP
//! socket at once from the pushing thread (a non-blocking `write`), instead of waking the writer
//! on the connection's event loop to do it. Waking that loop cost an `eventfd` write and an
//! `epoll_wait` return per frame, most of what an echo through an entity cost beyond a plain
//! server. Whatever the socket does not take at once (a full send buffer) is queued, in order,
//! for the writer.

use std::{
    collections::VecDeque,
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, Ordering},
    },
};

use bytes::Bytes;
use garrison_protocol::Frame;
use tokio::{net::tcp::OwnedWriteHalf, sync::Notify};

use super::{CloseCode, Counters};
use crate::origin::Outbound;

/// How a frame is delivered when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Must arrive; a full queue closes the connection as a slow consumer.
    Reliable,
    /// Superseded by the next; a full queue drops the oldest state frame.
    Latest,
}

/// A socket a push may write to without waiting.
pub(crate) trait DirectWrite: Send + Sync {
    /// Writes what the socket takes at once; `WouldBlock` when it takes nothing.
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize>;
}

impl DirectWrite for OwnedWriteHalf {
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        OwnedWriteHalf::try_write(self, bytes)
    }
}

struct Items {
    /// Wire bytes waiting for the writer: whole frames, or the rest of one the direct path only
    /// partly wrote.
    frames: VecDeque<(Bytes, Delivery)>,
    /// What the `Close` says, when more is known than the code's description.
    reason: Option<String>,
    /// The writer has written everything it took and waits: a push may write directly.
    writer_idle: bool,
    /// The socket for the direct path (TCP only); taken away when the writer ends.
    direct: Option<Arc<dyn DirectWrite>>,
}

/// The longest reason a `Close` carries, in bytes; a longer one is cut at a character boundary.
pub(crate) const MAX_CLOSE_REASON: usize = 256;

fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_CLOSE_REASON {
        let mut cut = MAX_CLOSE_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

/// The queue between everything that writes to a connection and its writer task.
pub(crate) struct OutboundQueue {
    items: Mutex<Items>,
    capacity: usize,
    ready: Notify,
    /// Woken when the writer must stop at once, even mid-write: a slow consumer (its socket is
    /// full, so a `Close` could not be written anyway) or a peer that went away.
    urgent: Notify,
    replaced: AtomicBool,
    aborted: AtomicBool,
    /// Set once, under the lock: the writer sends what is queued, then a `Close` with this wire
    /// code, then shuts down (0: not closing). Read without the lock by [`OutboundQueue::closing`]:
    /// the connection asks on every frame it reads, and taking the lock there made its thread
    /// wait for a push writing to the socket under it (a futex wait and a context switch each
    /// time they met, measured on a one-core battle server).
    closing: AtomicU16,
    /// Where frames written on the direct path are counted.
    counters: Arc<Counters>,
}

/// What the writer should do next.
pub(crate) enum Next {
    /// Write the frames just taken.
    Frames,
    /// Write a `Close` with this code, then stop.
    Close(CloseCode),
    /// Stop without writing anything more.
    Abort,
}

impl OutboundQueue {
    pub(crate) fn new(capacity: usize, counters: Arc<Counters>) -> Self {
        OutboundQueue {
            items: Mutex::new(Items {
                frames: VecDeque::new(),
                reason: None,
                writer_idle: false,
                direct: None,
            }),
            capacity: capacity.max(1),
            ready: Notify::new(),
            urgent: Notify::new(),
            replaced: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            closing: AtomicU16::new(0),
            counters,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Items> {
        // Only this module's short critical sections (and a direct, non-blocking write) run
        // under the lock.
        self.items
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Lets pushes write to `socket` directly while the writer is idle.
    pub(crate) fn write_directly_to(&self, socket: Arc<dyn DirectWrite>) {
        self.lock().direct = Some(socket);
    }

    /// Ends the direct path (the writer is done): the socket is released with it.
    pub(crate) fn end_direct(&self) {
        self.lock().direct = None;
    }

    /// Queues a frame under its delivery policy, or writes it at once when nothing waits. A
    /// reliable frame that does not fit starts a slow-consumer close and is handed back.
    pub(crate) fn push_with(&self, frame: Frame, delivery: Delivery) -> Result<(), Frame> {
        let mut items = self.lock();
        // Relaxed under the lock: it orders every write of the code.
        if self.closing.load(Ordering::Relaxed) != 0 {
            return Err(frame);
        }
        let mut wire = frame.wire().clone();
        if items.writer_idle
            && items.frames.is_empty()
            && let Some(socket) = &items.direct
        {
            // Under the lock: no other push and no writer write can come between.
            match socket.try_write(&wire) {
                Ok(written) if written == wire.len() => {
                    // Relaxed: statistics counters.
                    self.counters.frames_out.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .bytes_out
                        .fetch_add(written as u64, Ordering::Relaxed);
                    return Ok(());
                }
                // The rest goes first to the writer, and must arrive whatever the policy.
                Ok(written) => {
                    let _ = wire.split_to(written);
                    items.frames.push_back((wire, Delivery::Reliable));
                    // The frame is counted when the writer finishes it.
                    self.counters
                        .bytes_out
                        .fetch_add(written as u64, Ordering::Relaxed);
                    drop(items);
                    self.ready.notify_one();
                    return Ok(());
                }
                // A full socket, or a broken one the writer will find: queue it.
                Err(_) => {}
            }
        }
        if items.frames.len() >= self.capacity {
            let oldest_state = items
                .frames
                .iter()
                .position(|(_, queued)| *queued == Delivery::Latest);
            match (delivery, oldest_state) {
                (Delivery::Latest, Some(position)) => {
                    items.frames.remove(position);
                }
                (Delivery::Latest, None) => return Err(frame),
                (Delivery::Reliable, _) => {
                    self.closing
                        .store(CloseCode::SlowConsumer.code(), Ordering::Release);
                    items.reason = Some(format!(
                        "the client did not read: {} frames were waiting for it",
                        self.capacity
                    ));
                    drop(items);
                    self.ready.notify_one();
                    // `notify_one` keeps a permit: a writer stuck mid-write sees it next.
                    self.urgent.notify_one();
                    return Err(frame);
                }
            }
        }
        items.frames.push_back((wire, delivery));
        drop(items);
        self.ready.notify_one();
        Ok(())
    }

    /// Asks the writer to send what is queued, then a `Close` with `code` and the code's
    /// description, then shut down. The first close asked for wins.
    pub(crate) fn close(&self, code: CloseCode) {
        self.close_with(code, None);
    }

    /// As [`OutboundQueue::close`], the `Close` saying `reason` (at most [`MAX_CLOSE_REASON`]
    /// bytes), so a client developer sees what was wrong.
    pub(crate) fn close_because(&self, code: CloseCode, reason: String) {
        self.close_with(code, Some(reason));
    }

    fn close_with(&self, code: CloseCode, reason: Option<String>) {
        let mut items = self.lock();
        if self.closing.load(Ordering::Relaxed) == 0 {
            items.reason = reason.map(bounded);
            self.closing.store(code.code(), Ordering::Release);
        }
        drop(items);
        self.ready.notify_one();
    }

    /// The text the `Close` carries: the reason given, or the code's description.
    pub(crate) fn close_reason(&self) -> String {
        let items = self.lock();
        match (&items.reason, self.closing()) {
            (Some(reason), _) => reason.clone(),
            (None, Some(code)) => code.description().to_owned(),
            (None, None) => String::new(),
        }
    }

    /// Stops the writer without a `Close` (the peer went away).
    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.ready.notify_one();
        self.urgent.notify_one();
    }

    /// Resolves when the writer must stop at once.
    pub(crate) async fn urgent(&self) {
        self.urgent.notified().await;
    }

    /// Takes everything queued into `batch`, or says to close or abort once nothing is left.
    /// While it waits, pushes may write directly (see the module's docs).
    pub(crate) async fn next(&self, batch: &mut Vec<Bytes>) -> Next {
        loop {
            {
                if self.aborted.load(Ordering::Acquire) {
                    return Next::Abort;
                }
                let mut items = self.lock();
                let closing = self.closing.load(Ordering::Relaxed);
                if closing == CloseCode::SlowConsumer.code() {
                    items.writer_idle = false;
                    return Next::Close(CloseCode::SlowConsumer);
                }
                if !items.frames.is_empty() {
                    items.writer_idle = false;
                    batch.extend(items.frames.drain(..).map(|(frame, _)| frame));
                    return Next::Frames;
                }
                if let Some(code) = CloseCode::from_code(closing) {
                    items.writer_idle = false;
                    return Next::Close(code);
                }
                items.writer_idle = true;
            }
            self.ready.notified().await;
        }
    }

    /// The close asked for, if any. Without the lock: a close asked for by another thread at
    /// this moment may be seen on the next call (the queue itself refuses pushes under the lock).
    pub(crate) fn closing(&self) -> Option<CloseCode> {
        // No wire code is 0.
        CloseCode::from_code(self.closing.load(Ordering::Acquire))
    }

    #[cfg(test)]
    fn queued(&self) -> Vec<Bytes> {
        self.lock()
            .frames
            .iter()
            .map(|(bytes, _)| bytes.clone())
            .collect()
    }
}

impl Outbound for OutboundQueue {
    fn push(&self, frame: Frame) -> Result<(), Frame> {
        self.push_with(frame, Delivery::Reliable)
    }

    fn push_latest(&self, frame: Frame) -> Result<(), Frame> {
        self.push_with(frame, Delivery::Latest)
    }

    fn replaced(&self) {
        self.replaced.store(true, Ordering::Release);
        self.close(CloseCode::Replaced);
    }

    fn moved(&self) {
        self.close(CloseCode::Moved);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use garrison_protocol::{FrameMeta, control::Welcome};

    use super::*;

    fn frame(session: u64) -> Frame {
        garrison_protocol::encode_frame(
            &Welcome {
                session,
                resumed: false,
            },
            FrameMeta::default(),
        )
        .unwrap()
    }

    /// A socket that takes at most `room` bytes, recording what it took.
    struct Socket {
        room: StdMutex<usize>,
        taken: StdMutex<Vec<u8>>,
    }

    impl Socket {
        fn with_room(room: usize) -> Arc<Socket> {
            Arc::new(Socket {
                room: StdMutex::new(room),
                taken: StdMutex::new(Vec::new()),
            })
        }
    }

    impl DirectWrite for Socket {
        fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let written = bytes.len().min(*room);
            *room -= written;
            self.taken
                .lock()
                .unwrap()
                .extend_from_slice(&bytes[..written]);
            Ok(written)
        }
    }

    fn queue(capacity: usize) -> OutboundQueue {
        OutboundQueue::new(capacity, Arc::new(Counters::default()))
    }

    async fn idle_writer(queue: &OutboundQueue) {
        // The writer finds nothing to do: it is idle until woken.
        let mut batch = Vec::new();
        let waiting = queue.next(&mut batch);
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
    }

    #[tokio::test]
    async fn a_push_to_an_idle_writer_goes_straight_to_the_socket() {
        let queue = queue(4);
        let socket = Socket::with_room(1 << 20);
        queue.write_directly_to(socket.clone());
        idle_writer(&queue).await;
        let first = frame(1);
        queue.push(first.clone()).unwrap();
        assert_eq!(*socket.taken.lock().unwrap(), first.wire().to_vec());
        assert!(queue.queued().is_empty(), "nothing left for the writer");
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_waits_in_order_for_the_writer() {
        let queue = queue(4);
        let socket = Socket::with_room(5);
        queue.write_directly_to(socket.clone());
        idle_writer(&queue).await;
        let (first, second) = (frame(1), frame(2));
        queue.push(first.clone()).unwrap();
        // The rest of the first frame is queued; the next frame queues behind it, not direct.
        queue.push(second.clone()).unwrap();
        assert_eq!(*socket.taken.lock().unwrap(), first.wire()[..5].to_vec());
        assert_eq!(
            queue.queued(),
            [first.wire().slice(5..), second.wire().clone()]
        );
    }

    #[tokio::test]
    async fn a_busy_writer_gets_everything_queued() {
        let queue = queue(4);
        let socket = Socket::with_room(1 << 20);
        queue.write_directly_to(socket.clone());
        // No writer has waited yet: it may be mid-write.
        queue.push(frame(1)).unwrap();
        assert!(socket.taken.lock().unwrap().is_empty());
        assert_eq!(queue.queued().len(), 1);
    }

    #[tokio::test]
    async fn a_full_queue_drops_old_state_and_closes_a_slow_reliable_consumer() {
        let queue = queue(2);
        queue.push_latest(frame(1)).unwrap();
        queue.push(frame(2)).unwrap();
        // Full: a state frame replaces the oldest state frame.
        queue.push_latest(frame(3)).unwrap();
        assert_eq!(
            queue.queued(),
            [frame(2).wire().clone(), frame(3).wire().clone()]
        );
        // Full of reliable frames: the next reliable one closes the connection.
        queue.push(frame(4)).unwrap_err();
        assert_eq!(queue.closing(), Some(CloseCode::SlowConsumer));
        assert!(
            queue.push(frame(5)).is_err(),
            "closing: nothing more is taken"
        );
        assert_eq!(
            queue.close_reason(),
            "the client did not read: 2 frames were waiting for it"
        );
    }

    #[tokio::test]
    async fn the_writer_sends_what_is_queued_then_the_close() {
        let queue = queue(4);
        queue.push(frame(1)).unwrap();
        queue.close(CloseCode::ServerShutdown);
        let mut batch = Vec::new();
        assert!(matches!(queue.next(&mut batch).await, Next::Frames));
        assert_eq!(batch.len(), 1);
        assert!(matches!(
            queue.next(&mut batch).await,
            Next::Close(CloseCode::ServerShutdown)
        ));
        assert_eq!(
            queue.close_reason(),
            CloseCode::ServerShutdown.description()
        );
    }

    #[test]
    fn a_long_close_reason_is_cut_at_a_character_boundary() {
        let reason = "é".repeat(200);
        let cut = bounded(reason);
        assert!(cut.len() <= MAX_CLOSE_REASON);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
