//! The five workloads of issue 5 and the cluster workloads of issue 11, one module each; each
//! returns its [`crate::report::Report`].

pub mod cluster_closes;
pub mod cluster_latency;
pub mod cluster_sockets;
pub mod cluster_votes;
pub mod socket_holder;
pub mod w1;
pub mod w2;
pub mod w3;
pub mod w4;
pub mod w5;

use crate::context::Usage;
use crate::report::Report;

/// Adds the server and load-generator CPU rows for a measured window.
pub fn usage_rows(report: &mut Report, window: &str, key: &str, usage: &Usage) {
    match usage.server_cores() {
        Some(cores) => report.metric(
            format!("server CPU during {window} (cores)"),
            &format!("{key}.server_cores"),
            cores,
            3,
        ),
        None => report.row(
            format!("server CPU during {window}"),
            "unknown (no server pid)",
        ),
    }
    report.metric(
        format!("load generator CPU during {window} (cores)"),
        &format!("{key}.loadgen_cores"),
        usage.own_cores(),
        3,
    );
}
