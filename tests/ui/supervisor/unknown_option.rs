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
            worker "a" => Start::worker(|| Idle), forever;
        }
    };
}
