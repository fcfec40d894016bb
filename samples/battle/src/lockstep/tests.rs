//! Lockstep: inputs run at their stamped frame, missing ones are replaced and flagged, mirrors
//! stay in sync, and a crashed room recovers to the identical state.

use proptest::prelude::*;

use super::*;
use crate::sim::input;

fn config(players: usize) -> LockstepConfig {
    LockstepConfig {
        players,
        snapshot_every: 50,
        ..LockstepConfig::default()
    }
}

#[test]
fn an_input_runs_at_its_stamped_frame_and_a_missing_one_repeats_the_previous() {
    let mut room = Lockstep::new(3, config(2)).unwrap();
    assert_eq!(room.submit(0, 3, input::RIGHT), InputOutcome::Accepted);
    assert_eq!(room.submit(1, 3, input::LEFT), InputOutcome::Accepted);
    assert_eq!(room.submit(0, 3, input::UP), InputOutcome::Duplicate);
    assert_eq!(room.submit(5, 3, 0), InputOutcome::UnknownSlot);
    assert_eq!(room.submit(0, 1_000, 0), InputOutcome::TooFarAhead);
    for frame in 0..3 {
        let broadcast = room.advance().unwrap();
        assert_eq!(broadcast.record.frame, frame);
        assert_eq!(broadcast.record.inputs, [0, 0]);
        assert_eq!(
            broadcast.record.replaced, 0b11,
            "nobody sent inputs for frames 0-2"
        );
    }
    let frame3 = room.advance().unwrap();
    assert_eq!(
        (frame3.record.inputs.clone(), frame3.record.replaced),
        (vec![input::RIGHT, input::LEFT], 0)
    );
    let frame4 = room.advance().unwrap();
    assert_eq!(
        frame4.record.inputs,
        [input::RIGHT, input::LEFT],
        "previous inputs stand in"
    );
    assert_eq!(frame4.record.replaced, 0b11);
    assert_eq!(
        room.submit(0, 2, input::ATTACK),
        InputOutcome::Late { next_frame: 5 }
    );
}

