//! A battle server run as a child process, for the bots' restart chaos (`battle-bots
//! --spawn-server`) and the restart tests: started from a command that prints `listening on
//! ADDRESS` once it accepts players, killed (SIGKILL) or terminated (SIGTERM, the graceful stop)
//! by its pid.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A server child process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    address: SocketAddr,
    /// Its stdout's lines after `listening on`, the last [`KEPT_LINES`] of them.
    lines: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

/// How many of a server's latest stdout lines are kept ([`ServerProcess::last_line`]).
const KEPT_LINES: usize = 256;

impl ServerProcess {
    /// Runs `command` (its stdout piped here) and waits for its `listening on ADDRESS` line.
    ///
    /// # Errors
    /// When it cannot start, or exits (or closes its stdout) before it listens.
    pub fn start(command: &mut Command) -> Result<Self, String> {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|error| format!("the server command did not start: {error}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("the server's stdout is not piped")?;
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(address) = line.strip_prefix("listening on ") {
                        break address
                            .trim()
                            .parse()
                            .map_err(|error| format!("a bad address in {line:?}: {error}"))?;
                    }
                }
                _ => {
                    let _ = child.kill();
                    let status = child.wait().map_err(|error| error.to_string())?;
                    return Err(format!("the server exited before listening ({status})"));
                }
            }
        };
        // The rest of its stdout is drained so it never blocks on a full pipe; the latest lines
        // are kept for whoever asks what it said.
        let kept = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let keeping = kept.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut kept = keeping
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if kept.len() == KEPT_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        Ok(ServerProcess {
            child,
            address,
            lines: kept,
        })
    }

    /// The latest line it printed that starts with `prefix`, among its last 256.
    pub fn last_line(&self, prefix: &str) -> Option<String> {
        self.output().last_line(prefix)
    }

    /// What it prints, readable after it exited too.
    pub fn output(&self) -> Output {
        Output(self.lines.clone())
    }

    /// Sends it signal `name` (`STOP`, `CONT`) by its pid.
    ///
    /// # Errors
    /// When `kill` fails.
    pub fn signal(&self, name: &str) -> Result<(), String> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(&pid)
            .status()
            .map_err(|error| error.to_string())?;
        if sent.success() {
            Ok(())
        } else {
            Err(format!("kill -{name} {pid} failed"))
        }
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, by its pid, and reaps it.
    ///
    /// # Errors
    /// When the signal or the wait fails.
    pub fn kill(mut self) -> Result<(), String> {
        self.child.kill().map_err(|error| error.to_string())?;
        self.child.wait().map_err(|error| error.to_string())?;
        Ok(())
    }

    /// SIGTERM, by its pid (the graceful stop), and waits at most `limit` for it to exit with
    /// success (then kills it).
    ///
    /// # Errors
    /// When it exits with a failure or takes longer than `limit`.
    pub fn terminate(mut self, limit: Duration) -> Result<(), String> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|error| error.to_string())?;
        if !sent.success() {
            return Err(format!("kill -TERM {pid} failed"));
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|error| error.to_string())? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("the graceful stop exited with {status}"))
                };
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!("the graceful stop took longer than {limit:?}"));
            }
            // Polling a child's exit with a deadline: there is no event to wait on.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A server's latest stdout lines ([`ServerProcess::output`]).
#[derive(Debug, Clone)]
pub struct Output(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>);

impl Output {
    /// The latest line that starts with `prefix`, among the last 256.
    pub fn last_line(&self, prefix: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .rev()
            .find(|line| line.starts_with(prefix))
            .cloned()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
