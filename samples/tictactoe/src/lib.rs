//! Tic-tac-toe on Garrison: the sample to read first (`docs/first-game.md` walks through it).
//!
//! Players 1 and 2 share table 1, players 3 and 4 table 2, and so on. A table is one entity:
//! its board is checkpointed after every move (the default), so a crash loses nothing; its turn
//! clock is an entity timer kept across a crash; it hears its players leave through session
//! events, and tells both players every move through its group.

use std::{sync::Arc, time::Duration};

use garrison_runtime::prelude::*;

/// Sit down at your table (a request: the reply is the board).
#[derive(Archive, Serialize, Deserialize, Schema, Debug)]
pub struct Sit {}

/// Mark `cell` (0-8, row by row) on your turn (a request: the reply is the board).
#[derive(Archive, Serialize, Deserialize, Schema, Debug)]
pub struct Mark {
    /// The cell.
    pub cell: u8,
}

/// The board: 0 empty, 1 the first player's mark, 2 the second's; whose turn it is.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Default, PartialEq)]
pub struct Board {
    /// The cells, row by row.
    pub cells: [u8; 9],
    /// The player to move (0 before both are seated).
    pub next: u64,
}

/// The end of a game, told to both players.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone)]
pub struct Outcome {
    /// The winner, none for a draw.
    pub winner: Option<u64>,
    /// How it ended: "three in a row", "draw", "forfeit: ...".
    pub reason: String,
}

messages! {
    /// Everything said at a table, both ways.
    pub enum Ttt {
        0x0200 => Sit(Sit),
        0x0201 => Mark(Mark),
        0x0202 => Board(Board),
        0x0203 => Outcome(Outcome),
    }
}

/// A table's state: checkpointed after every message.
#[derive(Archive, Serialize, Deserialize, Default)]
pub struct Game {
    players: Vec<u64>,
    board: Board,
    /// When the player to move forfeits (`clock::now_millis`).
    deadline: u64,
    group: Group,
    over: bool,
}

snapshot!(Game, "tictactoe.game", 1);

entity_messages! {
    /// What a table handles.
    pub enum TableMsg {
        /// A player's frame: its event type is the message's name.
        Client(Ttt) => inner,
        /// A seated player's session connected, left or came back.
        Session(SessionId, SessionEvent) => "session",
        /// The turn clock.
        Clock => "clock",
        /// Fault injection: the table panics.
        Crash => "crash",
    }
    session_event = Session;
}

/// The table kind.
pub struct Table {
    sessions: Arc<Sessions>,
    turn: Duration,
}

#[rustfmt::skip]
const LINES: [[usize; 3]; 8] = [
    [0, 1, 2],
    [3, 4, 5],
    [6, 7, 8],
    [0, 3, 6],
    [1, 4, 7],
    [2, 5, 8],
    [0, 4, 8],
    [2, 4, 6],
];

type Cx<'a> = EntityContext<'a, Table>;

impl Game {
    /// The other player at the table.
    fn other(&self, player: u64) -> Option<u64> {
        self.players.iter().copied().find(|&other| other != player)
    }
}

impl Table {
    /// When a turn starting now runs out.
    fn deadline(&self) -> u64 {
        garrison_runtime::clock::now_millis() + self.turn.as_millis() as u64
    }

    fn end(&self, game: &mut Game, cx: &mut Cx<'_>, winner: Option<u64>, reason: String) {
        game.group
            .broadcast(&self.sessions, 0, &Outcome { winner, reason });
        game.over = true;
        // The table is free again: its next message starts a new game.
        cx.stop();
    }

    fn mark(&self, game: &mut Game, cx: &mut Cx<'_>, cell: usize) -> Result<(), HandlerError> {
        let player = cx.session().map_or(0, |session| session.0);
        if game.board.next != player || cell > 8 || game.board.cells[cell] != 0 {
            // A reply that cannot go out (the player's connection is closing) is the
            // connection's business: never a reason to crash the table.
            let _ = cx.refuse(RefusalCode::Rejected, "not your turn, or not a free cell");
            return Ok(());
        }
        let mark = if player == game.players[0] { 1 } else { 2 };
        game.board.cells[cell] = mark;
        game.board.next = game.other(player).unwrap_or(0);
        game.deadline = self.deadline();
        let _ = cx.reply(&game.board);
        let (sessions, cells) = (&self.sessions, game.board.cells);
        game.group
            .broadcast_except(sessions, SessionId(player), 0, &game.board);
        if LINES
            .iter()
            .any(|line| line.iter().all(|&at| cells[at] == mark))
        {
            self.end(game, cx, Some(player), "three in a row".into());
        } else if cells.iter().all(|&cell| cell != 0) {
            self.end(game, cx, None, "draw".into());
        }
        Ok(())
    }

