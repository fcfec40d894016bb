//! A connection's outbound queue: bounded, with a declared policy per delivery class.
//!
//! Reliable frames (events, replies) must all arrive; when a client does not read and they reach
//! the bound, the connection is closed as a slow consumer instead of growing without limit. State
//! frames (a position, a snapshot) are superseded by the next one; when the queue is full the
//! oldest queued state frame is dropped to make room, and the client simply sees fresher state.

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use garrison_protocol::Frame;
use tokio::sync::Notify;

use super::CloseCode;
use crate::origin::Outbound;

/// How a frame is delivered when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Must arrive; a full queue closes the connection as a slow consumer.
    Reliable,
    /// Superseded by the next; a full queue drops the oldest state frame.
    Latest,
}

struct Items {
    frames: VecDeque<(Frame, Delivery)>,
    /// Set once: the writer sends what is queued, then this close frame, then shuts down.
    closing: Option<CloseCode>,
    /// What the `Close` says, when more is known than the code's description.
    reason: Option<String>,
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
    pub(crate) fn new(capacity: usize) -> Self {
        OutboundQueue {
            items: Mutex::new(Items {
                frames: VecDeque::new(),
                closing: None,
                reason: None,
            }),
            capacity: capacity.max(1),
            ready: Notify::new(),
            urgent: Notify::new(),
            replaced: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Items> {
        // Only this module's short critical sections run under the lock.
        self.items
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Queues a frame under its delivery policy. A reliable frame that does not fit starts a
    /// slow-consumer close and is handed back.
    pub(crate) fn push_with(&self, frame: Frame, delivery: Delivery) -> Result<(), Frame> {
        let mut items = self.lock();
        if items.closing.is_some() {
            return Err(frame);
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
                    items.closing = Some(CloseCode::SlowConsumer);
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
        items.frames.push_back((frame, delivery));
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
        if items.closing.is_none() {
            items.closing = Some(code);
            items.reason = reason.map(bounded);
        }
        drop(items);
        self.ready.notify_one();
    }

    /// The text the `Close` carries: the reason given, or the code's description.
    pub(crate) fn close_reason(&self) -> String {
        let items = self.lock();
        match (&items.reason, items.closing) {
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
    pub(crate) async fn next(&self, batch: &mut Vec<Frame>) -> Next {
        loop {
            {
                if self.aborted.load(Ordering::Acquire) {
                    return Next::Abort;
                }
                let mut items = self.lock();
                if items.closing == Some(CloseCode::SlowConsumer) {
                    return Next::Close(CloseCode::SlowConsumer);
                }
                if !items.frames.is_empty() {
                    batch.extend(items.frames.drain(..).map(|(frame, _)| frame));
                    return Next::Frames;
                }
                if let Some(code) = items.closing {
                    return Next::Close(code);
                }
            }
            self.ready.notified().await;
        }
    }

    pub(crate) fn closing(&self) -> Option<CloseCode> {
        self.lock().closing
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
}
