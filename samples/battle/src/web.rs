//! `serve --web ADDR`: the browser client. `GET /` is the page (`samples/battle/web/index.html`),
//! `GET /js/NAME.js` its scripts (the generated codecs and the page, compiled by `npm run build`
//! in `samples/battle/clients/typescript`, read from `--web-js`), and, only with
//! `--dev-tickets`, `GET /dev/ticket` mints a ticket for a new player id with the server's key.
//!
//! **The ticket endpoint is for development only**: anyone who can reach it is a player. A real
//! game mints tickets in its login service, after authenticating the player.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use garrison_runtime::gateway::ticket;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

/// The page.
const PAGE: &str = include_str!("../web/index.html");
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// The first player id the development endpoint hands out (far from the bots' ids).
const FIRST_DEV_PLAYER: u64 = 5_000_000_000;

/// What the web server serves.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Where to listen.
    pub address: SocketAddr,
    /// The directory of the compiled scripts (`page.js`, `battle.js`, `mirror.js`).
    pub scripts: PathBuf,
    /// The gateway's WebSocket listener, which the page connects to.
    pub websocket: SocketAddr,
    /// The ticket key, when the development ticket endpoint is on.
    pub dev_tickets: Option<Vec<u8>>,
}

struct Site {
    config: WebConfig,
    next_player: AtomicU64,
}

/// Serves the page until the returned task is aborted; returns the bound address.
///
/// # Errors
/// The error binding the address.
pub async fn serve(
    config: WebConfig,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(config.address).await?;
    let local = listener.local_addr()?;
    let site = Arc::new(Site {
        config,
        next_player: AtomicU64::new(FIRST_DEV_PLAYER),
    });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue;
            };
            let site = site.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |request| {
                    let site = site.clone();
                    async move { Ok::<_, std::convert::Infallible>(site.respond(&request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(TokioIo::new(stream), service);
                // Bounded: a client that stops reading cannot hold its slot.
                let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
            });
        }
    });
    Ok((local, task))
}

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    if let Ok(value) = "no-store".parse() {
        response
            .headers_mut()
            .insert(hyper::header::CACHE_CONTROL, value);
    }
    response
}

const TEXT: &str = "text/plain; charset=utf-8";

impl Site {
    async fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET {
            return answer(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET is served\n");
        }
        let path = request.uri().path();
        match path {
            "/" => answer(StatusCode::OK, "text/html; charset=utf-8", PAGE),
            "/dev/ticket" => self.dev_ticket(),
            _ => match path.strip_prefix("/js/").and_then(script_name) {
                Some(name) => self.script(name).await,
                None => answer(StatusCode::NOT_FOUND, TEXT, "not found: try /\n"),
            },
        }
    }

    async fn script(&self, name: &str) -> Response<Full<Bytes>> {
        let path = self.config.scripts.join(name);
        match tokio::fs::read(&path).await {
            Ok(body) => answer(StatusCode::OK, "text/javascript; charset=utf-8", body),
            Err(error) => answer(
                StatusCode::NOT_FOUND,
                TEXT,
                format!(
                    "{}: {error} (build the scripts with `npm ci && npm run build` in \
                     samples/battle/clients/typescript, or point --web-js at them)\n",
                    path.display()
                ),
            ),
        }
    }

    fn dev_ticket(&self) -> Response<Full<Bytes>> {
        let Some(key) = &self.config.dev_tickets else {
            return answer(
                StatusCode::NOT_FOUND,
                TEXT,
                "development tickets are off: start serve with --dev-tickets (never in production)\n",
            );
        };
        let player = self.next_player.fetch_add(1, Ordering::Relaxed);
        let expires_at = ticket::unix_now() + 3_600;
        let minted = ticket::mint(key, player, expires_at);
        let mac: String = minted
            .mac
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let body = format!(
            "{{\"player\":\"{player}\",\"expires_at\":\"{expires_at}\",\"mac\":\"{mac}\",\"websocket\":\"ws://{}/\"}}",
            self.config.websocket
        );
        answer(StatusCode::OK, "application/json", body)
    }
}

/// A script's file name, when `name` is one the page may load: lower-case letters and `_`,
/// ending `.js` (no path, so nothing outside the scripts' directory is ever read).
fn script_name(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".js")?;
    (!stem.is_empty()
        && stem
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte == b'_'))
    .then_some(name)
}

#[cfg(test)]
mod tests {
    use super::script_name;

    #[test]
    fn only_plain_script_names_are_served() {
        assert_eq!(script_name("page.js"), Some("page.js"));
        for refused in [
            "../page.js",
            "a/b.js",
            ".js",
            "page.ts",
            "Page.js",
            "%2e%2e.js",
            "page.js.map",
        ] {
            assert_eq!(script_name(refused), None, "{refused}");
        }
    }
}
