//! W3 fan-out: one channel, many sockets, admin notices published over HTTP at rising rates.
//! Each notice carries its send time, so every delivery gives a latency; the server's CPU per
//! delivery is the number to compare with the lean reference.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use livevote_protocol::{NoticeRequest, Role};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::context::{fit_sockets, joined, open_gate, realtime_path, wait_until, Bench, Progress};
use crate::histogram::{millis, Histogram};
use crate::report::Report;
use crate::socket::Received;
use crate::workloads::usage_rows;
use crate::workloads::w1::viewer_tokens;

/// The notice code that marks benchmark notices (anything else is ignored).
const CODE: &str = "BENCH";

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Sockets subscribed to the one channel.
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Distinct viewer users whose tokens the sockets share.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Notices per second for each step, comma-separated (deliveries/s = rate × sockets).
    #[arg(long, value_delimiter = ',', default_value = "10,25,50,100,200")]
    rates: Vec<u32>,
    /// Length of each step.
    #[arg(long, default_value_t = 10)]
    step_seconds: u64,
    /// Keep-alive HTTP connections publishing notices.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Time allowed for opening every socket.
    #[arg(long, default_value_t = 300)]
    connect_seconds: u64,
}

/// What the sockets record per step.
#[derive(Default)]
struct StepCounters {
    delivered: AtomicU64,
    /// Text frames that carried at least one of this step's notices (batching shows as
    /// deliveries per frame above 1).
    frames: AtomicU64,
    /// Nanoseconds (since the bench epoch) of the last delivery of this step.
    last_delivery: AtomicU64,
    latency: Histogram,
}

