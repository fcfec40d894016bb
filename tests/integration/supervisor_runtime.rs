//! A worker placed on another runtime (`Start::on_runtime`) runs there and restarts there; what
//! its placement holds is released once the child is gone for good; a runtime that has shut
//! down fails the start instead of losing the child.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use garrison_supervisor::{
    ChildSpec, Error, HandlerError, Start, SupervisorBuilder, Worker, WorkerContext,
};
use garrison_tests::probe::eventually;
use tokio::sync::oneshot;

const LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Ask {
    /// Answers with the name of the thread it runs on and its incarnation.
    Where(oneshot::Sender<(String, u64)>),
    Crash,
}

struct Here;

impl Worker for Here {
    type Message = Ask;
    type State = ();

    async fn start(&self, _: &WorkerContext<Ask>) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn handle(
        &self,
        context: &WorkerContext<Ask>,
        message: Ask,
        (): &mut (),
    ) -> Result<(), HandlerError> {
        match message {
            Ask::Where(answer) => {
                let thread = std::thread::current().name().unwrap_or("").to_owned();
                let _ = answer.send((thread, context.incarnation()));
                Ok(())
            }
            Ask::Crash => panic!("told to crash"),
        }
    }
}

/// A current-thread runtime on its own thread named `name`, running until `stop` fires.
fn event_loop(
    name: &str,
) -> (
    tokio::runtime::Handle,
    oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (handle, runtime) = std::sync::mpsc::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            handle.send(runtime.handle().clone()).unwrap();
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })
        .unwrap();
    (runtime.recv().unwrap(), stop, thread)
}

async fn released(hold: &Weak<()>) {
    let hold = hold.clone();
    eventually("the placement's hold released", LIMIT, move || {
        let gone = hold.upgrade().is_none();
        async move { gone }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_worker_runs_and_restarts_on_its_runtime_and_releases_it_when_gone() {
    let (runtime, stop, thread) = event_loop("placed-loop");
    let hold = Arc::new(());
    let watched = Arc::downgrade(&hold);
    let root = SupervisorBuilder::new("root")
        .child(ChildSpec::new(
            "here",
            Start::worker(|| Here).on_runtime(runtime, hold),
        ))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let here = root.child::<Ask>("here").await.unwrap();
    let ask = |here: &garrison_supervisor::ChildRef<Ask>| {
        let here = here.clone();
        async move { here.call(Ask::Where).await.unwrap() }
    };
    assert_eq!(ask(&here).await, ("placed-loop".to_owned(), 1));
    here.send(Ask::Crash).unwrap();
    let restarted = here.clone();
    eventually("the restart", LIMIT, move || {
        let restarted = restarted.incarnations() == 2;
        async move { restarted }
    })
    .await;
    assert_eq!(ask(&here).await, ("placed-loop".to_owned(), 2));
    assert!(watched.upgrade().is_some(), "held while supervised");
    root.stop().await.unwrap();
    released(&watched).await;
    stop.send(()).unwrap();
    thread.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_child_on_a_runtime_that_has_shut_down_fails_to_start() {
    let (runtime, stop, thread) = event_loop("gone-loop");
    stop.send(()).unwrap();
    thread.join().unwrap();
    let hold = Arc::new(());
    let watched = Arc::downgrade(&hold);
    let root = SupervisorBuilder::dynamic("rooms", 8)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let started = root
        .start_child(ChildSpec::new(
            "here",
            Start::worker(|| Here).on_runtime(runtime, hold),
        ))
        .await;
    assert!(
        matches!(&started, Err(Error::StartFailed { reason, .. }) if reason.contains("its runtime could not run it")),
        "{started:?}"
    );
    // The child was never kept: its spec, and the hold with it, are gone.
    released(&watched).await;
    root.stop().await.unwrap();
}
