//! The simulation's determinism, delta and snapshot properties.

use proptest::prelude::*;

use super::*;

fn inputs(players: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), players), 1..400)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn same_seed_and_inputs_give_the_same_world(seed in any::<u64>(), frames in inputs(6)) {
        let mut a = World::new(seed, 6);
        let mut b = World::new(seed, 6);
        for frame in &frames {
            a.step(frame);
            b.step(frame);
            prop_assert_eq!(a.checksum(), b.checksum());
        }
        prop_assert_eq!(a, b);
    }

    #[test]
    fn applying_each_frames_delta_reproduces_the_world(seed in any::<u64>(), frames in inputs(5)) {
        let mut server = World::new(seed, 5);
        let mut mirror = server.clone();
        for frame in &frames {
            let before = server.clone();
            server.step(frame);
            // The delta carries the units' fields; frame and generator advance with the frame.
            mirror.apply(&server.delta_from(&before));
            mirror.frame = server.frame;
            mirror.rng = server.rng;
            prop_assert_eq!(&mirror, &server);
        }
    }

    #[test]
    fn units_stay_in_the_arena_and_hit_points_in_range(seed in any::<u64>(), frames in inputs(4)) {
        let mut world = World::new(seed, 4);
        for frame in &frames {
            world.step(frame);
            for unit in &world.units {
                prop_assert!((0..ARENA).contains(&unit.x) && (0..ARENA).contains(&unit.y));
                prop_assert!((0..=MAX_HP).contains(&unit.hp));
            }
        }
    }
}

#[test]
fn a_different_input_changes_the_checksum() {
    let mut a = World::new(7, 2);
    let mut b = World::new(7, 2);
    a.step(&[input::LEFT, 0]);
    b.step(&[input::RIGHT, 0]);
    assert_ne!(a.checksum(), b.checksum());
}

#[test]
fn units_fight_die_and_respawn() {
    let mut world = World::new(1, 2);
    // Put both units side by side and let the first attack until the second dies.
    world.units[0].x = 50_000;
    world.units[0].y = 50_000;
    world.units[1].x = 51_000;
    world.units[1].y = 50_000;
    let mut frames = 0;
    while world.units[1].hp > 0 {
        world.step(&[input::ATTACK, 0]);
        frames += 1;
        assert!(frames < 1_000, "the target never died");
    }
    assert_eq!(world.units[0].kills, 1);
    assert_eq!(world.units[1].respawn_in, RESPAWN_FRAMES);
    for _ in 0..RESPAWN_FRAMES {
        world.step(&[0, 0]);
    }
    assert_eq!(world.units[1].hp, MAX_HP, "respawned");
}

#[test]
fn a_snapshot_restores_the_world_and_its_future() {
    let mut world = World::new(99, 8);
    for frame in 0..300u32 {
        world.step(&[(frame % 32) as u8; 8]);
    }
    let bytes = garrison_protocol::snapshot::write(&world).unwrap();
    let mut restored = garrison_protocol::snapshot::read::<World>(bytes).unwrap();
    assert_eq!(restored, world);
    for frame in 0..300u32 {
        world.step(&[(frame % 7) as u8 | input::ATTACK; 8]);
        restored.step(&[(frame % 7) as u8 | input::ATTACK; 8]);
    }
    assert_eq!(
        restored.checksum(),
        world.checksum(),
        "the same future after a restore"
    );
}
