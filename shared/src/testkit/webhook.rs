//! A local HTTP receiver for the alert notifier's posts: records every request, and answers
//! each with the status queued by [`Webhook::answer_next`] (200 when none is queued).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub content_type: String,
    /// The body as JSON (`Null` when it was not JSON).
    pub json: serde_json::Value,
    /// The body's `text` field (empty when there is none).
    pub text: String,
    /// The status it was answered with.
    pub status: u16,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    answers: Mutex<VecDeque<u16>>,
}

/// A receiver on 127.0.0.1; stops when dropped.
pub struct Webhook {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    /// Listens on a free port of 127.0.0.1 (call from within a tokio runtime).
    pub async fn start() -> Webhook {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Listens on `addr`.
    pub async fn start_on(addr: SocketAddr) -> Webhook {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind the webhook receiver on {addr}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the webhook receiver's address: {e}"));
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(s.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Webhook { addr, shared, task }
    }

    /// The URL to post to.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The next request not yet answered is answered with `status` (queued in order).
    pub fn answer_next(&self, status: u16) {
        if let Ok(mut a) = self.shared.answers.lock() {
            a.push_back(status);
        }
    }

    /// Every request so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Waits for a request at index `from` or later whose text satisfies `check`; its index
    /// and the request. Panics after `timeout` with everything received.
    pub async fn wait_post(
        &self,
        what: &str,
        from: usize,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> (usize, Received) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let all = self.received();
            if let Some((i, r)) = all
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, r)| check(&r.text))
            {
                return (i, r.clone());
            }
            if std::time::Instant::now() > deadline {
                let texts: Vec<String> = all
                    .iter()
                    .map(|r| format!("{} -> {}", r.text, r.status))
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; received:\n{}",
                    texts.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let text = json["text"].as_str().unwrap_or_default().to_string();
    let status = shared
        .answers
        .lock()
        .ok()
        .and_then(|mut a| a.pop_front())
        .unwrap_or(200);
    if let Ok(mut r) = shared.received.lock() {
        r.push(Received {
            method,
            path,
            content_type,
            json,
            text,
            status,
        });
    }
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok(response)
}
