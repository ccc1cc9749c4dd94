//! The lobby example over loopback: real clients, real sockets, the handler in-process.

mod common;

use common::{Serving, connect, expect, expect_error, recv, refused, send};
use serde_json::{Value, json};
use switchboard_client::WsStream;
use switchboard_examples::lobby::{Limits, Lobby};
use switchboard_server::{Route, RouteOptions};

/// Two games at most, of up to three players, two by default: small enough to fill.
async fn serve() -> (Serving, Lobby) {
    let lobby = Lobby::new(Limits {
        max_games: 2,
        max_players: 3,
        default_players: 2,
    });
    let route = Route::new("/lobby", lobby.clone(), RouteOptions::default());
    (Serving::start(route).await, lobby)
}

/// A player in the lobby, past its welcome; the open games it was told of.
async fn player(serving: &Serving, name: &str) -> (WsStream, Value) {
    let mut ws = connect(&serving.url(&format!("/lobby?name={name}"))).await;
    let welcome = expect(&mut ws, "welcome").await;
    assert_eq!(welcome["name"], name);
    (ws, welcome["games"].clone())
}

#[tokio::test]
async fn a_game_is_created_filled_and_started_and_the_lobby_is_told() {
    let (serving, _lobby) = serve().await;
    assert!(refused(&serving.url("/lobby")).await.contains("401"));
    let (mut ada, games) = player(&serving, "ada").await;
    assert_eq!(games, json!([]));
    let (mut bob, _) = player(&serving, "bob").await;
    let (mut cy, _) = player(&serving, "cy").await;

    // Created: the host gets its game, then everyone in the lobby hears it opened.
    send(&mut ada, json!({"type": "create"})).await;
    let game =
        json!({"id": 1, "host": "ada", "players": ["ada"], "max_players": 2, "started": false});
    assert_eq!(
        recv(&mut ada).await,
        json!({"type": "created", "game": game})
    );
    for ws in [&mut ada, &mut bob, &mut cy] {
        assert_eq!(recv(ws).await, json!({"type": "game_opened", "game": game}));
    }
    send(&mut bob, json!({"type": "list"})).await;
    assert_eq!(
        recv(&mut bob).await,
        json!({"type": "games", "games": [game]})
    );

    // Only a host starts, and not alone.
    send(&mut bob, json!({"type": "start"})).await;
    expect_error(&mut bob, "not_in_game").await;
    send(&mut ada, json!({"type": "start"})).await;
    expect_error(&mut ada, "not_enough_players").await;
    send(&mut bob, json!({"type": "join", "game": 7})).await;
    expect_error(&mut bob, "no_such_game").await;

    // Joined: the game's room hears it, then the lobby hears the game is full.
    send(&mut bob, json!({"type": "join", "game": 1})).await;
    let players = json!(["ada", "bob"]);
    for ws in [&mut ada, &mut bob] {
        let joined = expect(ws, "player_joined").await;
        assert_eq!(
            (&joined["name"], &joined["game"]["players"]),
            (&json!("bob"), &players)
        );
        assert_eq!(recv(ws).await, json!({"type": "game_full", "id": 1}));
    }
    assert_eq!(recv(&mut cy).await, json!({"type": "game_full", "id": 1}));
    send(&mut cy, json!({"type": "join", "game": 1})).await;
    let message = expect_error(&mut cy, "full").await;
    assert!(message.contains("game 1"), "{message}");
    send(&mut cy, json!({"type": "list"})).await;
    assert_eq!(recv(&mut cy).await, json!({"type": "games", "games": []}));
    send(&mut bob, json!({"type": "create"})).await;
    expect_error(&mut bob, "already_in_game").await;

    // Started by the host: the game's room, then the lobby.
    send(&mut bob, json!({"type": "start"})).await;
    expect_error(&mut bob, "not_host").await;
    send(&mut ada, json!({"type": "start"})).await;
    for ws in [&mut ada, &mut bob] {
        let started = expect(ws, "started").await;
        assert_eq!(started["game"]["started"], true);
        assert_eq!(started["game"]["players"], players);
        assert_eq!(recv(ws).await, json!({"type": "game_started", "id": 1}));
    }
    assert_eq!(
        recv(&mut cy).await,
        json!({"type": "game_started", "id": 1})
    );
    send(&mut ada, json!({"type": "start"})).await;
    expect_error(&mut ada, "started").await;

    drop((ada, bob, cy));
    serving.stop().await;
}

