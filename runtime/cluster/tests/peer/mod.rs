//! What the two-process tests share: the two-node table, and a peer process (the test binary
//! run again in a role, its entry the binary's own `peer_process` test) that prints `@@ `
//! lines and takes commands on stdin, killed by its pid when dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use garrison_cluster::Table;
use garrison_cluster::node::NodeConfig;
use garrison_cluster::shard::shard_of;

pub const SHARDS: u16 = 64;
pub const COOKIE: &str = "garrison-test-cookie";
pub const ROLE: &str = "GARRISON_NODE_ROLE";

pub fn table() -> Table {
    Table::empty(SHARDS)
        .rebalance(&["a".to_owned(), "b".to_owned()])
        .0
}

/// The first key `<kind>-<n>` whose shard `node` owns.
pub fn key_owned(table: &Table, kind: &str, node: &str) -> Vec<u8> {
    (0..)
        .map(|n| format!("{kind}-{n}").into_bytes())
        .find(|key| {
            table
                .owner(shard_of(kind, key, SHARDS))
                .is_some_and(|(owner, _)| owner == node)
        })
        .expect("a two-node table gives each node some shards")
}

pub fn config(id: &str, cookie: &str) -> NodeConfig {
    NodeConfig {
        id: id.to_owned(),
        cookie: cookie.to_owned(),
        listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 0,
        shards: SHARDS,
    }
}

/// A peer process: this binary in another role.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    pub fn spawn(role: &str, env: &[(&str, String)]) -> Peer {
        let mut command = Command::new(std::env::current_exe().expect("test binary"));
        command
            .args(["peer_process", "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn the peer");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness prints `test peer_process ... ` before our first line.
                if let Some(at) = line.find("@@ ")
                    && tx.send(line[at + 3..].to_owned()).is_err()
                {
                    break;
                }
            }
        });
        Peer {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    /// The rest of the next line that starts with `prefix`.
    pub fn expect(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Err(error) => panic!("peer printed no `{prefix}` line within {within:?}: {error}"),
            }
        }
    }

    pub fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("peer stdin");
        writeln!(stdin, "{line}").expect("write to the peer");
        stdin.flush().expect("flush to the peer");
    }

    /// Sends the peer signal `name` (`STOP`, `CONT`) by its pid.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {}", self.child.id());
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn stats_of(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

pub async fn within<T>(what: &str, wait: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(wait, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {wait:?}"))
}
