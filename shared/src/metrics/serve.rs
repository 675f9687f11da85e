//! The HTTP endpoint of `run --metrics-addr`: `/metrics` (OpenMetrics text), `/healthz` (the
//! process answers) and `/readyz` (every stage made progress within its bound; 503 with the
//! stages that did not).

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

use super::{metrics, Role};
use crate::health::health;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} for metrics (--metrics-addr): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Listens on `addr` and serves the endpoints on a task of their own until the process ends.
/// Returns the address bound (a port 0 gets one chosen by the system).
pub async fn serve(addr: SocketAddr, role: Role) -> Result<SocketAddr, ServeError> {
    metrics().expose(role);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "accepting a metrics connection failed");
                    continue;
                }
            };
            tokio::spawn(async move {
                let served = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
                if let Err(e) = served {
                    debug!(error = %e, "a metrics connection ended with an error");
                }
            });
        }
    });
    Ok(bound)
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics().encode(),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let r = health().readiness();
            if r.ready {
                reply(
                    StatusCode::OK,
                    "text/plain",
                    format!("ready: {} stages made progress in time\n", r.stages),
                )
            } else {
                let mut text = String::from("not ready:\n");
                for p in &r.problems {
                    text.push_str(p);
                    text.push('\n');
                }
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", text)
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics, /healthz or /readyz\n".into(),
        ),
    })
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}
