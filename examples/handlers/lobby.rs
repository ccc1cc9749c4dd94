//! A game lobby: players create games, list the open ones, join them up to a maximum of
//! players, and the host starts them.
//!
//! Connect with `?name=NAME` (1 to [`MAX_NAME`] letters, digits, `-`, `_`, `.`); everyone
//! joins the room `lobby` and gets `welcome {name, games}` with the open games. Each game
//! has a room, `game:<id>`. Messages are JSON objects tagged by `type`:
//!
//! | the client sends                       | direct reply          | broadcast                                  |
//! |----------------------------------------|-----------------------|--------------------------------------------|
//! | `{"type":"list"}`                      | `games {games}`       |                                            |
//! | `{"type":"create","max_players":N?}`   | `created {game}`      | lobby: `game_opened {game}`                |
//! | `{"type":"join","game":ID}`            |                       | game: `player_joined {game, name}`; lobby: `game_full {id}` when it fills |
//! | `{"type":"start"}` (host only)         |                       | game: `started {game}`; lobby: `game_started {id}` |
//! | `{"type":"leave"}`                     | `left {id}`           | game: `player_left {game, name}`; lobby: `game_closed {id}` when it empties, `game_opened` when it is open again |
//!
//! Broadcasts reach everyone in the room, the sender included (a player in a game is in the
//! lobby too); the direct reply comes first. A game is an object `{id, host, players,
//! max_players, started}`. Mistakes are answered with `{"type":"error","code":C,"message":M}`:
//! `bad_request`, `already_in_game`, `not_in_game`, `no_such_game`, `full`, `started`,
//! `not_host`, `not_enough_players`, `too_many_games`.
//!
//! The games live in the handler, behind a [`std::sync::Mutex`] that each hook holds only
//! for a few map operations and never across an `.await`. They are bounded: at most
//! [`Limits::max_games`] at once, each player in at most one, and a game is removed as soon
//! as its last player leaves or disconnects (a host who leaves hands the game on to the
//! next player). A started game lives on until its players have all left.
//!
//! The games are this process's: on a cluster (`Server::builder(..).node(node)`) the rooms and
//! their broadcasts span every node, but each node's lobby would know only its own games, so
//! a clustered lobby keeps them in a shared store instead.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use serde::{Deserialize, Serialize};
use switchboard_server::{
    Accepted, Broadcast, CloseFrame, Connection, Handler, Incoming, Refusal, UpgradeContext, User,
};

use crate::name_param;

/// The longest name, in bytes.
pub const MAX_NAME: usize = 32;
/// The room every connection joins.
pub const LOBBY: &str = "lobby";
/// Fewest players a game starts with.
pub const MIN_PLAYERS: usize = 2;

/// The lobby's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Games at once; creating one more is refused with `too_many_games`.
    pub max_games: usize,
    /// The largest `max_players` a game may ask for.
    pub max_players: usize,
    /// A game's `max_players` when `create` gives none.
    pub default_players: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_games: 100,
            max_players: 8,
            default_players: 4,
        }
    }
}

/// The lobby route's handler. Clones share the games.
#[derive(Debug, Clone, Default)]
pub struct Lobby {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    limits: Limits,
    games: Mutex<Games>,
}

#[derive(Debug, Default)]
struct Games {
    next_id: u64,
    by_id: BTreeMap<u64, Game>,
}

#[derive(Debug)]
struct Game {
    id: u64,
    /// Players in the order they joined; the first is the host.
    players: Vec<Seat>,
    max_players: usize,
    started: bool,
}

#[derive(Debug)]
struct Seat {
    /// The connection id: names need not be unique.
    conn: String,
    name: String,
}

impl Game {
    fn info(&self) -> GameInfo {
        GameInfo {
            id: self.id,
            host: self
                .players
                .first()
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            players: self.players.iter().map(|p| p.name.clone()).collect(),
            max_players: self.max_players,
            started: self.started,
        }
    }

    fn is_open(&self) -> bool {
        !self.started && self.players.len() < self.max_players
    }
}

