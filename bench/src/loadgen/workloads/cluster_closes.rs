//! Closes under the vote storm (issue 11), part of cluster-votes: events created to close one
//! after another during the step at the target rate, watched by sockets on every node. Each
//! socket must see each EVENT_CLOSED exactly once; the close delay is its receipt minus the
//! event's closesAt (wall clock: one machine, one clock); the nodes' close counters must sum to
//! the number of events (one winner per close, whichever node armed it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use livevote_protocol::Role;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster::Cluster;
use crate::context::{realtime_path, Progress};
use crate::histogram::{millis, Histogram};
use crate::report::Report;
use crate::socket::Received;

/// Events created at once while preparing (each a POST to a node, spread over the nodes).
const CREATORS: usize = 8;
/// The counter each node increments once per event it closed itself.
const CLOSE_COUNTER: &str = "livevote_events_closed_total";
/// Events per streamer: the server keeps each streamer under `--max-open-events` (100), and a
/// cluster serves many streamers anyway. Each watching socket subscribes to all of them.
const EVENTS_PER_STREAMER: usize = 50;
/// How long after the last closesAt the sockets keep listening for late or repeated closes.
const LISTEN_AFTER: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Events closing during the step at the target rate (0: none).
    #[arg(long, default_value_t = 1_000)]
    pub closing_events: usize,
    /// Sockets on each node watching the closing events' streamer.
    #[arg(long, default_value_t = 10)]
    pub closing_sockets_per_node: usize,
}

/// What one watching socket saw.
struct SocketLog {
    node: usize,
    /// (event id, when its EVENT_CLOSED arrived), in arrival order, repeats included.
    closes: Vec<(String, DateTime<Utc>)>,
    /// Set when the server closed the socket before the watch ended.
    ended_early: Option<Option<u16>>,
}

/// The closing events and the sockets watching them, between [`prepare`] and [`finish`].
pub struct Watch {
    closes_at: HashMap<String, DateTime<Utc>>,
    last_close: DateTime<Utc>,
    sockets: Vec<JoinHandle<SocketLog>>,
    stop: CancellationToken,
    counter_before: f64,
    failed_sockets: usize,
}

