//! The chat example over loopback: real clients, real sockets, the handler in-process.

mod common;

use common::{Serving, connect, expect, expect_error, recv, refused, send};
use serde_json::json;
use switchboard_examples::chat::{Chat, MAX_NAME, MAX_ROOMS, MAX_TEXT};
use switchboard_server::{Route, RouteOptions};

async fn serve() -> Serving {
    Serving::start(Route::new("/chat", Chat, RouteOptions::default())).await
}

#[tokio::test]
async fn names_are_required_short_and_plain() {
    let serving = serve().await;
    let missing = refused(&serving.url("/chat")).await;
    assert!(missing.contains("401"), "{missing}");
    let empty = refused(&serving.url("/chat?name=")).await;
    assert!(empty.contains("401"), "{empty}");
    let long = "a".repeat(MAX_NAME + 1);
    let too_long = refused(&serving.url(&format!("/chat?name={long}"))).await;
    assert!(too_long.contains("400"), "{too_long}");
    let escaped = refused(&serving.url("/chat?name=a%20b")).await;
    assert!(escaped.contains("400"), "{escaped}");

    let longest = "a".repeat(MAX_NAME);
    let mut ws = connect(&serving.url(&format!("/chat?x=1&name={longest}"))).await;
    assert_eq!(expect(&mut ws, "welcome").await["name"], longest.as_str());
    drop(ws);
    serving.stop().await;
}

#[tokio::test]
async fn rooms_carry_joins_sayings_and_leaves_to_their_members_only() {
    let serving = serve().await;
    let mut ada = connect(&serving.url("/chat?name=ada")).await;
    let mut bob = connect(&serving.url("/chat?name=bob")).await;
    let mut cy = connect(&serving.url("/chat?name=cy")).await;
    for ws in [&mut ada, &mut bob, &mut cy] {
        expect(ws, "welcome").await;
    }

    // A join is announced to the room, the joiner included.
    send(&mut ada, json!({"type": "join", "room": "general"})).await;
    assert_eq!(
        recv(&mut ada).await,
        json!({"type": "joined", "room": "general", "name": "ada"})
    );
    send(&mut bob, json!({"type": "join", "room": "general"})).await;
    for ws in [&mut ada, &mut bob] {
        assert_eq!(
            recv(ws).await,
            json!({"type": "joined", "room": "general", "name": "bob"})
        );
    }

    // Saying in a room one has not joined is an error, and says nothing.
    send(
        &mut cy,
        json!({"type": "say", "room": "general", "text": "psst"}),
    )
    .await;
    let message = expect_error(&mut cy, "not_in_room").await;
    assert!(message.contains("general"), "{message}");

    // A saying reaches every member, the sayer included, and no one else.
    send(
        &mut bob,
        json!({"type": "say", "room": "general", "text": "hi"}),
    )
    .await;
    for ws in [&mut ada, &mut bob] {
        assert_eq!(
            recv(ws).await,
            json!({"type": "said", "room": "general", "from": "bob", "text": "hi"})
        );
    }
    // cy's next message answers this request: nothing from general came before it.
    send(&mut cy, json!({"type": "rooms"})).await;
    assert_eq!(recv(&mut cy).await, json!({"type": "rooms", "rooms": []}));

    send(&mut ada, json!({"type": "join", "room": "b.side"})).await;
    expect(&mut ada, "joined").await;
    send(&mut ada, json!({"type": "rooms"})).await;
    assert_eq!(
        recv(&mut ada).await,
        json!({"type": "rooms", "rooms": ["b.side", "general"]})
    );

    // Leaving: the leaver is told, then the room; afterwards the leaver may not say there.
    send(&mut bob, json!({"type": "leave", "room": "general"})).await;
    let left = json!({"type": "left", "room": "general", "name": "bob"});
    assert_eq!(recv(&mut bob).await, left);
    assert_eq!(recv(&mut ada).await, left);
    send(
        &mut bob,
        json!({"type": "say", "room": "general", "text": "hi?"}),
    )
    .await;
    expect_error(&mut bob, "not_in_room").await;
    send(&mut bob, json!({"type": "leave", "room": "general"})).await;
    expect_error(&mut bob, "not_in_room").await;

    // A connection that goes is left in each of its rooms.
    send(&mut cy, json!({"type": "join", "room": "general"})).await;
    expect(&mut cy, "joined").await;
    expect(&mut ada, "joined").await;
    drop(ada);
    assert_eq!(
        recv(&mut cy).await,
        json!({"type": "left", "room": "general", "name": "ada"})
    );

    drop((bob, cy));
    serving.stop().await;
}