/// A game as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameInfo {
    /// The game's id; its room is `game:<id>`.
    pub id: u64,
    /// The host's name: the player who may start it.
    pub host: String,
    /// The players' names, the host first.
    pub players: Vec<String>,
    /// How many players it takes at most.
    pub max_players: usize,
    /// Whether the host started it.
    pub started: bool,
}

/// Per-connection state.
#[derive(Debug)]
pub struct Player {
    /// The name given with `?name=`.
    pub name: String,
    /// The game this player is in.
    pub game: Option<u64>,
}

/// What a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// The open games.
    List,
    /// Create a game and be its host.
    Create {
        /// At most this many players ([`MIN_PLAYERS`] to [`Limits::max_players`]).
        #[serde(default)]
        max_players: Option<usize>,
    },
    /// Join the game `game`.
    Join {
        /// The game's id.
        game: u64,
    },
    /// Start the caller's game (host only).
    Start,
    /// Leave the caller's game.
    Leave,
}

/// What the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// Sent once on connect, with the open games.
    Welcome {
        /// The caller's name.
        name: &'a str,
        /// The open games.
        games: Vec<GameInfo>,
    },
    /// The open games, answering `list`.
    Games {
        /// The open games, oldest first.
        games: Vec<GameInfo>,
    },
    /// The caller created `game`.
    Created {
        /// The new game.
        game: GameInfo,
    },
    /// The caller left game `id`.
    Left {
        /// The game.
        id: u64,
    },
    /// Lobby: a game can be joined (new, or no longer full).
    GameOpened {
        /// The game.
        game: GameInfo,
    },
    /// Lobby: a game is full.
    GameFull {
        /// The game.
        id: u64,
    },
    /// Lobby: a game started.
    GameStarted {
        /// The game.
        id: u64,
    },
    /// Lobby: a game's last player left; it is gone.
    GameClosed {
        /// The game.
        id: u64,
    },
    /// Game room: `name` joined.
    PlayerJoined {
        /// The game as it is now.
        game: GameInfo,
        /// Who joined.
        name: &'a str,
    },
    /// Game room: `name` left.
    PlayerLeft {
        /// The game as it is now (its host may have changed).
        game: GameInfo,
        /// Who left.
        name: &'a str,
    },
    /// Game room: the host started the game.
    Started {
        /// The game.
        game: GameInfo,
    },
    /// A request was refused; the connection stays open.
    Error {
        /// What kind of mistake.
        code: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl ServerMessage<'_> {
    fn payload(&self) -> Incoming {
        let json = serde_json::to_string(self).expect("server messages serialize");
        Incoming::Text(json.into())
    }
}

