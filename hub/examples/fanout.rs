//! A quick measure of the hub alone (no sockets): how long one coalesced update takes to reach
//! every subscriber's outbox and be drained into frames. `cargo run --release -p livevote-hub
//! --example fanout -- [subscribers] [rounds]`.

use std::time::Instant;

use bytes::Bytes;
use livevote_hub::{
    EventRoute, EventUpdate, Hub, HubConfig, SharedMessage, WakeList, FLUSH_PHASES,
};
use livevote_protocol::{Channel, EventCreated, EventUpdated, ServerMessage, Totals};
use uuid::Uuid;

fn main() {
    let mut arguments = std::env::args()
        .skip(1)
        .map(|argument| argument.parse::<usize>().expect("a number"));
    let subscribers = arguments.next().unwrap_or(10_000);
    let rounds = arguments.next().unwrap_or(100);

    let hub = Hub::new(HubConfig::default());
    let route = EventRoute {
        event_id: Uuid::from_u128(1),
        streamer_id: Uuid::from_u128(2),
        game_id: None,
    };
    let connections: Vec<_> = (0..subscribers).map(|_| hub.connect()).collect();
    for connection in &connections {
        hub.subscribe(connection, Channel::streamer(route.streamer_id), |_| {});
    }
    let created = SharedMessage::encode(&ServerMessage::EventCreated(EventCreated {
        event: serde_json::from_value(serde_json::json!({
            "id": route.event_id, "streamerId": route.streamer_id, "gameId": null, "title": "t",
            "options": [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}],
            "closesAt": "2026-11-26T12:00:00.000Z", "costPerVote": 1
        }))
        .expect("a valid event"),
    }));
    hub.publish_event_created(route, &created);

    let mut frames: Vec<Bytes> = Vec::new();
    let mut publish_nanos = 0u128;
    let mut drain_nanos = 0u128;
    for seq in 1..=rounds as u64 {
        let totals = Totals::from([("a".to_owned(), seq), ("b".to_owned(), seq / 2)]);
        let message = SharedMessage::encode(&ServerMessage::EventUpdated(EventUpdated {
            event_id: route.event_id,
            totals,
            closes_at: None,
            seq,
        }));
        let update = EventUpdate {
            route,
            seq,
            message,
        };
        let started = Instant::now();
        // One update interval: every flush phase in turn.
        for phase in 0..FLUSH_PHASES {
            let mut wakes = WakeList::new();
            hub.deliver_event_update(&update, phase, &mut wakes);
            wakes.wake_all();
        }
        publish_nanos += started.elapsed().as_nanos();
        let started = Instant::now();
        for connection in &connections {
            connection.drain(&mut frames);
            frames.clear();
        }
        drain_nanos += started.elapsed().as_nanos();
    }
    let deliveries = (subscribers * rounds) as f64;
    println!("{subscribers} subscribers × {rounds} updates");
    println!(
        "deliver into slots: {:.0} ns per delivery",
        publish_nanos as f64 / deliveries
    );
    println!(
        "drain into frames:  {:.0} ns per delivery",
        drain_nanos as f64 / deliveries
    );
}
