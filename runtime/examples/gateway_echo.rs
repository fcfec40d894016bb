//! Run with: `cargo run -p garrison-runtime --example gateway_echo`
//!
//! A gateway on loopback: a client connects with a ticket, its session is bound to its own
//! entity, and each message it sends comes back from that entity. The client is in this
//! process, speaking the wire format with the protocol crate's codec.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use garrison_runtime::{
    gateway::ticket,
    prelude::*,
    protocol::{DecodeConfig, FrameCodec, control::Hello},
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// What a client says.
#[derive(Archive, Serialize, Deserialize, Schema, Debug)]
struct Say {
    text: String,
}

messages! {
    /// The client's messages.
    enum ClientMessage {
        0x0001 => Say(Say),
    }
}

#[derive(Archive, Serialize, Deserialize, Default)]
struct Said {
    lines: u32,
}

impl Snapshot for Said {
    const SCHEMA: &'static str = "echo.said";
    const VERSION: u16 = 1;
}

/// Each player's echo: sends back the very frame that arrived, no re-encoding.
struct Echo {
    sessions: Arc<Sessions>,
}

impl Entity for Echo {
    const KIND: &'static str = "echo";
    type Key = u64;
    type State = Said;
    type Message = ClientMessage;

    async fn activate(&self, _: &u64, activation: Activation<Said>) -> Result<Said, HandlerError> {
        Ok(activation.unwrap_or_default())
    }

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        message: ClientMessage,
        said: &mut Said,
    ) -> Result<(), HandlerError> {
        said.lines += 1;
        let _ = self
            .sessions
            .push(SessionId(*context.key()), message.frame().clone());
        Ok(())
    }
}

const KEY: &[u8] = b"an example key; load a real one from configuration";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let sessions = Arc::new(Sessions::new());
    let echoes = Entities::new(
        Echo {
            sessions: sessions.clone(),
        },
        KindConfig {
            // Each session's echo runs on its connection's event loop: the input, the handler
            // and the echo on one thread.
            placement: Placement::SessionLoop,
            ..KindConfig::default()
        },
    )?;
    let tree = supervisor! {
        "echo": one_for_one {
            entities "echoes" => echoes.start();
        }
    }?
    .start()
    .await?;
    let mut config = GatewayConfig::new(KEY);
    config.tcp = Some("127.0.0.1:0".parse()?);
    // The router sends each message to the entity the session is bound to.
    let gateway = GatewayBuilder::<ClientMessage>::new(config, sessions, |session, message| {
        session
            .send::<Echo>(message)
            .map_err(|refused| refused.reason)
    })
    .on_session(move |start| {
        start.session.bind(&echoes, start.session.player());
        Ok(())
    })
    .start()?;

    // A client: hello with a ticket, then two lines.
    let address = gateway.tcp_addr().ok_or("no TCP listener")?;
    let mut client = Framed::new(
        TcpStream::connect(address).await?,
        FrameCodec::new(DecodeConfig::default()),
    );
    let ticket = ticket::mint(KEY, 7, ticket::unix_now() + 60);
    client
        .send(garrison_runtime::protocol::encode_frame(
            &Hello { ticket, layout: 0 },
            FrameMeta::default(),
        )?)
        .await?;
    client.next().await.ok_or("no welcome")??;
    for (seq, text) in ["hello", "world"].into_iter().enumerate() {
        let say = Say { text: text.into() };
        client
            .send(garrison_runtime::protocol::encode_frame(
                &say,
                FrameMeta::seq(seq as u32),
            )?)
            .await?;
        let echo = client.next().await.ok_or("no echo")??;
        let seq = echo.header().seq;
        println!("echo {seq}: {}", echo.validate::<Say>()?.text);
    }
    drop(client);
    gateway.shutdown().await;
    tree.stop().await?;
    Ok(())
}