    fn sit(&self, game: &mut Game, cx: &mut Cx<'_>) -> Result<(), HandlerError> {
        let player = cx.session().map_or(0, |session| session.0);
        if !game.players.contains(&player) && game.players.len() < 2 {
            game.players.push(player);
            game.group.join(SessionId(player));
        }
        if game.players.len() == 2 && game.board.next == 0 {
            // Both seated: the first player moves; the clock checks the turn's deadline.
            game.board.next = game.players[0];
            game.deadline = self.deadline();
            let clock = Timer::every(Duration::from_millis(50), || TableMsg::Clock);
            cx.timer(clock.surviving_restart())?;
            let (sessions, board) = (&self.sessions, &game.board);
            game.group
                .broadcast_except(sessions, SessionId(player), 0, board);
        }
        let _ = cx.reply(&game.board);
        Ok(())
    }
}

impl Entity for Table {
    const KIND: &'static str = "table";
    type Key = u64;
    type State = Game;
    type Message = TableMsg;

    async fn handle(
        &self,
        cx: &mut Cx<'_>,
        msg: TableMsg,
        game: &mut Game,
    ) -> Result<(), HandlerError> {
        let now = garrison_runtime::clock::now_millis();
        match msg {
            // Ending: what is still queued finds the game over (the next message starts anew).
            TableMsg::Client(_) if game.over => {
                let _ = cx.refuse(RefusalCode::Rejected, "game over");
            }
            _ if game.over => {}
            TableMsg::Client(Ttt::Sit(_)) => self.sit(game, cx)?,
            TableMsg::Client(Ttt::Mark(mark)) => self.mark(game, cx, usize::from(mark.cell))?,
            TableMsg::Client(_) => {
                let _ = cx.refuse(RefusalCode::Rejected, "send Sit or Mark");
            }
            TableMsg::Clock if game.board.next != 0 && now >= game.deadline => {
                let late = game.board.next;
                let why = format!("forfeit: player {late} ran out of time");
                self.end(game, cx, game.other(late), why);
            }
            // Back with the same ticket: the board as it stands.
            TableMsg::Session(player, SessionEvent::Resumed) => {
                let _ = self.sessions.send_message(player, &game.board);
            }
            TableMsg::Session(player, SessionEvent::Closed) if game.players.contains(&player.0) => {
                let why = format!("forfeit: player {player} left");
                self.end(game, cx, game.other(player.0), why);
            }
            TableMsg::Clock | TableMsg::Session(..) => {}
            TableMsg::Crash => panic!("injected crash"),
        }
        Ok(())
    }
}

/// A running tic-tac-toe server.
pub struct Server {
    /// The gateway players connect to.
    pub gateway: Gateway<Ttt>,
    /// The tables (for fault injection and inspection).
    pub tables: Entities<Table>,
    tree: SupervisorRef,
}

impl Server {
    /// Serves tic-tac-toe with `config`, a player forfeiting after `turn` without moving.
    ///
    /// # Errors
    /// When the tree or the gateway cannot start.
    pub async fn start(
        config: GatewayConfig,
        turn: Duration,
    ) -> Result<Server, Box<dyn std::error::Error>> {
        let sessions = Arc::new(Sessions::new());
        let tables = Entities::new(
            Table {
                sessions: sessions.clone(),
                turn,
            },
            KindConfig::default(),
        )?;
        let tree =
            supervisor! { "tictactoe": one_for_one { entities "tables" => tables.start(); } }?;
        let tree = tree.start().await?;
        // Every player is bound to its table, and everything it sends goes there.
        let table_of = |session: &Session| session.player().div_ceil(2);
        let gateway =
            GatewayBuilder::to_entity(config, sessions, &tables, table_of, TableMsg::Client)
                .start()?;
        Ok(Server {
            gateway,
            tables,
            tree,
        })
    }

    /// Stops the gateway, then the tables.
    pub async fn stop(self) {
        self.gateway.shutdown().await;
        let _ = self.tree.stop().await;
    }
}