#[test]
fn checksums_ride_every_thirtieth_frame() {
    let mut room = Lockstep::new(1, config(2)).unwrap();
    let with_checksum: Vec<u32> = (0..90)
        .filter_map(|_| room.advance().ok())
        .filter(|broadcast| broadcast.checksum.is_some())
        .map(|broadcast| broadcast.record.frame)
        .collect();
    assert_eq!(with_checksum, [29, 59, 89]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn mirrors_fed_the_broadcasts_never_desync(
        seed in any::<u64>(),
        script in prop::collection::vec((0usize..4, 0u32..8, any::<u8>()), 0..600),
    ) {
        let mut room = Lockstep::new(seed, config(4)).unwrap();
        let mut mirror = Mirror::new(seed, 4);
        let mut script = script.into_iter();
        for _ in 0..300 {
            for (slot, ahead, buttons) in script.by_ref().take(2) {
                room.submit(slot, room.next_frame() + ahead, buttons);
            }
            let broadcast = room.advance().unwrap();
            mirror.apply(broadcast.record.frame, &broadcast.record.inputs, broadcast.checksum).unwrap();
        }
        prop_assert_eq!(mirror.desyncs, 0);
        prop_assert_eq!(mirror.verified, 10);
        prop_assert_eq!(mirror.world(), room.world());
    }

    #[test]
    fn a_recovered_room_matches_a_run_without_the_crash_frame_by_frame(
        seed in any::<u64>(),
        crash_at in 1u32..400,
        inputs in prop::collection::vec(any::<u8>(), 1_600),
    ) {
        let stamp = |room: &mut Lockstep, frame: u32| {
            for slot in 0..4 {
                room.submit(slot, frame, inputs[(frame as usize * 4 + slot) % inputs.len()]);
            }
        };
        let mut reference = Lockstep::new(seed, config(4)).unwrap();
        let mut crashing = Lockstep::new(seed, config(4)).unwrap();
        for frame in 0..400u32 {
            stamp(&mut reference, frame);
            reference.advance().unwrap();
            if frame == crash_at {
                // The room crashes: only its checkpoint survives.
                let (snapshot, log) = crashing.checkpoint();
                let log = log.to_vec();
                crashing = Lockstep::recover(*crashing.config(), snapshot, &log).unwrap();
            }
            stamp(&mut crashing, frame);
            crashing.advance().unwrap();
            prop_assert_eq!(crashing.world().checksum(), reference.world().checksum(), "frame {}", frame);
        }
    }
}

#[test]
fn a_mirror_detects_a_desync_and_refuses_a_gap() {
    let mut room = Lockstep::new(5, config(2)).unwrap();
    let mut mirror = Mirror::new(5, 2);
    for frame in 0..60u32 {
        room.submit(0, frame, input::RIGHT | input::ATTACK);
        let broadcast = room.advance().unwrap();
        // A corrupted copy of the inputs from frame 10 on.
        let mut inputs = broadcast.record.inputs.clone();
        if frame >= 10 {
            inputs[1] = input::DOWN;
        }
        mirror
            .apply_checked(frame, &inputs, Some(&broadcast.delta), broadcast.checksum)
            .unwrap();
    }
    assert_eq!(
        mirror.desyncs, 2,
        "frames 29 and 59 carried checksums and both disagree"
    );
    assert!(
        mirror.delta_mismatches > 0 && mirror.delta_mismatches <= 50,
        "the deltas disagree from frame 10 on, not before: {}",
        mirror.delta_mismatches
    );
    assert_eq!(
        mirror.apply(70, &[0, 0], None),
        Err(MirrorError::OutOfOrder {
            expected: 60,
            found: 70
        })
    );
}

#[test]
fn recovery_refuses_a_log_with_a_gap() {
    let mut room = Lockstep::new(8, config(2)).unwrap();
    for _ in 0..10 {
        room.advance().unwrap();
    }
    let (snapshot, log) = room.checkpoint();
    let mut log = log.to_vec();
    log.remove(4);
    assert!(matches!(
        Lockstep::recover(*room.config(), snapshot, &log),
        Err(RecoverError::Gap {
            expected: 4,
            found: 5
        })
    ));
}

/// Runs `room` for `frames` frames with varied inputs, feeding `mirror` only the first
/// `mirror_until` of them (the client "disconnected" after that).
fn run_with_gap(room: &mut Lockstep, mirror: &mut Mirror, frames: u32, mirror_until: u32) {
    for frame in 0..frames {
        let now = room.next_frame();
        room.submit(0, now, (frame % 16) as u8);
        room.submit(1, now, input::ATTACK | (frame % 4) as u8);
        let broadcast = room.advance().unwrap();
        if frame < mirror_until {
            mirror
                .apply(
                    broadcast.record.frame,
                    &broadcast.record.inputs,
                    broadcast.checksum,
                )
                .unwrap();
        }
    }
}

#[test]
fn a_client_a_few_frames_behind_resumes_from_the_log() {
    // Snapshot at frame 50; the client stopped at 60; the room is at 80.
    let mut room = Lockstep::new(9, config(2)).unwrap();
    let mut mirror = Mirror::new(9, 2);
    run_with_gap(&mut room, &mut mirror, 80, 60);
    let Resumption::Frames(missed) = room.resume(60, 100).unwrap() else {
        panic!("20 frames behind, inside the log: expected frames");
    };
    assert_eq!(
        missed.iter().map(|record| record.frame).collect::<Vec<_>>(),
        (60..80).collect::<Vec<_>>()
    );
    for record in &missed {
        mirror.apply(record.frame, &record.inputs, None).unwrap();
    }
    assert_eq!(mirror.world().checksum(), room.world().checksum());
    assert_eq!(
        room.resume(80, 100).unwrap(),
        Resumption::Frames(Vec::new()),
        "an up-to-date client needs nothing"
    );
}

#[test]
fn a_client_too_far_behind_resumes_from_a_snapshot() {
    let mut room = Lockstep::new(4, config(2)).unwrap();
    let mut mirror = Mirror::new(4, 2);
    run_with_gap(&mut room, &mut mirror, 80, 40);
    // Frame 40 is before the snapshot at 50: the log no longer reaches back.
    let before_log = room.resume(40, 1_000).unwrap();
    // Frame 60 is in the log but beyond a limit of 10 frames.
    let over_limit = room.resume(60, 10).unwrap();
    for resumption in [before_log, over_limit] {
        let Resumption::Snapshot {
            frame,
            snapshot,
            inputs,
        } = resumption
        else {
            panic!("expected a snapshot");
        };
        assert_eq!(frame, 80);
        assert_eq!(inputs, room.last_inputs());
        let resumed = Mirror::from_snapshot(snapshot)
            .unwrap()
            .with_inputs(inputs)
            .unwrap();
        assert_eq!(resumed.last_inputs(), room.last_inputs());
        assert_eq!(resumed.world().frame, 80);
        assert_eq!(resumed.world().checksum(), room.world().checksum());
    }
    assert!(
        matches!(room.resume(81, 1_000).unwrap(), Resumption::Snapshot { .. }),
        "a frame from the future is not trusted"
    );
}

/// Runs `frames` frames of `room` with inputs that change now and then, feeding `mirror` the
/// compact record of each (XORed against the frame before, as the room sends it).
fn run_compact(room: &mut Lockstep, mirror: &mut Mirror, frames: u32) {
    let mut inputs = Vec::new();
    let mut record = Vec::new();
    for _ in 0..frames {
        let frame = room.next_frame();
        // Slot 0 changes every 7th frame, slot 1 every 11th; the others never send.
        if frame.is_multiple_of(7) {
            room.submit(0, frame, (frame % 32) as u8);
        }
        if frame.is_multiple_of(11) {
            room.submit(1, frame, input::ATTACK | (frame % 4) as u8);
        }
        let previous = room.last_inputs().to_vec();
        let broadcast = room.advance().unwrap();
        record.clear();
        crate::packed::pack(
            &previous,
            &broadcast.record.inputs,
            broadcast.record.replaced,
            broadcast.checksum,
            false,
            &mut record,
        );
        let unpacked = crate::packed::unpack(&record, mirror.last_inputs(), &mut inputs).unwrap();
        assert_eq!(inputs, broadcast.record.inputs);
        assert_eq!(unpacked.replaced, broadcast.record.replaced);
        mirror.apply(frame, &inputs, unpacked.checksum).unwrap();
    }
}

#[test]
fn a_mirror_fed_compact_frames_stays_in_sync_from_the_start_and_after_a_resync() {
    let mut room = Lockstep::new(9, config(4)).unwrap();
    let mut mirror = Mirror::new(9, 4);
    run_compact(&mut room, &mut mirror, 120);
    assert_eq!(mirror.desyncs, 0);
    assert_eq!(
        mirror.verified, 4,
        "frames 30, 60, 90, 120 carried checksums"
    );
    // A client that resyncs from a snapshot goes on from the inputs the snapshot carries.
    let Resumption::Snapshot {
        snapshot, inputs, ..
    } = room.resume(0, 0).unwrap()
    else {
        panic!("expected a snapshot");
    };
    let mut resynced = Mirror::from_snapshot(snapshot)
        .unwrap()
        .with_inputs(inputs)
        .unwrap();
    run_compact(&mut room, &mut resynced, 90);
    assert_eq!((resynced.verified, resynced.desyncs), (3, 0));
    assert_eq!(resynced.world().checksum(), room.world().checksum());
    let Resumption::Snapshot { snapshot, .. } = room.resume(0, 0).unwrap() else {
        panic!("expected a snapshot");
    };
    assert_eq!(
        Mirror::from_snapshot(snapshot)
            .unwrap()
            .with_inputs(vec![0; 3])
            .unwrap_err(),
        MirrorError::Inputs {
            inputs: 3,
            units: 4
        },
        "previous inputs for another room size are refused"
    );
}
