//! Run with: `cargo run -p garrison-runtime --example hello_entity`
//!
//! The smallest game: one kind of entity (a greeter per name) in a supervision tree. Each
//! greeter counts its greetings; a crash restarts it with its count (the default checkpoint).

use garrison_runtime::prelude::*;
use tokio::sync::oneshot;

/// What one greeter remembers.
#[derive(Archive, Serialize, Deserialize, Default)]
struct Greeted {
    times: u32,
}

impl Snapshot for Greeted {
    const SCHEMA: &'static str = "hello.greeted";
    const VERSION: u16 = 1;
}

enum Greet {
    Hello(oneshot::Sender<String>),
    Trip,
}

impl EntityMessage for Greet {
    fn event_type(&self) -> &'static str {
        match self {
            Greet::Hello(_) => "hello",
            Greet::Trip => "trip",
        }
    }
}

struct Greeter;

impl Entity for Greeter {
    const KIND: &'static str = "greeter";
    type Key = String;
    type State = Greeted;
    type Message = Greet;

    async fn activate(
        &self,
        _: &String,
        activation: Activation<Greeted>,
    ) -> Result<Greeted, HandlerError> {
        Ok(activation.unwrap_or_default())
    }

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        message: Greet,
        state: &mut Greeted,
    ) -> Result<(), HandlerError> {
        match message {
            Greet::Hello(reply) => {
                state.times += 1;
                let _ = reply.send(format!("hello {} (#{})", context.key(), state.times));
            }
            Greet::Trip => panic!("the greeter tripped"),
        }
        Ok(())
    }
}

async fn hello(
    greeters: &Entities<Greeter>,
    name: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let (reply, answer) = oneshot::channel();
    greeters
        .send(&name.to_owned(), Greet::Hello(reply))
        .map_err(|refused| refused.reason)?;
    Ok(answer.await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let greeters = Entities::new(Greeter, KindConfig::default())?;
    let tree = supervisor! {
        "hello": one_for_one {
            entities "greeters" => greeters.start();
        }
    }?
    .start()
    .await?;
    println!("{}", hello(&greeters, "ada").await?);
    println!("{}", hello(&greeters, "ada").await?);
    println!("{}", hello(&greeters, "grace").await?);
    // A crash loses the message that caused it, and nothing else: the count survives.
    greeters
        .send(&"ada".to_owned(), Greet::Trip)
        .map_err(|refused| refused.reason)?;
    println!("{} (after a crash)", hello(&greeters, "ada").await?);
    tree.stop().await?;
    Ok(())
}
