//! Telemetry: nothing configured exports nothing; an OTLP/HTTP endpoint (given without a scheme)
//! receives the spans on flush.

use std::time::Duration;

use garrison_runtime::telemetry::{self, OtlpProtocol, TelemetryConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

fn config(endpoint: Option<String>) -> TelemetryConfig {
    TelemetryConfig {
        service_name: "telemetry-test".into(),
        endpoint,
        protocol: OtlpProtocol::HttpProtobuf,
        sample_ratio: 1.0,
        log_filter: "off".into(),
        trace_filter: "info".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_configured_exports_nothing() {
    let (_dispatch, guard) = telemetry::dispatch(&config(None)).unwrap();
    assert!(!guard.exporting());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_endpoint_on_flush() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, mut requests) = tokio::sync::mpsc::channel::<String>(8);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = vec![0; 4096];
                let read = socket.read(&mut head).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&head[..read]).to_string();
                let _ = seen
                    .send(text.lines().next().unwrap_or_default().to_owned())
                    .await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });

    let (dispatch, guard) =
        telemetry::dispatch(&config(Some(format!("127.0.0.1:{port}")))).unwrap();
    assert!(guard.exporting());
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info_span!("garrison.test", game.event.type = "ping")
            .in_scope(|| tracing::info!("inside"));
    });
    guard.shutdown(Duration::from_secs(5)).await;
    let request = tokio::time::timeout(Duration::from_secs(10), requests.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(request, "POST /v1/traces HTTP/1.1");
}
