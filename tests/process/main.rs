//! Process-level tests, each needing a whole process to itself: an open-file limit lowered for
//! the server alone, the process's CPU measured while nothing else runs in it, or every heap
//! allocation in the process counted. cargo runs
//! test binaries one at a time, so this binary (`harness = false`) runs alone; it runs its tests
//! in order and re-executes itself as the child process a test needs (`GARRISON_PROCESS_CHILD`
//! names the child's role), stopping each child by its pid.

mod allocations;
mod battle_idle;
mod battle_restart;
mod fd_limit;

/// Every allocation in this process is counted (see `allocations`).
#[global_allocator]
static ALLOCATOR: allocations::Counting = allocations::Counting;

use std::time::Instant;

type Outcome = Result<(), String>;

/// A test: its name and its body.
type Test = (&'static str, fn() -> Outcome);

fn main() {
    if let Ok(role) = std::env::var(fd_limit::CHILD_VAR) {
        fd_limit::child(&role);
        return;
    }
    if let Ok(store) = std::env::var(battle_restart::CHILD_VAR) {
        battle_restart::child(&store);
        return;
    }
    let tests: [Test; 8] = [
        (
            "allocations::the_inbound_path_allocates_nothing_per_input",
            allocations::the_inbound_path_allocates_nothing_per_input,
        ),
        (
            "allocations::the_outbound_path_allocates_nothing_per_frame",
            allocations::the_outbound_path_allocates_nothing_per_frame,
        ),
        (
            "fd_limit::connections_past_the_open_file_limit_are_told_the_server_is_full",
            fd_limit::connections_past_the_open_file_limit_are_told_the_server_is_full,
        ),
        (
            "fd_limit::a_server_out_of_descriptors_still_answers_server_full",
            fd_limit::a_server_out_of_descriptors_still_answers_server_full,
        ),
        (
            "battle_idle::abandoned_rooms_are_released_and_the_server_goes_idle",
            battle_idle::abandoned_rooms_are_released_and_the_server_goes_idle,
        ),
        (
            "battle_restart::a_killed_server_resumes_every_match_from_redb",
            battle_restart::a_killed_server_resumes_every_match_from_redb,
        ),
        (
            "battle_restart::a_gracefully_restarted_server_loses_no_accepted_input",
            battle_restart::a_gracefully_restarted_server_loses_no_accepted_input,
        ),
        (
            "battle_restart::a_killed_server_resumes_every_match_from_redis",
            battle_restart::a_killed_server_resumes_every_match_from_redis,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let mut failed = 0;
    let mut ran = 0;
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|wanted| name.contains(wanted.as_str())) {
            continue;
        }
        ran += 1;
        let started = Instant::now();
        match test() {
            Ok(()) => println!(
                "test {name} ... ok ({:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            Err(reason) => {
                failed += 1;
                // The reason on the same line: a log cut after the test's line keeps it.
                println!("test {name} ... FAILED: {reason}");
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" },
        ran - failed
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
