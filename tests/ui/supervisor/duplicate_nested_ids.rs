use garrison_supervisor::{supervisor, HandlerError, Start, Worker, WorkerContext};

struct Idle;

impl Worker for Idle {
    type Message = ();
    type State = ();
    async fn start(&self, _: &WorkerContext<()>) -> Result<(), HandlerError> {
        Ok(())
    }
    async fn handle(&self, _: &WorkerContext<()>, _: (), _: &mut ()) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {
    let _spec = supervisor! {
        "node": one_for_one {
            supervisor "zone": one_for_all {
                worker "east" => Start::worker(|| Idle);
                worker "east" => Start::worker(|| Idle);
            }
        }
    };
}