pub async fn run(bench: &Arc<Bench>, options: &Options, label: &str) -> anyhow::Result<Report> {
    let mut report = Report::new(
        format!("W3 fan-out of notices to one channel — {label}"),
        format!("{label}.w3"),
    );
    let (sockets, fitted) = fit_sockets(bench, options.sockets);
    if let Some(note) = fitted {
        report.note(note);
    }
    let streamer = Uuid::new_v4();
    let channel = format!("streamer:{streamer}");
    let tokens = viewer_tokens(bench, options.users).await?;
    let admin = if bench.reference {
        "reference".to_owned()
    } else {
        bench
            .mint(&mut bench.http(0), Uuid::new_v4(), Role::Admin, None)
            .await?
    };
    let steps: Arc<Vec<StepCounters>> = Arc::new(
        options
            .rates
            .iter()
            .map(|_| StepCounters::default())
            .collect(),
    );

    let stop = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let gate = open_gate(bench);
    let started = Instant::now();
    let connect_deadline = started + Duration::from_secs(options.connect_seconds);
    let end = connect_deadline
        + Duration::from_secs(options.step_seconds * options.rates.len() as u64 * 2 + 120);
    let mut tasks = Vec::with_capacity(sockets);
    for index in 0..sockets {
        let path = realtime_path(streamer, &tokens[index % tokens.len()]);
        let (bench, stop, progress, gate, steps) = (
            bench.clone(),
            stop.clone(),
            progress.clone(),
            gate.clone(),
            steps.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let Some(mut socket) = bench
                .open_through_gate(gate, index, &path, connect_deadline, &stop, &progress)
                .await
            else {
                return 0u64;
            };
            let epoch = bench.epoch;
            let mut malformed = 0u64;
            loop {
                let mut frame_step = None;
                let outcome = socket
                    .receive(end, &stop, |at, message| {
                        if message.kind != "SYSTEM_NOTICE"
                            || message.payload.code.as_deref() != Some(CODE)
                        {
                            return;
                        }
                        let Some((step, sent)) =
                            message.payload.message.as_deref().and_then(parse_stamp)
                        else {
                            malformed += 1;
                            return;
                        };
                        let Some(counters) = steps.get(step) else {
                            return;
                        };
                        let received =
                            u64::try_from(at.duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
                        counters.delivered.fetch_add(1, Ordering::Relaxed);
                        frame_step = Some(step);
                        counters
                            .last_delivery
                            .fetch_max(received, Ordering::Relaxed);
                        counters
                            .latency
                            .record(Duration::from_nanos(received.saturating_sub(sent)));
                    })
                    .await;
                if let Some(counters) = frame_step.and_then(|step| steps.get(step)) {
                    counters.frames.fetch_add(1, Ordering::Relaxed);
                }
                match outcome {
                    Received::Frame => continue,
                    Received::Stopped => break,
                    Received::Closed(code) => {
                        progress.server_closed(code);
                        return malformed;
                    }
                }
            }
            socket.close().await;
            malformed
        }));
    }
    let ready = progress
        .wait_for_sockets(
            "W3 sockets subscribed",
            sockets,
            options.sockets,
            connect_deadline,
            &mut report,
        )
        .await;
    report.key("sockets", ready);
    report.metric(
        "time to open and subscribe all (s)",
        "connect_seconds",
        started.elapsed().as_secs_f64(),
        1,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut best_rate = 0.0f64;
    let mut best_cpu_per_delivery = f64::INFINITY;
    for (step, &rate) in options.rates.iter().enumerate() {
        let counters = &steps[step];
        let meter = bench.meter();
        let step_start = bench.now_nanos();
        let published = publish(
            bench,
            &admin,
            &channel,
            step,
            rate,
            options.step_seconds,
            options.publishers,
        )
        .await;
        // Drain: wait for the deliveries still in flight (bounded), so they count for this step.
        let expected = published.accepted * ready as u64;
        let drain_deadline = Instant::now() + Duration::from_secs(5);
        wait_until(
            &format!("W3 step {} ({rate}/s) deliveries", step + 1),
            usize::try_from(expected).unwrap_or(usize::MAX),
            drain_deadline,
            || usize::try_from(counters.delivered.load(Ordering::Relaxed)).unwrap_or(usize::MAX),
        )
        .await;
        let usage = meter.finish();
        let delivered = counters.delivered.load(Ordering::Relaxed);
        let span = Duration::from_nanos(
            counters
                .last_delivery
                .load(Ordering::Relaxed)
                .saturating_sub(step_start),
        );
        let delivery_rate = delivered as f64 / span.as_secs_f64().max(1e-9);
        let key = format!("step{}", step + 1);
        report.row(
            format!(
                "step {}: notices/s offered / accepted (HTTP 202) / failed",
                step + 1
            ),
            format!("{rate} / {} / {}", published.accepted, published.failed),
        );
        report.key(&format!("{key}.rate"), rate);
        report.metric(
            format!("step {}: deliveries/s", step + 1),
            &format!("{key}.deliveries_per_second"),
            delivery_rate,
            0,
        );
        report.row(
            format!("step {}: delivered / expected", step + 1),
            format!(
                "{delivered} / {expected} ({:.2} %)",
                delivered as f64 * 100.0 / expected.max(1) as f64
            ),
        );
        report.metric(
            format!("step {}: notices per frame (batching)", step + 1),
            &format!("{key}.messages_per_frame"),
            delivered as f64 / counters.frames.load(Ordering::Relaxed).max(1) as f64,
            2,
        );
        report.row(
            format!("step {}: latency p50 / p99 / max (ms)", step + 1),
            counters.latency.summary_ms(),
        );
        if let Some(p99) = counters.latency.quantile(0.99) {
            report.key(&format!("{key}.p99_ms"), format!("{:.1}", millis(p99)));
        }
        if let Some(server_cpu) = usage.server_cpu {
            let per_delivery = server_cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64;
            report.metric(
                format!("step {}: server CPU-µs per delivery", step + 1),
                &format!("{key}.cpu_us_per_delivery"),
                per_delivery,
                3,
            );
            report.metric(
                format!(
                    "step {}: deliveries per server CPU-second (per core)",
                    step + 1
                ),
                &format!("{key}.deliveries_per_core_second"),
                delivered as f64 / server_cpu.as_secs_f64().max(1e-9),
                0,
            );
            if delivered * 100 >= expected * 95 {
                best_cpu_per_delivery = best_cpu_per_delivery.min(per_delivery);
            }
        }
        usage_rows(&mut report, &format!("step {}", step + 1), &key, &usage);
        if delivered * 100 >= expected * 95 {
            best_rate = best_rate.max(delivery_rate);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    report.metric(
        "most deliveries/s with ≥ 95 % delivered",
        "best_deliveries_per_second",
        best_rate,
        0,
    );
    if best_cpu_per_delivery.is_finite() {
        report.metric(
            "least server CPU-µs per delivery with ≥ 95 % delivered",
            "best_cpu_us_per_delivery",
            best_cpu_per_delivery,
            3,
        );
    }
    if let Some(sample) = bench.server_sample() {
        report.metric(
            "server RSS at the end (MiB)",
            "rss_mib",
            sample.rss_kib as f64 / 1024.0,
            1,
        );
    }

    stop.cancel();
    let mut malformed = 0;
    for task in tasks {
        malformed += joined(task.await)?;
    }
    report.row("malformed benchmark notices", malformed.to_string());
    report.row(
        "sockets closed by the server (close codes)",
        progress.close_summary(),
    );
    Ok(report)
}

/// `step:nanos` → (step, nanos).
fn parse_stamp(text: &str) -> Option<(usize, u64)> {
    let (step, nanos) = text.split_once(':')?;
    Some((step.parse().ok()?, nanos.parse().ok()?))
}

#[derive(Debug, Default)]
struct Published {
    accepted: u64,
    failed: u64,
}

/// Publishes `rate` notices per second for `seconds` on an open-loop schedule spread over
/// `publishers` connections; a publisher that falls behind sends at once, never more than the
/// schedule's total.
async fn publish(
    bench: &Arc<Bench>,
    admin: &str,
    channel: &str,
    step: usize,
    rate: u32,
    seconds: u64,
    publishers: usize,
) -> Published {
    let total = u64::from(rate) * seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let give_up = start + Duration::from_secs(seconds + 10);
    let mut workers = Vec::new();
    for worker in 0..publishers.max(1) {
        let (bench, next, admin, channel) = (
            bench.clone(),
            next.clone(),
            admin.to_owned(),
            channel.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            let mut connection = bench.http(worker);
            let mut accepted = 0u64;
            let mut failed = 0u64;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total || Instant::now() >= give_up {
                    break;
                }
                let due = start + interval.mul_f64(index as f64);
                tokio::time::sleep_until(due.into()).await;
                let request = NoticeRequest {
                    channel: channel.clone(),
                    code: CODE.to_owned(),
                    message: format!("{step}:{}", bench.now_nanos()),
                };
                match connection
                    .post_json("/api/notices", Some(&admin), &request)
                    .await
                {
                    Ok(answer) if answer.status.is_success() => accepted += 1,
                    _ => failed += 1,
                }
            }
            (accepted, failed)
        }));
    }
    let mut published = Published::default();
    for worker in workers {
        if let Ok((accepted, worker_failed)) = worker.await {
            published.accepted += accepted;
            published.failed += worker_failed;
        }
    }
    published
}
