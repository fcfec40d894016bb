//! Sessions: an entity a session is not bound to is refused; a reconnect swaps the connection
//! atomically, so every frame reaches exactly one connection and none is lost.

use std::sync::{
    Arc, Barrier,
    atomic::{AtomicU32, Ordering},
};

use bytes::BytesMut;
use garrison_protocol::{DecodeConfig, Frame, FrameCodec, FrameMeta};
use garrison_runtime::{Error, KindConfig, Outbound, Refusal, SessionId, Sessions};
use garrison_tests::wire::Input;
use tokio::sync::mpsc;

use super::counter::{Counter, Msg, get, start};

fn frame(seq: u32) -> Frame {
    let mut wire = BytesMut::new();
    let input = Input {
        entity: 1,
        x: 0,
        y: 0,
        seq,
        tick: 0,
    };
    FrameCodec::default()
        .encode_message(&input, FrameMeta { seq, trace: None }, &mut wire)
        .unwrap();
    Frame::decode_exact(wire.freeze(), &DecodeConfig::default()).unwrap()
}

fn drain(receiver: &mut mpsc::Receiver<Frame>) -> Vec<u32> {
    let mut seqs = Vec::new();
    while let Ok(frame) = receiver.try_recv() {
        seqs.push(frame.header().seq);
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cannot_address_an_entity_it_is_not_bound_to() {
    let (counters, _, tree) = start(KindConfig::default()).await;
    let sessions = Sessions::new();
    let (connection, _frames) = mpsc::channel::<Frame>(16);
    sessions.attach(SessionId(1), Arc::new(connection));
    sessions.bind::<Counter>(SessionId(1), &10).unwrap();

    assert!(
        counters
            .send_as(
                &sessions,
                SessionId(1),
                &10,
                Msg::Add {
                    sender: 1,
                    seq: 0,
                    amount: 3
                }
            )
            .is_ok()
    );
    let refused = counters
        .send_as(
            &sessions,
            SessionId(1),
            &11,
            Msg::Add {
                sender: 1,
                seq: 1,
                amount: 3,
            },
        )
        .expect_err("key 11 is another player's");
    assert_eq!(
        refused.reason,
        Refusal::Session(Error::NotBound {
            session: 1,
            kind: "counter",
            key: "11".into()
        })
    );
    assert!(
        matches!(refused.message, Msg::Add { seq: 1, .. }),
        "the message is handed back"
    );
    assert!(
        !counters.is_active(&11),
        "a refused message activates nothing"
    );
    let unknown = counters
        .send_as(&sessions, SessionId(2), &10, Msg::Rest)
        .expect_err("no such session");
    assert_eq!(
        unknown.reason,
        Refusal::Session(Error::NoSession { session: 2 })
    );
    assert_eq!(get(&counters, 10).await.0.total, 3);
    tree.stop().await.unwrap();
}

#[test]
fn rebinding_is_atomic_under_concurrent_pushes() {
    const FRAMES: u32 = 20_000;
    for _round in 0..5 {
        let sessions = Arc::new(Sessions::new());
        let (old, mut old_frames) = mpsc::channel::<Frame>(FRAMES as usize);
        let (new, mut new_frames) = mpsc::channel::<Frame>(FRAMES as usize);
        let old: Arc<dyn Outbound> = Arc::new(old);
        sessions.attach(SessionId(7), old.clone());
        let pushed = Arc::new(AtomicU32::new(0));
        let start = Arc::new(Barrier::new(2));
        let pusher = {
            let sessions = sessions.clone();
            let pushed = pushed.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                for seq in 0..FRAMES {
                    // Never refused: there is no moment without a connection.
                    sessions
                        .push(SessionId(7), frame(seq))
                        .expect("a connection is always attached");
                    pushed.store(seq + 1, Ordering::Release);
                }
            })
        };
        start.wait();
        while pushed.load(Ordering::Acquire) < FRAMES / 2 {
            std::hint::spin_loop();
        }
        let replaced = sessions
            .attach(SessionId(7), Arc::new(new))
            .expect("the old connection");
        let pushed_when_swapped = pushed.load(Ordering::Acquire);
        assert!(Arc::ptr_eq(&replaced, &old));
        // A replaced connection detaching itself must not detach its successor.
        assert_eq!(
            sessions.detach(SessionId(7), &old),
            None,
            "a replaced connection cannot detach"
        );
        pusher.join().unwrap();

        let on_old = drain(&mut old_frames);
        let on_new = drain(&mut new_frames);
        assert_eq!(
            on_old.len() + on_new.len(),
            FRAMES as usize,
            "every frame delivered exactly once"
        );
        assert_eq!(
            on_old,
            (0..on_old.len() as u32).collect::<Vec<_>>(),
            "the old connection got a prefix, in order"
        );
        assert_eq!(
            on_new,
            (on_old.len() as u32..FRAMES).collect::<Vec<_>>(),
            "the new one got the rest, in order"
        );
        assert!(
            on_old.len() as u32 <= pushed_when_swapped + 1,
            "nothing reached the old connection after the swap"
        );
    }
}
