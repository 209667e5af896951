//! The HTTP API of `switchyard run --listen ADDR`: where the pipeline stands (`GET /status`,
//! JSON), Prometheus metrics (`GET /metrics`), and operator actions (`POST /cutover`,
//! `/switchback`, `/abort`) that need `Authorization: Bearer <SWITCHYARD_API_TOKEN>`. Without a
//! token configured the actions are refused: a listening port must never move production
//! traffic for whoever can reach it.

mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::config::PipelineFile;
use crate::cutover::Side;
use crate::registry;

pub use metrics::{record_applied, APPLIED};

struct Api {
    file: PipelineFile,
    token: Option<String>,
    live: watch::Receiver<Side>,
}

/// Binds `address` now (so a taken port is an error at start) and returns the server to spawn.
pub async fn serve(
    address: SocketAddr,
    file: PipelineFile,
    live: watch::Receiver<Side>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<impl Future<Output = ()>> {
    let token = std::env::var("SWITCHYARD_API_TOKEN").ok().filter(|t| !t.is_empty());
    if token.is_none() {
        tracing::warn!("SWITCHYARD_API_TOKEN is not set: the API's actions (cutover, switchback, abort) are refused");
    }
    let api = Arc::new(Api { file, token, live });
    let router = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/cutover", post(cutover))
        .route("/switchback", post(switchback))
        .route("/abort", post(abort))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "HTTP API listening");
    Ok(async move {
        let stopped = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
            tracing::warn!(%error, "HTTP API stopped");
        }
    })
}

fn failure(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({ "error": message.into() }))).into_response()
}

async fn status_json(api: &Api) -> anyhow::Result<serde_json::Value> {
    let forward = crate::commands::gather(&api.file).await?;
    let mut body = json!({ "live": api.live.borrow().name(), "forward": forward });
    if *api.live.borrow() == Side::Shadow {
        body["reverse"] = serde_json::to_value(crate::commands::gather(&crate::cutover::way_back(&api.file)).await?)?;
    }
    Ok(body)
}

async fn status(State(api): State<Arc<Api>>) -> Response {
    match status_json(&api).await {
        Ok(body) => Json(body).into_response(),
        Err(error) => failure(StatusCode::SERVICE_UNAVAILABLE, format!("{error:#}")),
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    match status_json(&api).await {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::render(&api.file.pipeline.name, &body)).into_response(),
        Err(error) => failure(StatusCode::SERVICE_UNAVAILABLE, format!("{error:#}")),
    }
}

#[derive(Deserialize)]
struct CutoverQuery {
    #[serde(default)]
    rehearse: bool,
}

async fn cutover(State(api): State<Arc<Api>>, headers: HeaderMap, Query(query): Query<CutoverQuery>) -> Response {
    act(&api, &headers, if query.rehearse { "rehearsal" } else { "cutover" }).await
}

async fn switchback(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    act(&api, &headers, "switchback").await
}

async fn abort(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    act(&api, &headers, "abort").await
}

/// Records the request for the controller; progress shows in `GET /status`.
async fn act(api: &Api, headers: &HeaderMap, request: &str) -> Response {
    let Some(token) = &api.token else {
        return failure(StatusCode::FORBIDDEN, "actions are disabled: start `switchyard run` with SWITCHYARD_API_TOKEN set");
    };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|given| same_secret(given, token)) {
        return failure(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let result = async {
        let endpoints = registry::endpoints(&api.file)?;
        let shadow = endpoints.target.connect().await?;
        let store = registry::checkpoint_store(&api.file);
        Ok::<_, anyhow::Error>(store.request_cutover(&shadow, request).await?)
    }
    .await;
    match result {
        Ok(Some(seq)) => {
            tracing::info!(request, seq, "requested through the HTTP API");
            (StatusCode::ACCEPTED, Json(json!({ "requested": request, "request": seq, "progress": "GET /status" }))).into_response()
        }
        Ok(None) => failure(StatusCode::CONFLICT, "another request is waiting to be taken up"),
        Err(error) => failure(StatusCode::SERVICE_UNAVAILABLE, format!("{error:#}")),
    }
}

/// Compares without stopping at the first differing byte, so timing tells nothing.
fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_whole() {
        assert!(super::same_secret("abc", "abc"));
        assert!(!super::same_secret("abd", "abc"));
        assert!(!super::same_secret("ab", "abc"));
    }
}