#[tokio::test]
async fn mistakes_are_answered_and_the_connection_stays_open() {
    let serving = serve().await;
    let mut ada = connect(&serving.url("/chat?name=ada")).await;
    expect(&mut ada, "welcome").await;
    send(&mut ada, json!({"type": "join", "room": "general"})).await;
    expect(&mut ada, "joined").await;

    // Text is limited in characters, not bytes: the longest text of two-byte characters passes.
    let longest = "é".repeat(MAX_TEXT);
    send(
        &mut ada,
        json!({"type": "say", "room": "general", "text": longest}),
    )
    .await;
    assert_eq!(expect(&mut ada, "said").await["text"], longest.as_str());
    let too_long = "a".repeat(MAX_TEXT + 1);
    send(
        &mut ada,
        json!({"type": "say", "room": "general", "text": too_long}),
    )
    .await;
    let message = expect_error(&mut ada, "too_long").await;
    assert!(message.contains("'text'"), "{message}");

    // Each bad request names what is wrong.
    for (bad, names) in [
        ("{not json".to_string(), "key must be a string"),
        (
            json!({"type": "say", "room": "general"}).to_string(),
            "text",
        ),
        (
            json!({"type": "shout", "room": "general"}).to_string(),
            "shout",
        ),
        (
            json!({"type": "join", "room": "no spaces"}).to_string(),
            "'room'",
        ),
        (json!({"type": "join", "room": ""}).to_string(), "'room'"),
    ] {
        ada.send_text(&bad).await.unwrap();
        let message = expect_error(&mut ada, "bad_request").await;
        assert!(message.contains(names), "{bad}: {message}");
    }

    // Rooms at once are bounded: ada is in general, and may join MAX_ROOMS - 1 more.
    for i in 1..MAX_ROOMS {
        send(&mut ada, json!({"type": "join", "room": format!("r{i}")})).await;
        expect(&mut ada, "joined").await;
    }
    send(&mut ada, json!({"type": "join", "room": "one.more"})).await;
    expect_error(&mut ada, "too_many_rooms").await;
    send(&mut ada, json!({"type": "leave", "room": "r1"})).await;
    expect(&mut ada, "left").await;
    send(&mut ada, json!({"type": "join", "room": "one.more"})).await;
    expect(&mut ada, "joined").await;

    // Still open, still in the room.
    send(
        &mut ada,
        json!({"type": "say", "room": "general", "text": "still here"}),
    )
    .await;
    assert_eq!(expect(&mut ada, "said").await["text"], "still here");
    drop(ada);
    serving.stop().await;
}

/// A route that speaks no subprotocol selects none and refuses none
/// (`RouteOptions::protocols`), so `switchboard connect`, which offers `switchboard.v1`,
/// reaches the examples too.
#[tokio::test]
async fn a_client_offering_a_subprotocol_is_served_without_one() {
    let serving = serve().await;
    let options = switchboard_client::WsOptions {
        protocols: vec!["switchboard.v1".to_owned()],
        ..switchboard_client::WsOptions::default()
    };
    let mut ws = switchboard_client::WsStream::connect(&serving.url("/chat?name=ada"), &options)
        .await
        .expect("served, with no subprotocol selected");
    expect(&mut ws, "welcome").await;
    drop(ws);
    serving.stop().await;
}
