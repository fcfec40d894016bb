//! Run with: `cargo run -p garrison-runtime --example two_kinds`
//!
//! Two kinds that hold each other's typed handle: each is declared first and served after, so a
//! `Ping` module can name the `Pong` registry and the other way round, with no service locator.
//! A ball goes back and forth between them until its hits run out.

use garrison_runtime::prelude::*;
use tokio::sync::oneshot;

#[derive(Archive, Serialize, Deserialize, Default)]
struct Hits {
    count: u32,
}

impl Snapshot for Hits {
    const SCHEMA: &'static str = "rally.hits";
    const VERSION: u16 = 1;
}

/// The ball: how many hits are left, and who to tell at the end.
struct Ball {
    left: u32,
    done: Option<oneshot::Sender<u32>>,
}

impl EntityMessage for Ball {
    fn event_type(&self) -> &'static str {
        "ball"
    }
}

struct Ping {
    pong: Entities<Pong>,
}

struct Pong {
    ping: Entities<Ping>,
}

/// One hit: count it, then send the ball to the other side, or report the end.
fn hit<E>(
    hits: &mut Hits,
    ball: Ball,
    other: &Entities<E>,
    key: u8,
    wrap: fn(Ball) -> E::Message,
) -> Result<(), HandlerError>
where
    E: Entity<Key = u8>,
{
    hits.count += 1;
    match ball.left {
        0 => {
            if let Some(done) = ball.done {
                let _ = done.send(hits.count);
            }
            Ok(())
        }
        left => other
            .send(
                &key,
                wrap(Ball {
                    left: left - 1,
                    done: ball.done,
                }),
            )
            .map_err(|refused| refused.reason.into()),
    }
}

impl Entity for Ping {
    const KIND: &'static str = "ping";
    type Key = u8;
    type State = Hits;
    type Message = Ball;

    async fn activate(&self, _: &u8, activation: Activation<Hits>) -> Result<Hits, HandlerError> {
        Ok(activation.unwrap_or_default())
    }

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        ball: Ball,
        hits: &mut Hits,
    ) -> Result<(), HandlerError> {
        hit(hits, ball, &self.pong, *context.key(), |ball| ball)
    }
}

impl Entity for Pong {
    const KIND: &'static str = "pong";
    type Key = u8;
    type State = Hits;
    type Message = Ball;

    async fn activate(&self, _: &u8, activation: Activation<Hits>) -> Result<Hits, HandlerError> {
        Ok(activation.unwrap_or_default())
    }

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        ball: Ball,
        hits: &mut Hits,
    ) -> Result<(), HandlerError> {
        hit(hits, ball, &self.ping, *context.key(), |ball| ball)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Declared first, served after: each module holds the other kind's handle.
    let pings = Entities::<Ping>::declare(KindConfig::default())?;
    let pongs = Entities::<Pong>::declare(KindConfig::default())?;
    pings.serve(Ping {
        pong: pongs.clone(),
    })?;
    pongs.serve(Pong {
        ping: pings.clone(),
    })?;
    let tree = supervisor! {
        "rally": one_for_one {
            entities "pings" => pings.start();
            entities "pongs" => pongs.start();
        }
    }?
    .start()
    .await?;
    let (done, last) = oneshot::channel();
    pings
        .send(
            &1,
            Ball {
                left: 999,
                done: Some(done),
            },
        )
        .map_err(|refused| refused.reason)?;
    let last_side_hits = last.await?;
    println!("1,000 hits; the side that played the last one hit {last_side_hits} times");
    tree.stop().await?;
    Ok(())
}
