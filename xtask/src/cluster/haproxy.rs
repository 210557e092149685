//! The load balancer in front of a local cluster: HAProxy from Debian's packages (installed when
//! missing) and the configuration that gives the SDK one URL for every node.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::Result;

use crate::tools;

/// Installs Debian's `haproxy` unless one is on the PATH already.
pub fn ensure_installed() -> Result<()> {
    if let Some(version) = tools::output_of("haproxy", &["-v"]) {
        let first_line = version.lines().next().unwrap_or_default().to_owned();
        println!("haproxy: installed ({first_line})");
        return Ok(());
    }
    tools::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    tools::run(
        Command::new("apt-get")
            .args(["install", "-y", "haproxy"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Where the balancer listens and what it balances.
pub struct Layout<'a> {
    pub balancer_port: u16,
    pub stats_port: u16,
    pub node_ports: &'a [u16],
}

/// The configuration, with the reason for each setting a production cluster would keep.
pub fn configuration(layout: &Layout<'_>) -> String {
    let mut text = format!(
        "# Written by `cargo xtask cluster`; every node of the cluster behind one URL.
global
    # No maxconn: HAProxy derives it from the open-file limit, as each node does.
    log stdout format raw local0 notice

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 2s
    # Plain HTTP requests; the API answers within its own 5 s write bound.
    timeout client 30s
    timeout server 30s
    # After the WebSocket upgrade only this applies. The server pings every heartbeat
    # interval (20 s) and closes silent sockets itself, so this only needs to be longer.
    timeout tunnel 1h
    timeout client-fin 5s
    # A node that refuses the connection (stopping, or just killed) is retried on another.
    retries 3
    option redispatch 1
    # The nodes see the client's address in X-Forwarded-For (they key limits on the peer,
    # which is this balancer: keep /api/auth, which is for backends, off the public edge).
    option forwardfor

frontend livevote
    bind 127.0.0.1:{balancer}
    default_backend nodes

backend nodes
    # Sockets live for hours: send a new one to the node holding the fewest.
    balance leastconn
    # /readyz is 503 while a node cannot trust its view (it has lost Redis, or is reloading
    # from Postgres) or cannot commit: it takes no new clients until it is ready again. Its
    # open sockets stay, and catch up when it has healed.
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fastinter 250ms downinter 1s fall 2 rise 2
",
        balancer = layout.balancer_port,
    );
    for (index, port) in layout.node_ports.iter().enumerate() {
        let _ = writeln!(text, "    server node{} 127.0.0.1:{port} check", index + 1);
    }
    let _ = write!(
        text,
        "
frontend stats
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /
    stats refresh 2s
",
        stats = layout.stats_port,
    );
    text
}

/// The state of each node as HAProxy sees it, from the stats page's CSV (`UP`, `DOWN`, …).
pub fn node_states(stats_csv: &str) -> Vec<(String, String)> {
    let mut lines = stats_csv.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let column = |name: &str| columns.iter().position(|column| *column == name);
    let (Some(proxy), Some(server), Some(status)) =
        (column("pxname"), column("svname"), column("status"))
    else {
        return Vec::new();
    };
    lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|fields| fields.get(proxy) == Some(&"nodes"))
        .filter(|fields| {
            fields
                .get(server)
                .is_some_and(|name| name.starts_with("node"))
        })
        .filter_map(|fields| {
            Some((
                fields.get(server)?.to_string(),
                fields.get(status)?.to_string(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_is_a_checked_server_of_the_backend() {
        let text = configuration(&Layout {
            balancer_port: 8080,
            stats_port: 8099,
            node_ports: &[8081, 8082],
        });
        assert!(text.contains("bind 127.0.0.1:8080"));
        assert!(text.contains("server node1 127.0.0.1:8081 check"));
        assert!(text.contains("server node2 127.0.0.1:8082 check"));
        assert!(text.contains("option httpchk GET /readyz"));
        assert!(text.contains("bind 127.0.0.1:8099"));
    }

    #[test]
    fn reads_the_node_states_from_the_stats_csv() {
        let csv = "# pxname,svname,qcur,status,weight\n\
                   livevote,FRONTEND,,OPEN,\n\
                   nodes,node1,0,UP,1\n\
                   nodes,node2,0,DOWN,1\n\
                   nodes,BACKEND,0,UP,2\n";
        assert_eq!(
            node_states(csv),
            vec![
                ("node1".to_owned(), "UP".to_owned()),
                ("node2".to_owned(), "DOWN".to_owned())
            ]
        );
    }
}
