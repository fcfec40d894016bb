//! The hot paths allocate nothing per frame. Inbound, per input: from the socket through the
//! gateway's decoder, validation, the router's session binding, the entity's mailbox and its
//! handler. Outbound, per frame: a push of an encoded frame through the connection's queue to
//! the socket, and a broadcast (encoded once, shared by every recipient). A counting allocator
//! (this binary's global allocator) counts every allocation in the process while frames flow:
//! none at all at a player's pace, and far fewer than one per frame in a burst.

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
    Activation, Checkpoint, Entities, Entity, EntityContext, HandlerError, KindConfig, SessionId,
    Sessions,
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

/// Players connected for the outbound test.
const RECIPIENTS: u64 = 8;

/// Waits, without allocating, until `count` further bytes arrived on each of `clients` (read into
/// `buffer`, which must hold at least one frame).
async fn each_reads(clients: &mut [TcpStream], count: usize, buffer: &mut [u8]) -> Outcome {
    use tokio::io::AsyncReadExt;
    for client in clients {
        let mut left = count;
        while left > 0 {
            let take = left.min(buffer.len());
            let read =
                tokio::time::timeout(Duration::from_secs(20), client.read(&mut buffer[..take]))
                    .await
                    .map_err(|_| format!("{left} bytes never arrived"))?
                    .map_err(|error| error.to_string())?;
            if read == 0 {
                return Err("the server closed a connection".into());
            }
            left -= read;
        }
    }
    Ok(())
}

pub fn the_outbound_path_allocates_nothing_per_frame() -> Outcome {
    const WARM_UP: u32 = 2_000;
    const PACED: u32 = 3_000;
    const BROADCASTS: u32 = 2_000;
    const BURST: u32 = 5_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    runtime.block_on(async {
        let sessions = Arc::new(Sessions::new());
        let mut config = GatewayConfig::new(KEY);
        config.tcp = Some("127.0.0.1:0".parse().map_err(|_| "address")?);
        // Room for the burst: its frames queue while the client is not reading yet.
        config.outbound_capacity = BURST as usize * 2;
        let gateway = GatewayBuilder::<TestMessage>::new(config, sessions.clone(), |_, _| Ok(()))
            .start()
            .map_err(|error| error.to_string())?;
        let address = gateway.tcp_addr().ok_or("no listener")?;
        let mut clients = Vec::new();
        let mut codec = FrameCodec::default();
        for player in 1..=RECIPIENTS {
            let hello = garrison_protocol::encode_frame(
                &Hello {
                    ticket: ticket::mint(KEY, player, ticket::unix_now() + 60),
                    layout: 0,
                },
                FrameMeta::default(),
            )
            .map_err(|error| error.to_string())?;
            let mut client = TcpStream::connect(address)
                .await
                .map_err(|error| error.to_string())?;
            client
                .write_all(hello.wire())
                .await
                .map_err(|error| error.to_string())?;
            // The Welcome, whole, before anything is pushed.
            let mut wire = BytesMut::new();
            loop {
                use tokio::io::AsyncReadExt;
                if tokio_util::codec::Decoder::decode(&mut codec, &mut wire)
                    .map_err(|error| error.to_string())?
                    .is_some()
                {
                    break;
                }
                if client
                    .read_buf(&mut wire)
                    .await
                    .map_err(|error| error.to_string())?
                    == 0
                {
                    return Err("closed before its Welcome".into());
                }
            }
            clients.push(client);
        }
        let ids: Vec<SessionId> = (1..=RECIPIENTS).map(SessionId).collect();
        let input = |seq: u32| Input {
            entity: 1,
            x: seq as i32,
            y: 0,
            seq,
            tick: 0,
        };
        // One frame encoded before anything is measured, pushed again and again.
        let frame = garrison_protocol::encode_frame(&input(0), FrameMeta::seq(0))
            .map_err(|error| error.to_string())?;
        let mut buffer = vec![0u8; 64 * 1024];
        let push = |count: u32| -> Outcome {
            for _ in 0..count {
                sessions
                    .push(SessionId(1), frame.clone())
                    .map_err(|refused| refused.reason.to_string())?;
            }
            Ok(())
        };

        // Warm up: the queues, the socket buffers and the encoder at their working size.
        for _ in 0..WARM_UP {
            push(1)?;
            each_reads(&mut clients[..1], FRAME_LEN, &mut buffer).await?;
            sessions.broadcast(ids.iter().copied(), 0, &input(0));
            each_reads(&mut clients, FRAME_LEN, &mut buffer).await?;
        }

        // A frame already encoded, pushed at a player's pace (each read before the next).
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..PACED {
            push(1)?;
            each_reads(&mut clients[..1], FRAME_LEN, &mut buffer).await?;
        }
        let paced = ALLOCATIONS.load(Ordering::Relaxed) - before;

        // A message broadcast to every recipient: encoded once per broadcast, its frame shared.
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for seq in 1..=BROADCASTS {
            let taken = sessions.broadcast(ids.iter().copied(), seq, &input(seq));
            if taken != RECIPIENTS as usize {
                return Err(format!("a broadcast reached {taken} of {RECIPIENTS}"));
            }
            each_reads(&mut clients, FRAME_LEN, &mut buffer).await?;
        }
        let broadcast = ALLOCATIONS.load(Ordering::Relaxed) - before;

        // A burst the client reads only afterwards: frames queue behind a full socket.
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        push(BURST)?;
        each_reads(&mut clients[..1], FRAME_LEN * BURST as usize, &mut buffer).await?;
        let burst = ALLOCATIONS.load(Ordering::Relaxed) - before;

        let recipient_frames = u64::from(BROADCASTS) * RECIPIENTS;
        println!(
            "  allocations in the whole process: {paced} for {PACED} paced pushes, {broadcast} \
             for {BROADCASTS} broadcasts to {RECIPIENTS} ({:.4} per recipient's frame), {burst} \
             for a burst of {BURST} pushes ({:.4} per frame)",
            broadcast as f64 / recipient_frames as f64,
            burst as f64 / f64::from(BURST)
        );
        drop(clients);
        gateway.shutdown().await;
        if paced != 0 {
            return Err(format!(
                "{paced} allocations for {PACED} pushes of an encoded frame: the outbound path \
                 allocates"
            ));
        }
        // A broadcast encodes its message once, into a block frames are cut from (reclaimed
        // once they are written), and each recipient's copy shares it: at most a new block now
        // and then, never an allocation per broadcast, let alone per recipient.
        if broadcast * 20 >= BROADCASTS as usize {
            return Err(format!(
                "{broadcast} allocations for {BROADCASTS} broadcasts to {RECIPIENTS} players: the \
                 encoding or the sharing allocates"
            ));
        }
        // Queued frames share their bytes; the queue grows once to the burst's size.
        if burst * 20 >= BURST as usize {
            return Err(format!("{burst} allocations for a burst of {BURST} pushes"));
        }
        Ok(())
    })
}
