//! Stages 3 and 4 in the request's future: the route's plugins (see
//! `plugins`), then dispatch. Dispatch shapes the request for its upstream (route filters,
//! prefix rewrite, hop-by-hop headers), chooses the wire protocol, then sends
//! it, retrying as the route's resilience policy allows: each attempt picks
//! an endpoint, runs `on_upstream_request`, sends under the attempt's
//! deadline, and runs `on_response`. The chosen response goes back through
//! `observe`.

use super::answer::{fail, Failure, Report};
use super::ctx::{RequestCtx, Said};
use super::observe::{grpc_status, logged, summary_of, Observation, ObservedBody};
use super::plugins::{self, Hooked};
use super::route::Routed;
use super::template::{build_request, Template};
use crate::balance::NoPick;
use crate::config::UpstreamProtocol;
use crate::conn::ConnContext;
use crate::message::headers::{is_upgrade, strip_hop_by_hop, upgrade_agrees};
use crate::message::{BoxError, ProxyBody};
use crate::metrics::RouteLabels;
use crate::plugin::{ON_LOG, ON_RESPONSE, ON_UPSTREAM_REQUEST};
use crate::proto::RequestBody;
use crate::resilience::replay::Replay;
use crate::resilience::retry::{Next, Outcome, MAX_REPLAY_BYTES};
use crate::resilience::timeout::{attempt_deadline, request_deadline};
use crate::time::deadline::{with_deadline, Elapsed};
use crate::upstream::{Reusable, UpstreamBody, UpstreamError, Wire};
use http::header::UPGRADE;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

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

/// What one attempt's failure means to the retry conditions.
fn outcome_of(result: &Result<(Response<UpstreamBody>, Option<Reusable>), UpstreamError>) -> Outcome {
    match result {
        Ok((resp, _)) => Outcome::Status(resp.status().as_u16(), grpc_status(resp.headers())),
        Err(
            UpstreamError::Connect(_)
            | UpstreamError::ConnectTimeout
            | UpstreamError::Tls(_)
            | UpstreamError::NotHttp2,
        ) => Outcome::ConnectFailure,
        Err(UpstreamError::Http(_) | UpstreamError::Io(_) | UpstreamError::Protocol(_)) => Outcome::Reset,
    }
}

