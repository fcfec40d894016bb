//! Sessions: an entity a session is not bound to is refused; a binding carries its value and a
//! new one replaces it; a reconnect swaps the connection atomically, so every frame reaches
//! exactly one connection and none is lost.

use std::sync::{
    Arc, Barrier,
    atomic::{AtomicU32, Ordering},
};

use bytes::BytesMut;
use garrison_protocol::{DecodeConfig, Frame, FrameCodec, FrameMeta};
use garrison_runtime::{KindConfig, Outbound, Refusal, SessionId, Sessions};
use garrison_tests::wire::Input;
use tokio::sync::mpsc;

use super::counter::{Counter, Msg, add, get, start};

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
        .encode_message(&input, FrameMeta::seq(seq), &mut wire)
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
    let session = sessions.get(SessionId(1)).expect("open");
    session.bind(&counters, 10);

    assert!(session.send::<Counter>(add(0, 3)).is_ok());
    assert!(session.send_to::<Counter>(&10, add(1, 3)).is_ok());
    let refused = session
        .send_to::<Counter>(&11, add(2, 3))
        .expect_err("key 11 is another player's");
    assert_eq!(
        refused.reason,
        Refusal::NotBound {
            session: SessionId(1),
            kind: "counter",
            key: Some("11".into())
        }
    );
    assert_eq!(
        refused.reason.to_string(),
        "session 1 may not address counter 11"
    );
    assert!(
        matches!(refused.message, Msg::Add { seq: 2, .. }),
        "the message is handed back"
    );
    assert!(
        !counters.is_active(&11),
        "a refused message activates nothing"
    );
    // A session bound to no entity of a kind is refused for that kind.
    let (other, _) = sessions.open(SessionId(2));
    let unbound = other.send::<Counter>(Msg::Rest).expect_err("not bound");
    assert_eq!(
        unbound.reason.to_string(),
        "session 2 is bound to no counter"
    );
    // A closed session's handle refuses everything.
    sessions.close(SessionId(2));
    let closed = other.send::<Counter>(Msg::Rest).expect_err("closed");
    assert_eq!(
        closed.reason,
        Refusal::NoSession {
            session: SessionId(2)
        }
    );
    assert_eq!(get(&counters, 10).await.0.total, 6);
    tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_carries_its_value_and_rebinding_replaces_it() {
    let (counters, _, tree) = start(KindConfig::default()).await;
    let sessions = Sessions::new();
    let (session, opened) = sessions.open(SessionId(5));
    assert!(opened);
    session.bind_with(&counters, 20, 7i64);
    // The value is read where the message is built: no lookup of the game's own.
    assert!(
        session
            .send_with::<Counter, i64>(|key, amount| add(*key as u32, *amount))
            .is_ok()
    );
    session.bind_with(&counters, 21, 9i64);
    assert_eq!(session.bound::<Counter>(), Some(21), "one binding per kind");
    assert!(
        session
            .send_with::<Counter, i64>(|key, amount| add(*key as u32, *amount))
            .is_ok()
    );
    // Built with the wrong value type: not bound so, nothing built.
    let refused = session
        .send_with::<Counter, u8>(|_, _| unreachable!("nothing is built"))
        .expect_err("bound with an i64");
    assert!(refused.message.is_none());
    session.unbind::<Counter>();
    assert_eq!(session.bound::<Counter>(), None);
    assert_eq!(get(&counters, 20).await.0.total, 7);
    assert_eq!(get(&counters, 21).await.0.total, 9);
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
