//! The per-request path: route, balance, forward, observe.

use super::body::{grpc_status, Observation, ObservedBody};
use super::client::Wire;
use super::headers::{is_upgrade, strip_hop_by_hop};
use super::{error_response, BoxError, ProxyBody};
use crate::config::UpstreamProtocol;
use crate::metrics::{RequestLabels, ResponseLabels};
use crate::route;
use crate::shared::Shared;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

/// What a connection knows about itself, shared by its requests.
pub struct ConnContext {
    pub shared: Arc<Shared>,
    pub listener: usize,
    pub direction: Arc<str>,
}

pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnContext>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let shared = conn.shared.clone();
    match forward(req, &conn, started).await {
        Ok(resp) => Ok(resp),
        Err(failure) => {
            let resp = error_response(failure.status, &failure.reason);
            shared.metrics.response(
                &ResponseLabels {
                    request: failure.labels,
                    status_code: failure.status.as_u16(),
                    classification: if failure.status.is_server_error() {
                        "failure"
                    } else {
                        "success"
                    },
                },
                started.elapsed(),
            );
            Ok(resp)
        }
    }
}

struct Failure {
    status: StatusCode,
    reason: String,
    labels: RequestLabels,
}

fn authority_of(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers().get(HOST)?.to_str().ok().map(str::to_string)
}

async fn forward(
    mut req: Request<Incoming>,
    conn: &ConnContext,
    started: Instant,
) -> Result<Response<ProxyBody>, Failure> {
    let shared = &conn.shared;
    let table = shared.table.load();
    let authority = authority_of(&req).unwrap_or_default();
    let mut labels = RequestLabels {
        direction: conn.direction.clone(),
        authority: authority.clone(),
        dst_service: Arc::from(""),
        dst_zone: Arc::from(""),
    };
    let fail = |status, reason: &str, labels: &RequestLabels| Failure {
        status,
        reason: reason.to_string(),
        labels: labels.clone(),
    };
    let routes = &table.routes[conn.listener];
    let host = route::host_of(&authority);
    let Some(route) = route::find(routes, host, req.uri().path(), req.headers()) else {
        shared.metrics.request(&labels);
        return Err(fail(StatusCode::NOT_FOUND, "no route", &labels));
    };
    let service = &table.services[route.pick_service()];
    labels.dst_service = service.name.clone();
    let Some(index) = service.balancer.pick() else {
        shared.metrics.request(&labels);
        return Err(fail(StatusCode::SERVICE_UNAVAILABLE, "no endpoints", &labels));
    };
    let endpoint = &service.balancer.endpoints()[index];
    labels.dst_zone = endpoint.zone.clone();
    shared.metrics.request(&labels);

    let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
    let wire = match (service.protocol, req.version()) {
        _ if upgrade => Wire::Http1,
        (UpstreamProtocol::Http1, _) => Wire::Http1,
        (UpstreamProtocol::Http2, _) => Wire::Http2,
        (UpstreamProtocol::Auto, Version::HTTP_2) => Wire::Http2,
        (UpstreamProtocol::Auto, _) => Wire::Http1,
    };
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let upstream_req = rewrite_request(req, &authority, wire, upgrade)
        .map_err(|reason| fail(StatusCode::BAD_REQUEST, &reason, &labels))?;

    let mut pending = endpoint.start();
    let pool = &service.pools[index];
    let sent = pool.send(upstream_req, wire);
    let result = match route.timeout {
        Some(limit) => match tokio::time::timeout(limit, sent).await {
            Ok(r) => r,
            Err(_) => {
                pending.abandon();
                return Err(fail(StatusCode::GATEWAY_TIMEOUT, "upstream timeout", &labels));
            }
        },
        None => sent.await,
    };
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            pending.abandon();
            endpoint.record_failure();
            let reason = e.to_string();
            eprintln!("meshcore: {} -> {}: {reason}", service.name, endpoint.addr);
            return Err(fail(StatusCode::BAD_GATEWAY, &reason, &labels));
        }
    };

    let status = resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(splice_upgrade(client_upgrade, upstream_upgrade));
        }
        pending.finish();
        strip_hop_by_hop(resp.headers_mut(), true);
        let obs = Observation::new(pending, started, shared.clone(), labels, status.as_u16(), None);
        drop(obs);
        return Ok(resp.map(|_| super::full(bytes::Bytes::new())));
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    let grpc = grpc_status(resp.headers());
    let obs = Observation::new(pending, started, shared.clone(), labels, status.as_u16(), grpc);
    Ok(resp.map(|body| {
        ObservedBody::new(body, obs)
            .map_err(BoxError::from)
            .boxed_unsync()
    }))
}

/// Prepares the request for the upstream wire: origin-form URI and a Host
/// header for HTTP/1.1, an absolute URI (which becomes :authority) for HTTP/2.
fn rewrite_request(
    req: Request<Incoming>,
    authority: &str,
    wire: Wire,
    upgrade: bool,
) -> Result<Request<ProxyBody>, String> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match wire {
        Wire::Http1 => {
            parts.version = Version::HTTP_11;
            parts.uri = Uri::from(path);
            if !authority.is_empty() {
                let host = HeaderValue::from_str(authority).map_err(|_| "invalid authority".to_string())?;
                parts.headers.insert(HOST, host);
            }
        }
        Wire::Http2 => {
            parts.version = Version::HTTP_2;
            let mut uri = Uri::builder().scheme(Scheme::HTTP).path_and_query(path);
            if !authority.is_empty() {
                let a: Authority = authority.parse().map_err(|_| "invalid authority".to_string())?;
                uri = uri.authority(a);
            }
            parts.uri = uri.build().map_err(|e| format!("invalid request target: {e}"))?;
            parts.headers.remove(HOST);
        }
    }
    Ok(Request::from_parts(
        parts,
        body.map_err(BoxError::from).boxed_unsync(),
    ))
}

async fn splice_upgrade(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
