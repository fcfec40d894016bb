//! The inbound hot path allocates nothing per input: from the socket through the gateway's
//! decoder, validation, the router's session binding, the entity's mailbox and its handler. A
//! counting allocator (this binary's global allocator) counts every allocation in the process
//! while inputs flow from a client to an entity: none at all at a player's pace, and far fewer
//! than one per input in a burst.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::BytesMut;
use garrison_protocol::{FrameCodec, FrameMeta, control::Hello};
use garrison_runtime::{
    Activation, Checkpoint, Entities, Entity, EntityContext, HandlerError, KindConfig, Sessions,
    gateway::{GatewayBuilder, GatewayConfig, ticket},
};
use garrison_supervisor::{ChildSpec, SupervisorBuilder};
use garrison_tests::wire::{Input, TestMessage};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::Outcome;

/// The system allocator, counting every allocation.
pub struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches nothing
// the allocator relies on.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // Relaxed: a statistic read after the work it counts has been waited for.
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

const KEY: &[u8] = b"allocation test key";

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Default)]
struct Nothing;

impl garrison_protocol::Snapshot for Nothing {
    const SCHEMA: &'static str = "test.nothing";
    const VERSION: u16 = 1;
}

/// Counts the inputs it handles; allocates nothing itself.
struct Sink {
    handled: Arc<AtomicU64>,
}

impl Entity for Sink {
    const KIND: &'static str = "sink";
    type Key = u64;
    type State = Nothing;
    type Message = TestMessage;

    async fn activate(&self, _: &u64, _: Activation<Nothing>) -> Result<Nothing, HandlerError> {
        Ok(Nothing)
    }

    async fn handle(
        &self,
        _: &mut EntityContext<'_, Self>,
        _: TestMessage,
        _: &mut Nothing,
    ) -> Result<(), HandlerError> {
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Bytes of one input frame (12-byte header, 24-byte archive).
const FRAME_LEN: usize = 36;

/// `count` input frames, encoded before anything is measured.
fn inputs(first: u32, count: u32) -> Vec<u8> {
    let mut codec = FrameCodec::default();
    let mut wire = BytesMut::new();
    for seq in first..first + count {
        let input = Input {
            entity: 1,
            x: seq as i32,
            y: 0,
            seq,
            tick: 0,
        };
        codec
            .encode_message(&input, FrameMeta::seq(seq), &mut wire)
            .expect("an input encodes");
    }
    wire.to_vec()
}

/// Waits, without allocating, until `handled` reaches `count`.
async fn handled_reaches(handled: &AtomicU64, count: u64) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(20);
    while handled.load(Ordering::Relaxed) < count {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {count} inputs were handled",
                handled.load(Ordering::Relaxed)
            ));
        }
        tokio::task::yield_now().await;
    }
    Ok(())
}

pub fn the_inbound_path_allocates_nothing_per_input() -> Outcome {
    const WARM_UP: u32 = 4_000;
    const PACED: u32 = 5_000;
    const BURST: u32 = 20_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    runtime.block_on(async {
        let handled = Arc::new(AtomicU64::new(0));
        let sinks = Entities::new(
            Sink {
                handled: handled.clone(),
            },
            KindConfig {
                checkpoint: Checkpoint::Never,
                mailbox_capacity: 65_536,
                ..KindConfig::default()
            },
        )
        .map_err(|error| error.to_string())?;
        let tree = SupervisorBuilder::new("allocations")
            .child(ChildSpec::new("sinks", sinks.start()))
            .build()
            .map_err(|error| error.to_string())?
            .start()
            .await
            .map_err(|error| error.to_string())?;
        let mut config = GatewayConfig::new(KEY);
        config.tcp = Some("127.0.0.1:0".parse().map_err(|_| "address")?);
        config.messages_per_second = 1_000_000;
        config.message_burst = 1_000_000;
        config.bytes_per_second = u32::MAX;
        config.byte_burst = u32::MAX;
        let gateway = GatewayBuilder::<TestMessage>::new(
            config,
            Arc::new(Sessions::new()),
            |session, message| {
                session
                    .send::<Sink>(message)
                    .map_err(|refused| refused.reason)
            },
        )
        .on_session(move |start| {
            start.session.bind(&sinks, start.session.player());
            Ok(())
        })
        .start()
        .map_err(|error| error.to_string())?;
        let address = gateway.tcp_addr().ok_or("no listener")?;
        let hello = garrison_protocol::encode_frame(
            &Hello {
                ticket: ticket::mint(KEY, 1, ticket::unix_now() + 60),
                layout: 0,
            },
            FrameMeta::default(),
        )
        .map_err(|error| error.to_string())?;
        let warm_up = inputs(0, WARM_UP);
        let paced = inputs(WARM_UP, PACED);
        let burst = inputs(WARM_UP + PACED, BURST);
        let mut client = TcpStream::connect(address)
            .await
            .map_err(|error| error.to_string())?;
        client
            .write_all(hello.wire())
            .await
            .map_err(|error| error.to_string())?;
        // Warm up: the session's binding, the entity's activation, buffers at their working size.
        client
            .write_all(&warm_up)
            .await
            .map_err(|error| error.to_string())?;
        let mut expected = u64::from(WARM_UP);
        handled_reaches(&handled, expected).await?;

        // A player's pace: each input is handled before the next arrives, as at 60 Hz.
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for frame in paced.chunks(FRAME_LEN) {
            client
                .write_all(frame)
                .await
                .map_err(|error| error.to_string())?;
            expected += 1;
            handled_reaches(&handled, expected).await?;
        }
        let paced_allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;

        // A burst far faster than the entity handles it: frames queue, still sharing the read
        // buffers they were cut from.
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for chunk in burst.chunks(FRAME_LEN * 500) {
            client
                .write_all(chunk)
                .await
                .map_err(|error| error.to_string())?;
        }
        expected += u64::from(BURST);
        handled_reaches(&handled, expected).await?;
        let burst_allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!(
            "  allocations in the whole process: {paced_allocations} for {PACED} paced inputs, \
             {burst_allocations} for a burst of {BURST} ({:.4} per input)",
            burst_allocations as f64 / f64::from(BURST)
        );
        drop(client);
        gateway.shutdown().await;
        let _ = tree.stop().await;
        if paced_allocations != 0 {
            return Err(format!(
                "{paced_allocations} allocations for {PACED} inputs at a player's pace: the hot \
                 path allocates"
            ));
        }
        // What a burst costs is a new 8 KiB read buffer when the last one is still shared by
        // queued frames: one allocation pair per ~230 frames, never one per input.
        if burst_allocations * 20 >= BURST as usize {
            return Err(format!(
                "{burst_allocations} allocations for a burst of {BURST} inputs"
            ));
        }
        Ok(())
    })
}