#[tokio::test]
async fn games_are_capped_and_swept_when_their_last_player_goes() {
    let (serving, lobby) = serve().await;
    let (mut ada, _) = player(&serving, "ada").await;
    let (mut bob, _) = player(&serving, "bob").await;
    let (mut cy, _) = player(&serving, "cy").await;

    send(&mut ada, json!({"type": "create", "max_players": 4})).await;
    let message = expect_error(&mut ada, "bad_request").await;
    assert!(message.contains("max_players"), "{message}");

    // Two games fill the cap: a third is refused.
    send(&mut ada, json!({"type": "create", "max_players": 3})).await;
    assert_eq!(expect(&mut ada, "created").await["game"]["id"], 1);
    for ws in [&mut ada, &mut bob, &mut cy] {
        assert_eq!(expect(ws, "game_opened").await["game"]["id"], 1);
    }
    send(&mut bob, json!({"type": "create"})).await;
    assert_eq!(expect(&mut bob, "created").await["game"]["id"], 2);
    for ws in [&mut ada, &mut bob, &mut cy] {
        assert_eq!(expect(ws, "game_opened").await["game"]["id"], 2);
    }
    send(&mut cy, json!({"type": "create"})).await;
    expect_error(&mut cy, "too_many_games").await;
    assert_eq!(lobby.game_count(), 2);

    // bob leaves his game, its only player: it is swept and the lobby told.
    send(&mut bob, json!({"type": "leave"})).await;
    assert_eq!(recv(&mut bob).await, json!({"type": "left", "id": 2}));
    for ws in [&mut ada, &mut bob, &mut cy] {
        assert_eq!(recv(ws).await, json!({"type": "game_closed", "id": 2}));
    }
    assert_eq!(lobby.game_count(), 1);
    send(&mut bob, json!({"type": "leave"})).await;
    expect_error(&mut bob, "not_in_game").await;

    // The host leaves a game that still has players: it is handed on.
    send(&mut cy, json!({"type": "join", "game": 1})).await;
    for ws in [&mut ada, &mut cy] {
        expect(ws, "player_joined").await;
    }
    send(&mut ada, json!({"type": "leave"})).await;
    assert_eq!(recv(&mut ada).await, json!({"type": "left", "id": 1}));
    let left = expect(&mut cy, "player_left").await;
    assert_eq!(left["name"], "ada");
    assert_eq!(left["game"]["host"], "cy");
    assert_eq!(left["game"]["players"], json!(["cy"]));

    // Its last player disconnects: swept too, and the cap has room again.
    drop(cy);
    for ws in [&mut ada, &mut bob] {
        assert_eq!(recv(ws).await, json!({"type": "game_closed", "id": 1}));
    }
    assert_eq!(lobby.game_count(), 0);
    send(&mut bob, json!({"type": "create"})).await;
    assert_eq!(expect(&mut bob, "created").await["game"]["id"], 3);

    drop((ada, bob));
    serving.stop().await;
}

#[tokio::test]
async fn a_full_game_that_loses_a_player_opens_again() {
    let (serving, _lobby) = serve().await;
    let (mut ada, _) = player(&serving, "ada").await;
    let (mut bob, _) = player(&serving, "bob").await;
    send(&mut ada, json!({"type": "create"})).await;
    expect(&mut ada, "created").await;
    expect(&mut ada, "game_opened").await;
    expect(&mut bob, "game_opened").await;
    send(&mut bob, json!({"type": "join", "game": 1})).await;
    for ws in [&mut ada, &mut bob] {
        expect(ws, "player_joined").await;
        expect(ws, "game_full").await;
    }

    // A newcomer is welcomed with the open games: none.
    let (mut cy, games) = player(&serving, "cy").await;
    assert_eq!(games, json!([]));

    send(&mut bob, json!({"type": "leave"})).await;
    assert_eq!(recv(&mut bob).await, json!({"type": "left", "id": 1}));
    assert_eq!(expect(&mut ada, "player_left").await["name"], "bob");
    for ws in [&mut ada, &mut bob, &mut cy] {
        let opened = expect(ws, "game_opened").await;
        assert_eq!(opened["game"]["players"], json!(["ada"]));
    }
    send(&mut cy, json!({"type": "join", "game": 1})).await;
    assert_eq!(expect(&mut cy, "player_joined").await["name"], "cy");

    drop((ada, bob, cy));
    serving.stop().await;
}

/// A field of the wrong type inside a `#[serde(tag = "type")]` message is named in the error,
/// although serde buffers an internally tagged enum's fields before it picks the variant.
#[tokio::test]
async fn a_mistyped_field_is_named_in_the_error() {
    let (serving, _lobby) = serve().await;
    let (mut ada, _) = player(&serving, "ada").await;
    send(&mut ada, json!({"type": "create", "max_players": "many"})).await;
    let message = expect_error(&mut ada, "bad_request").await;
    assert!(message.contains("max_players"), "{message}");
    drop(ada);
    serving.stop().await;
}