/// A refused request: the `error` message's code and text.
type Refused = (&'static str, String);

/// What a player's leaving did to its game.
#[derive(Debug)]
struct Departure {
    /// The game as it is now, or `None` when it was removed (no players left).
    game: Option<GameInfo>,
    /// The game is open again (it was full, not started).
    reopened: bool,
    id: u64,
}

fn game_room(id: u64) -> String {
    format!("game:{id}")
}

impl Lobby {
    /// A lobby with `limits`.
    pub fn new(limits: Limits) -> Lobby {
        Lobby {
            shared: Arc::new(Shared {
                limits,
                games: Mutex::default(),
            }),
        }
    }

    /// How many games exist (open, full or started).
    pub fn game_count(&self) -> usize {
        self.games().by_id.len()
    }

    /// The open games, oldest first.
    pub fn open_games(&self) -> Vec<GameInfo> {
        let games = self.games();
        games
            .by_id
            .values()
            .filter(|g| g.is_open())
            .map(Game::info)
            .collect()
    }

    /// The games, locked. Every caller keeps the guard for a few map operations in a
    /// synchronous function: none holds it across an `.await` (clippy's
    /// `await_holding_lock` is denied in this workspace). A panic while it was held left
    /// the map consistent enough to go on, so poisoning is ignored.
    fn games(&self) -> MutexGuard<'_, Games> {
        self.shared.games.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn create(&self, seat: Seat, max_players: Option<usize>) -> Result<GameInfo, Refused> {
        let limits = self.shared.limits;
        let max_players = max_players.unwrap_or(limits.default_players);
        if !(MIN_PLAYERS..=limits.max_players).contains(&max_players) {
            return Err((
                "bad_request",
                format!(
                    "field 'max_players': {MIN_PLAYERS} to {}, not {max_players}",
                    limits.max_players
                ),
            ));
        }
        let mut games = self.games();
        if games.by_id.len() >= limits.max_games {
            return Err((
                "too_many_games",
                format!("{} games already; join one", limits.max_games),
            ));
        }
        games.next_id += 1;
        let game = Game {
            id: games.next_id,
            players: vec![seat],
            max_players,
            started: false,
        };
        let info = game.info();
        games.by_id.insert(game.id, game);
        Ok(info)
    }

    /// Seats a player; the game as it is now and whether it just filled.
    fn join(&self, id: u64, seat: Seat) -> Result<(GameInfo, bool), Refused> {
        let mut games = self.games();
        let game = games
            .by_id
            .get_mut(&id)
            .ok_or_else(|| ("no_such_game", format!("no game {id}")))?;
        if game.started {
            return Err(("started", format!("game {id} has started")));
        }
        if game.players.len() >= game.max_players {
            return Err((
                "full",
                format!("game {id} has its {} players", game.max_players),
            ));
        }
        game.players.push(seat);
        Ok((game.info(), game.players.len() == game.max_players))
    }

    fn start(&self, id: u64, conn: &str) -> Result<GameInfo, Refused> {
        let mut games = self.games();
        let game = games
            .by_id
            .get_mut(&id)
            .ok_or_else(|| ("no_such_game", format!("no game {id}")))?;
        if game.players.first().is_none_or(|host| host.conn != conn) {
            return Err(("not_host", "only the host starts the game".into()));
        }
        if game.started {
            return Err(("started", format!("game {id} has started")));
        }
        if game.players.len() < MIN_PLAYERS {
            return Err((
                "not_enough_players",
                format!("a game starts with at least {MIN_PLAYERS} players"),
            ));
        }
        game.started = true;
        Ok(game.info())
    }

    /// Unseats a player, removing the game when it empties.
    fn depart(&self, id: u64, conn: &str) -> Option<Departure> {
        let mut games = self.games();
        let game = games.by_id.get_mut(&id)?;
        let was_open = game.is_open();
        game.players.retain(|p| p.conn != conn);
        if game.players.is_empty() {
            games.by_id.remove(&id);
            return Some(Departure {
                game: None,
                reopened: false,
                id,
            });
        }
        Some(Departure {
            reopened: !was_open && game.is_open(),
            game: Some(game.info()),
            id,
        })
    }
}

fn error(conn: &mut Connection<Player>, (code, message): Refused) {
    let _ = conn.send_json(&ServerMessage::Error { code, message });
}

fn seat(conn: &Connection<Player>) -> Seat {
    Seat {
        conn: conn.id().to_string(),
        name: conn.state.name.clone(),
    }
}

impl Handler for Lobby {
    type State = Player;

    async fn authenticate(
        &self,
        request: &UpgradeContext<'_>,
    ) -> Result<Accepted<Player>, Refusal> {
        let name = name_param(request, MAX_NAME)?;
        Ok(Accepted {
            user: User {
                id: name.into(),
                ..User::default()
            },
            state: Player {
                name: name.into(),
                game: None,
            },
        })
    }

    async fn on_connect(&self, conn: &mut Connection<Player>) {
        conn.join(LOBBY).await;
        let games = self.open_games();
        let name = conn.state.name.clone();
        let welcome = ServerMessage::Welcome { name: &name, games };
        let _ = conn.send_json(&welcome);
    }

    async fn on_message(&self, conn: &mut Connection<Player>, message: Incoming) {
        let Some(request) = conn.parse_json::<ClientMessage>(&message) else {
            return;
        };
        match request {
            ClientMessage::List => {
                let games = self.open_games();
                let _ = conn.send_json(&ServerMessage::Games { games });
            }
            ClientMessage::Create { max_players } => self.on_create(conn, max_players).await,
            ClientMessage::Join { game } => self.on_join(conn, game).await,
            ClientMessage::Start => self.on_start(conn).await,
            ClientMessage::Leave => match conn.state.game {
                Some(id) => self.on_leave(conn, id).await,
                None => error(conn, ("not_in_game", "you are in no game".into())),
            },
        }
    }

    async fn on_close(&self, conn: &mut Connection<Player>, _close: Option<&CloseFrame>) {
        if let Some(id) = conn.state.game {
            self.on_leave(conn, id).await;
        }
    }
}

impl Lobby {
    async fn on_create(&self, conn: &mut Connection<Player>, max_players: Option<usize>) {
        if let Some(id) = conn.state.game {
            return error(
                conn,
                (
                    "already_in_game",
                    format!("you are in game {id}; leave it first"),
                ),
            );
        }
        let game = match self.create(seat(conn), max_players) {
            Ok(game) => game,
            Err(refused) => return error(conn, refused),
        };
        conn.state.game = Some(game.id);
        conn.join(&game_room(game.id)).await;
        let _ = conn.send_json(&ServerMessage::Created { game: game.clone() });
        let opened = ServerMessage::GameOpened { game };
        conn.broadcast(&[LOBBY], opened.payload(), Broadcast::everyone())
            .await;
    }

    async fn on_join(&self, conn: &mut Connection<Player>, id: u64) {
        if let Some(current) = conn.state.game {
            return error(
                conn,
                (
                    "already_in_game",
                    format!("you are in game {current}; leave it first"),
                ),
            );
        }
        let (game, filled) = match self.join(id, seat(conn)) {
            Ok(joined) => joined,
            Err(refused) => return error(conn, refused),
        };
        conn.state.game = Some(id);
        let room = game_room(id);
        conn.join(&room).await;
        let joined = ServerMessage::PlayerJoined {
            game,
            name: &conn.state.name,
        };
        conn.broadcast(&[&room], joined.payload(), Broadcast::everyone())
            .await;
        if filled {
            let full = ServerMessage::GameFull { id };
            conn.broadcast(&[LOBBY], full.payload(), Broadcast::everyone())
                .await;
        }
    }

    async fn on_start(&self, conn: &mut Connection<Player>) {
        let Some(id) = conn.state.game else {
            return error(conn, ("not_in_game", "create a game first".into()));
        };
        let game = match self.start(id, conn.id()) {
            Ok(game) => game,
            Err(refused) => return error(conn, refused),
        };
        let started = ServerMessage::Started { game };
        conn.broadcast(&[&game_room(id)], started.payload(), Broadcast::everyone())
            .await;
        let started = ServerMessage::GameStarted { id };
        conn.broadcast(&[LOBBY], started.payload(), Broadcast::everyone())
            .await;
    }

    async fn on_leave(&self, conn: &mut Connection<Player>, id: u64) {
        conn.state.game = None;
        let room = game_room(id);
        conn.leave(&room).await;
        let _ = conn.send_json(&ServerMessage::Left { id });
        let Some(departure) = self.depart(id, conn.id()) else {
            return;
        };
        match departure.game {
            None => {
                let closed = ServerMessage::GameClosed { id: departure.id };
                conn.broadcast(&[LOBBY], closed.payload(), Broadcast::everyone())
                    .await;
            }
            Some(game) => {
                let reopened = departure.reopened.then(|| game.clone());
                let left = ServerMessage::PlayerLeft {
                    game,
                    name: &conn.state.name,
                };
                conn.broadcast(&[&room], left.payload(), Broadcast::everyone())
                    .await;
                if let Some(game) = reopened {
                    let opened = ServerMessage::GameOpened { game };
                    conn.broadcast(&[LOBBY], opened.payload(), Broadcast::everyone())
                        .await;
                }
            }
        }
    }
}