/// Opens the watching sockets, then creates the events so that they close between `first_close`
/// from now and `first_close + spread`, spread evenly. Call right before the storm's step.
pub async fn prepare(
    cluster: &Cluster,
    options: &Options,
    worker_token: &str,
    first_close: Duration,
    spread: Duration,
) -> anyhow::Result<Watch> {
    let benches = &cluster.benches;
    let streamers: Vec<Uuid> = (0..options.closing_events.div_ceil(EVENTS_PER_STREAMER).max(1))
        .map(|_| Uuid::new_v4())
        .collect();
    let channels: Vec<String> = streamers
        .iter()
        .skip(1)
        .map(|streamer| format!("streamer:{streamer}"))
        .collect();
    let stop = CancellationToken::new();
    let progress = Progress::default();
    let mut connection = benches[0].http(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sockets = Vec::new();
    let mut failed_sockets = 0;
    for (node, bench) in benches.iter().enumerate() {
        for index in 0..options.closing_sockets_per_node {
            let token = bench
                .mint(&mut connection, Uuid::new_v4(), Role::Viewer, None)
                .await?;
            let path = realtime_path(streamers[0], &token);
            let Some(mut socket) = bench
                .open_subscribed(index, &path, deadline, &stop, &progress, |_, _| {})
                .await
            else {
                failed_sockets += 1;
                continue;
            };
            if !channels.is_empty() && !socket.subscribe(&channels, deadline, &stop).await {
                failed_sockets += 1;
                continue;
            }
            sockets.push(tokio::spawn(watch(node, socket, stop.clone())));
        }
    }
    let counter_before = cluster.metric_sum(CLOSE_COUNTER).await.unwrap_or(0.0);

    let start = Utc::now() + chrono::Duration::from_std(first_close)?;
    let step = spread.as_secs_f64() / options.closing_events.max(1) as f64;
    let planned: Vec<DateTime<Utc>> = (0..options.closing_events)
        .map(|index| start + chrono::Duration::microseconds((step * index as f64 * 1e6) as i64))
        .collect();
    let planned = Arc::new(planned);
    let mut creators = Vec::new();
    for creator in 0..CREATORS {
        let (benches, planned, streamers) = (benches.clone(), planned.clone(), streamers.clone());
        let worker_token = worker_token.to_owned();
        creators.push(tokio::spawn(async move {
            let mut created = Vec::new();
            let mut connections: Vec<_> = benches
                .iter()
                .map(|bench| bench.http(100 + creator))
                .collect();
            for index in (creator..planned.len()).step_by(CREATORS) {
                let node = index % benches.len();
                let title = format!("Closing event {index}");
                let id = benches[node]
                    .create_event(
                        &mut connections[node],
                        &worker_token,
                        streamers[index % streamers.len()],
                        planned[index],
                        &title,
                    )
                    .await?;
                created.push((id.to_string(), planned[index]));
            }
            anyhow::Ok(created)
        }));
    }
    let mut closes_at = HashMap::new();
    for creator in creators {
        closes_at.extend(creator.await??);
    }
    if Utc::now() > start {
        eprintln!("cluster closes: creating the events took longer than the lead; the first closed before the storm began");
    }
    let last_close = planned.last().copied().unwrap_or(start);
    Ok(Watch {
        closes_at,
        last_close,
        sockets,
        stop,
        counter_before,
        failed_sockets,
    })
}

async fn watch(
    node: usize,
    mut socket: crate::socket::LiveSocket,
    stop: CancellationToken,
) -> SocketLog {
    let mut log = SocketLog {
        node,
        closes: Vec::new(),
        ended_early: None,
    };
    let until = Instant::now() + Duration::from_secs(3_600);
    loop {
        let received = socket
            .receive(until, &stop, |_, message| {
                if message.kind == "EVENT_CLOSED" {
                    if let Some(event) = message.event_id() {
                        log.closes.push((event.to_owned(), Utc::now()));
                    }
                }
            })
            .await;
        match received {
            Received::Frame => {}
            Received::Stopped => return log,
            Received::Closed(code) => {
                log.ended_early = Some(code);
                return log;
            }
        }
    }
}

/// Waits for the last close (plus [`LISTEN_AFTER`]), stops the sockets and reports what
/// they saw. Returns whether every socket saw every close exactly once and the counters agree.
pub async fn finish(cluster: &Cluster, watch: Watch, report: &mut Report) -> anyhow::Result<bool> {
    let wait = (watch.last_close - Utc::now()).to_std().unwrap_or_default() + LISTEN_AFTER;
    tokio::time::sleep(wait).await;
    watch.stop.cancel();
    let mut logs = Vec::new();
    for socket in watch.sockets {
        logs.push(socket.await?);
    }
    let counter_after = cluster.metric_sum(CLOSE_COUNTER).await.unwrap_or(0.0);
    let events = watch.closes_at.len();

    let delays = Histogram::default();
    let mut early = 0u64;
    let (mut duplicates, mut misses, mut strangers) = (0u64, 0u64, 0u64);
    let mut ended_early = Vec::new();
    for log in &logs {
        let mut seen: HashMap<&str, u32> = HashMap::new();
        for (event, at) in &log.closes {
            let Some(closes_at) = watch.closes_at.get(event) else {
                strangers += 1;
                continue;
            };
            let count = seen.entry(event.as_str()).or_default();
            *count += 1;
            if *count > 1 {
                duplicates += 1;
                continue;
            }
            match (*at - *closes_at).to_std() {
                Ok(delay) => delays.record(delay),
                Err(_) => early += 1,
            }
        }
        misses += (events - seen.len()) as u64;
        if let Some(code) = log.ended_early {
            ended_early.push(format!(
                "node {}: {}",
                log.node,
                code.map_or("no close code".into(), |code| code.to_string())
            ));
        }
    }
    let closed_by_counters = counter_after - watch.counter_before;
    report.row(
        "closes under the storm: events / watching sockets (all nodes) / sockets that failed to open",
        format!("{events} / {} / {}", logs.len(), watch.failed_sockets),
    );
    report.row(
        "closes: close delay, EVENT_CLOSED receipt − closesAt, p50 / p99 / max (ms, every socket)",
        delays.summary_ms(),
    );
    if let Some(p99) = delays.quantile(0.99) {
        report.key("closes.delay_p99_ms", format!("{:.1}", millis(p99)));
    }
    report.row(
        "closes: repeated EVENT_CLOSED / events a socket never saw closed / received before closesAt",
        format!("{duplicates} / {misses} / {early}"),
    );
    report.row(
        "closes: the nodes' close counters summed (livevote_events_closed_total, change during the run)",
        format!("{closed_by_counters:.0} of {events}"),
    );
    report.row(
        "closes: sockets the server closed during the watch",
        if ended_early.is_empty() {
            "none".to_owned()
        } else {
            ended_early.join(", ")
        },
    );
    if strangers > 0 {
        report.note(format!(
            "{strangers} EVENT_CLOSED for events this run did not create (another workload's)"
        ));
    }
    let exact = duplicates == 0
        && misses == 0
        && early == 0
        && ended_early.is_empty()
        && watch.failed_sockets == 0
        && (closed_by_counters - events as f64).abs() < 0.5;
    report.key("closes.duplicates", duplicates);
    report.key("closes.misses", misses);
    report.key("closes.exact", u8::from(exact));
    report.key("closes.events", events);
    Ok(exact)
}