/// Sends the request to `service`. Built from an `async move` block, not an
/// `async fn`, so that the request is kept once in its state (see `handle`).
#[allow(clippy::manual_async_fn)]
pub(super) fn dispatch(
    mut req: Request<RequestBody>,
    mut ctx: RequestCtx,
    routed: Routed,
) -> impl Future<Output = Result<Response<ProxyBody>, Failure>> {
    // The arguments are used in place, not unpacked: what an `async` block
    // captures stays in its state for good, and a copy would double it.
    async move {
        let route = routed.route(&ctx.table, ctx.conn.listener);
        // Boxed: the hooks' state is large, and most requests have none.
        let (mut hooked, service) = if route.plugins {
            Box::pin(plugins::run_on_request(&mut req, &ctx, route, routed.service())).await?
        } else {
            (Hooked::none(), routed.service())
        };
        let Some(service) = service.map(|i| &ctx.table.services[i]) else {
            let unserved = fail(StatusCode::SERVICE_UNAVAILABLE, "no backends", &ctx.labels);
            let said = Said::of(&req, &ctx.authority, Some(route));
            return Err(logged(unserved, &ctx.conn, hooked.req, said));
        };
        let shared = &ctx.conn.shared;
        // Used in place (`ctx.labels`, `hooked.req`), not through local
        // references: each would be one more word in the request's state.
        ctx.labels.dst_service = service.name.clone();
        let deadline = request_deadline(route.timeout, ctx.started);

        let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
        let carried_http1 = arrived_as_http1(&mut req, &ctx.conn);
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
        let (mut template, body, mut report) = {
            let (mut parts, body) = req.into_parts();
            strip_hop_by_hop(&mut parts.headers, upgrade);
            if let Some(ops) = &route.filters.request_headers {
                ops.apply(&mut parts.headers);
            }
            // The request's trace: the context its upstream gets names the proxy's span.
            let tracer = shared.telemetry.tracer();
            let span = tracer.and_then(|t| t.begin(&mut parts.headers, ctx.conn.inbound));
            let mut path = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            if let Some(replacement) = &route.filters.rewrite_prefix {
                let rewritten =
                    crate::filters::rewrite_prefix(path.as_str(), route.path_prefix(), replacement);
                let Ok(parsed) = rewritten.parse() else {
                    let invalid = fail(StatusCode::BAD_REQUEST, "invalid rewritten path", &ctx.labels);
                    let said = Said {
                        version: parts.version,
                        method: &parts.method,
                        path: path.as_str(),
                        authority: &ctx.authority,
                        route: Some(route),
                        service: Some(&service.name),
                        retried: false,
                    };
                    return Err(logged(invalid, &ctx.conn, hooked.req.take(), said));
                };
                path = parsed;
            }
            let template = Template {
                method: parts.method,
                path,
                headers: parts.headers,
                authority: ctx.authority,
            };
            // Telemetry's summary is begun here: the last attempt may take the template.
            let wanted = shared.telemetry.wants_summary() || span.is_some_and(|s| s.export);
            let report = wanted.then(|| {
                let said = Said {
                    version: parts.version,
                    ..said_of(&template, route, &service.name)
                };
                let mut summary = summary_of(&ctx.conn, &said);
                summary.trace_id = span.map(|s| s.trace_id);
                Box::new(Report {
                    summary,
                    span,
                    plugin: None,
                })
            });
            (template, body, report)
        };

        let retry = route.retry.as_ref().filter(|_| !upgrade);
        let route_labels = || RouteLabels {
            direction: ctx.conn.direction.clone(),
            route: route.name.clone(),
            dst_service: service.name.clone(),
        };
        let (replay, mut body) = match retry {
            Some(_) => (Some(Replay::new(body, MAX_REPLAY_BYTES)), None),
            None => (None, Some(body)),
        };
        if let Some(policy) = retry {
            policy.budget.deposit(ctx.started);
        }
        let proxy_zone = ctx.table.config.zone.as_deref();
        let mut exclude: Vec<usize> = Vec::new();
        let mut attempt = 0u32;
        // The request is counted at its first pick: a failure from the loop is
        // already counted, one from before it is counted by `observe`.
        let dispatched = loop {
            // A first attempt without plugin hooks is picked a microsecond or so
            // after arrival: that clock read serves for the balancer too.
            let now = if attempt == 0 && hooked.host.is_none() {
                ctx.started
            } else {
                Instant::now()
            };
            // The endpoint the client addressed, unless a plugin chose another service.
            let addressed = routed.endpoint().filter(|_| {
                routed
                    .service()
                    .is_some_and(|s| Arc::ptr_eq(&ctx.table.services[s], service))
            });
            let picked = match addressed {
                Some(addressed) => Ok(addressed),
                None => service.balancer.pick_at(now, &exclude),
            };
            let index = match picked {
                Ok(i) => i,
                Err(no) => {
                    ctx.labels.dst_zone = Arc::from(crate::config::UNKNOWN_ZONE);
                    if attempt == 0 {
                        shared.metrics.request(&ctx.labels);
                    }
                    let reason = match no {
                        NoPick::NoEndpoints => "no endpoints",
                        NoPick::AllTripped => "all endpoints unavailable",
                    };
                    break Err(fail(StatusCode::SERVICE_UNAVAILABLE, reason, &ctx.labels));
                }
            };
            let endpoint = &service.balancer.endpoints()[index];
            ctx.labels.dst_zone = endpoint.zone.clone();
            ctx.labels.cross_zone = proxy_zone.is_some_and(|z| z != &*endpoint.zone);
            if attempt == 0 {
                shared.metrics.request(&ctx.labels);
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
                    &hooked.host,
                    hooked.req.as_ref().filter(|r| r.has(ON_UPSTREAM_REQUEST)),
                ) {
                    (Some(host), Some(preq)) => {
                        let hooked =
                            plugins::on_upstream_request(host, preq, endpoint, &template, &ctx.labels);
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
                    None if last_attempt && hooked.host.is_none() => build_request(
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
                    Err(reason) => break Err(fail(StatusCode::BAD_REQUEST, reason, &ctx.labels)),
                }
            };

            let mut pending = endpoint.start_at(now);
            let send = pool.send(upstream_req, wire);
            let result = match with_deadline(send, attempt_deadline(route.response_timeout, deadline)).await {
                Ok(r) => r,
                Err(Elapsed) => {
                    // Timeouts are never retried: the time is already spent.
                    pending.abandon();
                    endpoint.record_failure();
                    break Err(fail(StatusCode::GATEWAY_TIMEOUT, "upstream timeout", &ctx.labels));
                }
            };
            if let Err(UpstreamError::Http(e)) = &result {
                if e.is_user() {
                    // The client's own request body failed (it went away mid-upload):
                    // not the endpoint's fault, and nothing to retry.
                    pending.abandon();
                    break Err(fail(StatusCode::BAD_REQUEST, "request body error", &ctx.labels));
                }
            }
            if matches!(
                result,
                Err(UpstreamError::Connect(_) | UpstreamError::ConnectTimeout | UpstreamError::Tls(_))
            ) {
                pending.unreachable();
            }
            if let Some(policy) = retry {
                let replayable = replay.as_ref().is_some_and(Replay::replayable);
                match policy.next(attempt, || outcome_of(&result), replayable) {
                    Next::Retry => {
                        pending.abandon();
                        endpoint.record_failure();
                        shared.metrics.retry(&route_labels());
                        attempt += 1;
                        exclude.push(index);
                        continue;
                    }
                    Next::BudgetExhausted => shared.metrics.retry_budget_exhausted(&route_labels()),
                    Next::Done => {}
                }
            }
            let (mut resp, reusable) = match result {
                Ok(sent) => sent,
                Err(e) => {
                    pending.abandon();
                    endpoint.record_failure();
                    let reason = e.to_string();
                    crate::throttled!("{} -> {}: {reason}", service.name, endpoint.addr);
                    break Err(fail(StatusCode::BAD_GATEWAY, reason, &ctx.labels));
                }
            };
            if let (Some(host), Some(preq)) =
                (&hooked.host, hooked.req.as_ref().filter(|r| r.has(ON_RESPONSE)))
            {
                if let Err(answer) = Box::pin(plugins::on_response(host, preq, &mut resp, &ctx.labels)).await
                {
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
                    &ctx.labels,
                ));
            }
            // A status no client can take (RFC 9110, 15: three digits, 1xx-5xx).
            if status.as_u16() > 599 {
                pending.abandon();
                endpoint.record_failure();
                break Err(fail(
                    StatusCode::BAD_GATEWAY,
                    "invalid status from upstream",
                    &ctx.labels,
                ));
            }
            let plugin = match (&hooked.host, hooked.req.take().filter(|r| r.has(ON_LOG))) {
                (Some(host), Some(preq)) => Some((host.clone(), Some(preq))),
                _ => None,
            };
            let log = match (report.take(), plugin) {
                (Some(mut early), plugin) => {
                    early.plugin = plugin;
                    Some(early)
                }
                // With a plugin host, the template is still whole.
                (None, Some(plugin)) => Some(Box::new(Report {
                    summary: summary_of(&ctx.conn, &said_of(&template, route, &service.name)),
                    span: None,
                    plugin: Some(plugin),
                })),
                (None, None) => None,
            }
            .map(|mut log| {
                log.summary.endpoint = Some(endpoint.addr);
                log.summary.zone = Some(endpoint.zone.clone()).filter(|z| !z.is_empty());
                log.summary.retried = attempt > 0;
                log
            });
            let obs = Observation::new(
                pending,
                endpoint.clone(),
                ctx.started,
                shared.clone(),
                ctx.labels,
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
                break Ok(resp.map(|_| crate::message::full(bytes::Bytes::new())));
            }
            strip_hop_by_hop(resp.headers_mut(), false);
            break Ok(resp.map(|body| ObservedBody::new(body, obs, deadline, reusable).boxed_unsync()));
        };
        dispatched.map_err(|failure| {
            let said = Said {
                retried: attempt > 0,
                ..said_of(&template, route, &service.name)
            };
            let mut failure = logged(failure.counted(), &ctx.conn, hooked.req.take(), said);
            // The template may have gone with the last attempt: the summary made before it stands.
            if let Some(mut early) = report.take() {
                early.summary.retried = attempt > 0;
                early.plugin = failure.log.take().and_then(|log| log.plugin);
                failure.log = Some(early);
            }
            failure
        })
    }
}

/// What a summary says of the request the template holds. Its version is
/// HTTP/1.1: only telemetry tells it, and its summary is begun from the
/// request itself.
fn said_of<'a>(template: &'a Template, route: &'a crate::route::Route, service: &'a Arc<str>) -> Said<'a> {
    Said {
        version: Version::HTTP_11,
        method: &template.method,
        path: template.path.as_str(),
        authority: &template.authority,
        route: Some(route),
        service: Some(service),
        retried: false,
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
