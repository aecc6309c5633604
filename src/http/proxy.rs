//! The per-request path: route, balance, forward (with retries and
//! timeouts), observe.

use super::body::{grpc_status, Observation, ObservedBody};
use super::client::{UpstreamError, Wire};
use super::headers::{is_upgrade, strip_hop_by_hop, upgrade_agrees};
use super::hooks;
use super::local::{fail, header_list, local, plugin_failed, route_answers_itself, Failure, FailureLog};
use super::replay::Replay;
use super::template::{build_request, Template};
use super::{error_response, BoxError, ProxyBody, RequestBody};
use crate::balance::NoPick;
use crate::config::UpstreamProtocol;
use crate::conn::ConnContext;
use crate::metrics::{RequestLabels, RouteLabels};
use crate::plugin::{LogSummary, PluginRequest, RequestFacts, ON_LOG, ON_RESPONSE, ON_UPSTREAM_REQUEST};
use crate::policy::Decision;
use crate::resilience::retry::{Outcome, MAX_REPLAY_BYTES};
use crate::route;
use crate::shared::Shared;
use crate::time::deadline::{with_deadline, Elapsed};
use futures_util::FutureExt;
use http::header::{HOST, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// Header carrying the caller's verified identity to the application.
pub static CLIENT_ID_HEADER: http::HeaderName = http::HeaderName::from_static("meshcore-client-id");

/// The protocol a request arrived in at the first proxy, when the mesh hop
/// carried it in HTTP/2: the proxy at the far end speaks it to the app
/// (Linkerd's `l5d-orig-proto`).
pub static ORIG_PROTO_HEADER: http::HeaderName = http::HeaderName::from_static("meshcore-orig-proto");
static HTTP11: HeaderValue = HeaderValue::from_static("HTTP/1.1");

/// Takes the carried protocol off the request: true when a meshed peer
/// says it was HTTP/1.x. Only a peer proxy may say so; from anyone else
/// the header is dropped.
fn arrived_as_http1(req: &mut Request<RequestBody>, conn: &ConnContext) -> bool {
    if req.version() != Version::HTTP_2 {
        req.headers_mut().remove(&ORIG_PROTO_HEADER);
        return false;
    }
    let carried = req.headers_mut().remove(&ORIG_PROTO_HEADER);
    carried.is_some_and(|v| v.as_bytes().starts_with(b"HTTP/1.")) && conn.tls.identity().is_some()
}

/// Proxies one request. The request's future is built from plain functions,
/// `async move` blocks and a `map`, not nested `async fn`s: an `async fn`
/// keeps a second copy of a by-value request, and every nesting level is
/// one more copy of the inner state when it starts. That state is copied
/// whole whenever the request's future moves.
pub fn handle(
    req: Request<RequestBody>,
    conn: Arc<ConnContext>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> {
    let started = Instant::now();
    // The connection's Arc, not the proxy-wide one: only one worker touches its count.
    let ctx = conn.clone();
    forward(req, conn, started)
        .map(move |forwarded| Ok(forwarded.unwrap_or_else(|f| answer_failure(f, &ctx.shared, started))))
}

/// The proxy's own answer to a request that failed, counted and observed.
fn answer_failure(failure: Failure, shared: &Shared, started: Instant) -> Response<ProxyBody> {
    let metrics = &shared.metrics;
    if !failure.counted {
        metrics.request(&failure.labels);
    }
    let resp = failure
        .response
        .unwrap_or_else(|| error_response(failure.status, &failure.reason));
    let status = resp.status();
    if let Some(log) = failure.log {
        let FailureLog {
            host,
            req,
            mut summary,
        } = *log;
        summary.status = status.as_u16();
        summary.zone = failure.labels.dst_zone.to_string();
        summary.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        summary.ttfb_ms = summary.duration_ms;
        summary.response_bytes = hyper::body::Body::size_hint(resp.body()).exact().unwrap_or(0);
        host.on_log(req, summary);
    }
    let classification = if status.is_server_error() {
        "failure"
    } else {
        "success"
    };
    metrics.response(
        &failure.labels,
        status.as_u16(),
        grpc_status(resp.headers()),
        classification,
        started.elapsed(),
    );
    resp
}

/// The request's authority: the URI's (HTTP/2, absolute-form), copied into
/// the per-thread buffer, else the Host header, shared. Empty when missing or
/// not text.
fn authority_of(req: &Request<RequestBody>) -> HeaderValue {
    let found = match req.uri().authority() {
        // A shared copy: the value is cloned into labels, and a plain one
        // would be allocated twice (for the copy, then to share it).
        Some(a) => {
            HeaderValue::from_maybe_shared(crate::io::read_buf::shared_copy(a.as_str().as_bytes())).ok()
        }
        None => req.headers().get(HOST).cloned(),
    };
    found
        .filter(|v| v.to_str().is_ok())
        .unwrap_or_else(|| HeaderValue::from_static(""))
}

/// What a log summary says of a request the proxy answered itself.
struct Said<'a> {
    method: &'a http::Method,
    path: &'a str,
    authority: &'a HeaderValue,
    route: Option<&'a route::Route>,
    service: Option<&'a str>,
    retried: bool,
}

impl<'a> Said<'a> {
    fn of(
        req: &'a Request<RequestBody>,
        authority: &'a HeaderValue,
        route: Option<&'a route::Route>,
    ) -> Self {
        Said {
            method: req.method(),
            path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            authority,
            route,
            service: None,
            retried: false,
        }
    }
}

/// Gives an answer the proxy made itself what the plugins' `on_log` needs,
/// when a plugin may log it: one of its route's, or before a route was
/// found, one on every route (Python picks them). Without plugins this is
/// one pointer load, on error paths only.
fn logged(mut failure: Failure, conn: &ConnContext, preq: Option<PluginRequest>, said: Said<'_>) -> Failure {
    if said.route.is_some_and(|r| !r.plugins) {
        return failure;
    }
    let mut log = match (failure.log.take(), preq) {
        (Some(log), _) => log,
        (None, preq) => match conn.shared.plugins.load_full() {
            Some(host) => Box::new(FailureLog {
                host,
                req: preq,
                summary: LogSummary::default(),
            }),
            None => return failure,
        },
    };
    if log.req.as_ref().is_some_and(|r| !r.has(ON_LOG)) {
        return failure;
    }
    log.summary = LogSummary {
        method: said.method.to_string(),
        path: said.path.to_string(),
        authority: text(said.authority).to_string(),
        route: said.route.map(|r| r.name.to_string()).unwrap_or_default(),
        service: said.service.unwrap_or_default().to_string(),
        retried: said.retried,
        identity: conn.tls.identity().map(str::to_string),
        ..Default::default()
    };
    failure.log = Some(log);
    failure
}

/// A header value known to be text (see `authority_of`).
pub(super) fn text(value: &HeaderValue) -> &str {
    value.to_str().unwrap_or_default()
}

#[allow(clippy::manual_async_fn)] // one copy of the request in the state, not two
fn forward(
    mut req: Request<RequestBody>,
    conn: Arc<ConnContext>,
    started: Instant,
) -> impl Future<Output = Result<Response<ProxyBody>, Failure>> {
    async move {
        let conn = &*conn;
        let shared = &conn.shared;
        let table = shared.table.load();
        let refused = super::target::check(&mut req).err();
        let authority = match refused {
            None => authority_of(&req),
            Some(_) => HeaderValue::from_static(""),
        };
        let mut labels = RequestLabels {
            direction: conn.direction.clone(),
            authority: authority.clone(),
            dst_service: conn.no_name.clone(),
            dst_zone: conn.no_name.clone(),
            cross_zone: false,
            tls: conn.tls.label(),
            route: conn.no_name.clone(),
        };
        if let Some((status, reason)) = refused {
            let refusal = fail(status, reason, &labels);
            return Err(logged(refusal, conn, None, Said::of(&req, &authority, None)));
        }
        // Only this proxy may say who the caller is.
        match &conn.client_id {
            Some(id) => req.headers_mut().insert(&CLIENT_ID_HEADER, id.clone()),
            None => req.headers_mut().remove(&CLIENT_ID_HEADER),
        };
        if conn.inbound {
            let decision = table.policy.decide(
                &conn.listener_name,
                conn.peer.ip(),
                conn.tls.identity(),
                Some(req.uri().path()),
            );
            shared.metrics.authorization(&conn.listener_name, &decision);
            match decision {
                Decision::Allow(_) => {}
                Decision::Audit => eprintln!(
                    "meshcore: audit: {} {} from {} ({}) would be denied",
                    req.method(),
                    req.uri().path(),
                    conn.peer,
                    conn.tls.identity().unwrap_or("no identity")
                ),
                Decision::Deny(_) => {
                    let denied = fail(StatusCode::FORBIDDEN, "unauthorized", &labels);
                    return Err(logged(denied, conn, None, Said::of(&req, &authority, None)));
                }
            }
        }
        let routes = &table.routes[conn.listener];
        let host = route::host_of(text(&authority));
        let Some(route) = route::find(routes, host, req.uri().path(), req.headers()) else {
            let unrouted = fail(StatusCode::NOT_FOUND, "no route", &labels);
            return Err(logged(unrouted, conn, None, Said::of(&req, &authority, None)));
        };
        labels.route = route.name.clone();
        if let Some(resp) = route_answers_itself(route, &req, text(&authority)) {
            let said = Said::of(&req, &authority, Some(route));
            return Err(logged(local(resp, &labels), conn, None, said));
        }
        let mut service_index = route.pick_service();
        let plugins = if route.plugins {
            shared.plugins.load_full()
        } else {
            None
        };
        let mut plugin_req = None;
        if let Some(host) = &plugins {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
            let method = req.method().clone();
            let facts = RequestFacts {
                route: &route.name,
                method: method.as_str(),
                path: &path,
                authority: text(&authority),
                headers: header_list(req.headers()),
                peer: conn.peer.to_string(),
                identity: conn.tls.identity(),
                service: service_index.map(|i| &*table.services[i].name),
            };
            let (preq, chosen) = Box::pin(hooks::on_request(host, facts, &mut req, &labels))
                .await
                .map_err(|f| logged(f, conn, None, Said::of(&req, &authority, Some(route))))?;
            if let Some(name) = chosen {
                let Some(found) = table.services.iter().position(|s| *s.name == name) else {
                    let failed = plugin_failed(&format!("plugin chose unknown service {name:?}"), &labels);
                    return Err(logged(
                        failed,
                        conn,
                        Some(preq),
                        Said::of(&req, &authority, Some(route)),
                    ));
                };
                service_index = Some(found);
            }
            plugin_req = Some(preq);
        }
        let Some(service_index) = service_index else {
            let unserved = fail(StatusCode::SERVICE_UNAVAILABLE, "no backends", &labels);
            let said = Said::of(&req, &authority, Some(route));
            return Err(logged(unserved, conn, plugin_req.take(), said));
        };
        let service = &table.services[service_index];
        labels.dst_service = service.name.clone();
        let deadline = route.timeout.map(|t| tokio::time::Instant::from_std(started + t));

        let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
        let carried_http1 = arrived_as_http1(&mut req, conn);
        let client_h2 = req.version() == Version::HTTP_2 && !carried_http1;
        let client_wire = match (service.protocol, client_h2) {
            _ if upgrade => Wire::Http1,
            (UpstreamProtocol::Http1, _) => Wire::Http1,
            (UpstreamProtocol::Http2, _) => Wire::Http2,
            (UpstreamProtocol::Auto, true) => Wire::Http2,
            (UpstreamProtocol::Auto, false) => Wire::Http1,
        };
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let asked_upgrade = req.headers().get(UPGRADE).filter(|_| upgrade).cloned();
        // In a block so that what is left of the request is not kept across awaits.
        let (mut template, body) = {
            let (mut parts, body) = req.into_parts();
            strip_hop_by_hop(&mut parts.headers, upgrade);
            if let Some(ops) = &route.filters.request_headers {
                ops.apply(&mut parts.headers);
            }
            let mut path = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            if let Some(replacement) = &route.filters.rewrite_prefix {
                let rewritten =
                    crate::filters::rewrite_prefix(path.as_str(), route.path_prefix(), replacement);
                let Ok(parsed) = rewritten.parse() else {
                    let invalid = fail(StatusCode::BAD_REQUEST, "invalid rewritten path", &labels);
                    let said = Said {
                        method: &parts.method,
                        path: path.as_str(),
                        authority: &authority,
                        route: Some(route),
                        service: Some(&service.name),
                        retried: false,
                    };
                    return Err(logged(invalid, conn, plugin_req.take(), said));
                };
                path = parsed;
            }
            let template = Template {
                method: parts.method,
                path,
                headers: parts.headers,
                authority,
            };
            (template, body)
        };

        let retry = route.retry.as_ref().filter(|_| !upgrade);
        let route_labels = || RouteLabels {
            direction: conn.direction.clone(),
            route: route.name.clone(),
            dst_service: service.name.clone(),
        };
        let (replay, mut body) = match retry {
            Some(_) => (Some(Replay::new(body, MAX_REPLAY_BYTES)), None),
            None => (None, Some(body)),
        };
        if let Some(policy) = retry {
            policy.budget.deposit(started);
        }
        let proxy_zone = table.config.zone.as_deref();
        let mut exclude: Vec<usize> = Vec::new();
        let mut attempt = 0u32;
        // The request is counted at its first pick: a failure from the loop is
        // already counted, one from before it is counted by `handle`.
        let dispatched = loop {
            // A first attempt without plugin hooks is picked a microsecond or so
            // after arrival: that clock read serves for the balancer too.
            let now = if attempt == 0 && plugins.is_none() {
                started
            } else {
                Instant::now()
            };
            let index = match service.balancer.pick_at(now, &exclude) {
                Ok(i) => i,
                Err(no) => {
                    labels.dst_zone = Arc::from(crate::config::UNKNOWN_ZONE);
                    if attempt == 0 {
                        shared.metrics.request(&labels);
                    }
                    let reason = match no {
                        NoPick::NoEndpoints => "no endpoints",
                        NoPick::AllTripped => "all endpoints unavailable",
                    };
                    break Err(fail(StatusCode::SERVICE_UNAVAILABLE, reason, &labels));
                }
            };
            let endpoint = &service.balancer.endpoints()[index];
            labels.dst_zone = endpoint.zone.clone();
            labels.cross_zone = proxy_zone.is_some_and(|z| z != &*endpoint.zone);
            if attempt == 0 {
                shared.metrics.request(&labels);
            }
            let pool = &service.pools[index];
            // Between meshed proxies the transport is HTTP/2, whatever the client
            // spoke; `auto` towards an app speaks HTTP/1.1 to one without h2c.
            let wire = if pool.is_meshed() && !upgrade {
                Wire::Http2
            } else if client_wire == Wire::Http2 && service.protocol == UpstreamProtocol::Auto {
                let h2c = match pool.speaks_h2c() {
                    Some(known) => known,
                    None => Box::pin(pool.probe_h2c()).await,
                };
                if h2c {
                    Wire::Http2
                } else {
                    Wire::Http1
                }
            } else {
                client_wire
            };
            let attempt_body = match (&replay, body.take()) {
                (Some(r), _) => r.attempt().map_err(BoxError::from).boxed_unsync(),
                // Boxing a zero-sized body allocates nothing.
                (None, Some(RequestBody::Empty)) => http_body_util::Empty::new()
                    .map_err(BoxError::from)
                    .boxed_unsync(),
                (None, Some(b)) => b.map_err(BoxError::from).boxed_unsync(),
                (None, None) => unreachable!("a request without retries is sent once"),
            };
            // In a block: the edited template and the built request are not kept across the send.
            let upstream_req = {
                let edited = match (
                    &plugins,
                    plugin_req.as_ref().filter(|r| r.has(ON_UPSTREAM_REQUEST)),
                ) {
                    (Some(host), Some(preq)) => {
                        let hooked = hooks::on_upstream_request(host, preq, endpoint, &template, &labels);
                        match Box::pin(hooked).await {
                            Ok(edited) => edited,
                            Err(answer) => break Err(answer),
                        }
                    }
                    _ => None,
                };
                let last_attempt = retry.is_none_or(|p| attempt >= p.limit);
                let built = match edited {
                    Some(t) => build_request(t, attempt_body, wire),
                    // Nothing will be re-sent: hand the headers over instead of copying them.
                    None if last_attempt && plugins.is_none() => build_request(
                        std::mem::replace(&mut template, Template::empty()),
                        attempt_body,
                        wire,
                    ),
                    None => build_request(template.clone(), attempt_body, wire),
                };
                match built {
                    Ok(mut req) => {
                        if wire == Wire::Http2 && pool.is_meshed() && !client_h2 {
                            req.headers_mut().insert(&ORIG_PROTO_HEADER, HTTP11.clone());
                        }
                        req
                    }
                    Err(reason) => break Err(fail(StatusCode::BAD_REQUEST, reason, &labels)),
                }
            };

            let mut pending = endpoint.start_at(now);
            let attempt_deadline = match (route.response_timeout, deadline) {
                (Some(rt), Some(d)) => Some(d.min(tokio::time::Instant::now() + rt)),
                (Some(rt), None) => Some(tokio::time::Instant::now() + rt),
                (None, d) => d,
            };
            let result = match with_deadline(pool.send(upstream_req, wire), attempt_deadline).await {
                Ok(r) => r,
                Err(Elapsed) => {
                    // Timeouts are never retried: the time is already spent.
                    pending.abandon();
                    endpoint.record_failure();
                    break Err(fail(StatusCode::GATEWAY_TIMEOUT, "upstream timeout", &labels));
                }
            };
            if let Err(UpstreamError::Http(e)) = &result {
                if e.is_user() {
                    // The client's own request body failed (it went away mid-upload):
                    // not the endpoint's fault, and nothing to retry.
                    pending.abandon();
                    break Err(fail(StatusCode::BAD_REQUEST, "request body error", &labels));
                }
            }
            if matches!(
                result,
                Err(UpstreamError::Connect(_) | UpstreamError::ConnectTimeout | UpstreamError::Tls(_))
            ) {
                pending.unreachable();
            }
            let outcome = || match &result {
                Ok((resp, _)) => Outcome::Status(resp.status().as_u16(), grpc_status(resp.headers())),
                Err(
                    UpstreamError::Connect(_)
                    | UpstreamError::ConnectTimeout
                    | UpstreamError::Tls(_)
                    | UpstreamError::NotHttp2,
                ) => Outcome::ConnectFailure,
                Err(UpstreamError::Http(_) | UpstreamError::Io(_) | UpstreamError::Protocol(_)) => {
                    Outcome::Reset
                }
            };
            let may_retry = retry.is_some_and(|p| {
                attempt < p.limit && p.retries(outcome()) && replay.as_ref().is_some_and(Replay::replayable)
            });
            if may_retry {
                let policy = retry.expect("checked above");
                if policy.budget.withdraw(Instant::now()) {
                    pending.abandon();
                    endpoint.record_failure();
                    shared.metrics.retry(&route_labels());
                    attempt += 1;
                    exclude.push(index);
                    continue;
                }
                shared.metrics.retry_budget_exhausted(&route_labels());
            }
            let (mut resp, reusable) = match result {
                Ok(sent) => sent,
                Err(e) => {
                    pending.abandon();
                    endpoint.record_failure();
                    let reason = e.to_string();
                    crate::throttled!("{} -> {}: {reason}", service.name, endpoint.addr);
                    break Err(fail(StatusCode::BAD_GATEWAY, reason, &labels));
                }
            };
            if let (Some(host), Some(preq)) = (&plugins, plugin_req.as_ref().filter(|r| r.has(ON_RESPONSE))) {
                if let Err(answer) = Box::pin(hooks::on_response(host, preq, &mut resp, &labels)).await {
                    break Err(answer);
                }
            }
            let status = resp.status();
            // A tunnel is one request: policy saw its head, and the upstream
            // must switch to exactly what the client asked for.
            if status == StatusCode::SWITCHING_PROTOCOLS
                && !asked_upgrade
                    .as_ref()
                    .is_some_and(|a| upgrade_agrees(a, resp.headers()))
            {
                pending.abandon();
                break Err(fail(
                    StatusCode::BAD_GATEWAY,
                    "unexpected 101 from upstream",
                    &labels,
                ));
            }
            // A status no client can take (RFC 9110, 15: three digits, 1xx-5xx).
            if status.as_u16() > 599 {
                pending.abandon();
                endpoint.record_failure();
                break Err(fail(
                    StatusCode::BAD_GATEWAY,
                    "invalid status from upstream",
                    &labels,
                ));
            }
            let log = match (&plugins, plugin_req.take().filter(|r| r.has(ON_LOG))) {
                (Some(host), Some(preq)) => Some((
                    host.clone(),
                    preq,
                    LogSummary {
                        method: template.method.to_string(),
                        path: template.path.to_string(),
                        authority: text(&template.authority).to_string(),
                        route: route.name.to_string(),
                        service: service.name.to_string(),
                        endpoint: endpoint.addr.to_string(),
                        zone: endpoint.zone.to_string(),
                        retried: attempt > 0,
                        identity: conn.tls.identity().map(str::to_string),
                        ..Default::default()
                    },
                )),
                _ => None,
            };
            let obs = Observation::new(
                pending,
                endpoint.clone(),
                started,
                shared.clone(),
                labels,
                status.as_u16(),
                grpc_status(resp.headers()),
            )
            .with_log(log);
            if let Some(ops) = &route.filters.response_headers {
                ops.apply(resp.headers_mut());
            }
            if status == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(client_upgrade) = client_upgrade {
                    let upstream_upgrade = hyper::upgrade::on(&mut resp);
                    tokio::spawn(splice_upgrade(client_upgrade, upstream_upgrade));
                }
                drop(obs);
                strip_hop_by_hop(resp.headers_mut(), true);
                break Ok(resp.map(|_| super::full(bytes::Bytes::new())));
            }
            strip_hop_by_hop(resp.headers_mut(), false);
            break Ok(resp.map(|body| ObservedBody::new(body, obs, deadline, reusable).boxed_unsync()));
        };
        dispatched.map_err(|failure| {
            let said = Said {
                method: &template.method,
                path: template.path.as_str(),
                authority: &template.authority,
                route: Some(route),
                service: Some(&service.name),
                retried: attempt > 0,
            };
            logged(failure.counted(), conn, plugin_req.take(), said)
        })
    }
}

async fn splice_upgrade(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(Request<RequestBody>, Arc<ConnContext>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A request's whole state is copied when hyper stores it (HTTP/1.1) or
    /// spawns it (one task per HTTP/2 stream); rare paths (connecting, plugin
    /// hooks) are boxed so they do not make every request's state bigger.
    /// Was 3.8 KB until the hot senders stopped being `async fn`s (which keep
    /// two copies of a by-value request), short-lived locals were scoped and
    /// the failure answer became a `map` instead of a wrapping future.
    #[test]
    fn per_request_state_stays_small() {
        let size = future_size(handle);
        assert!(size <= 1664, "the per-request future grew to {size} bytes");
    }
}
