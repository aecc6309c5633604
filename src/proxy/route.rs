//! Stage 2, route: finds the listener's route for the request, asks the
//! inbound policy (which may protect the route), answers the request when
//! the route does so itself (rate limit, redirect, direct response), and
//! picks the route's service.

use super::answer::{fail, local, Failure};
use super::authorize::allow;
use super::ctx::{text, RequestCtx, Said};
use super::observe::logged;
use crate::message::{error_response, full, ProxyBody};
use crate::proto::RequestBody;
use crate::route::{self, Route};
use crate::table::Table;
use crate::transparent::Destination;
use http::{HeaderValue, Request, Response, StatusCode};
use std::time::Instant;

/// Where the request goes, as indexes into the request's table; packed
/// (`NONE` for none), as it is kept in every request's state.
#[derive(Clone, Copy)]
pub(super) struct Routed {
    route: u32,
    /// NONE: the route has no backends, and a plugin must choose.
    service: u32,
    /// The endpoint the client addressed (a transparent listener's), or NONE.
    endpoint: u32,
    /// `route` indexes the table's per-service routes, not the listener's.
    to_service: bool,
}

const NONE: u32 = u32::MAX;

fn packed(index: Option<usize>) -> u32 {
    // A table holds far fewer than 2^32 - 1 routes, services and endpoints.
    index.map_or(NONE, |i| i as u32)
}

impl Routed {
    pub fn route<'t>(&self, table: &'t Table, listener: usize) -> &'t Route {
        match self.to_service {
            true => &table.service_routes[self.route as usize],
            false => &table.routes_of(listener)[self.route as usize],
        }
    }

    pub fn service(&self) -> Option<usize> {
        (self.service != NONE).then_some(self.service as usize)
    }

    pub fn endpoint(&self) -> Option<usize> {
        (self.endpoint != NONE).then_some(self.endpoint as usize)
    }
}

pub(super) fn route(req: &Request<RequestBody>, ctx: &mut RequestCtx) -> Result<Routed, Failure> {
    let listener = ctx.conn.listener;
    let host = route::host_of(text(&ctx.authority));
    let found = ctx
        .table
        .find_route(listener, host, req.uri().path(), req.headers());
    if let Some(dst) = ctx.conn.original_dst {
        if let Some(to) = ctx.table.destinations.find(dst, ctx.conn.inbound) {
            let routed = by_destination(ctx, found, to);
            let own = routed.route(&ctx.table, listener);
            // A service's own route is not the listener's: no rule can name it.
            allow(req, ctx, (!routed.to_service).then_some(own))?;
            if let Some(resp) = answers_itself(own, req, text(&ctx.authority)) {
                let said = Said::of(req, &ctx.authority, Some(own));
                return Err(logged(local(resp, &ctx.labels), &ctx.conn, None, said));
            }
            return Ok(routed);
        }
    }
    let Some(index) = found else {
        allow(req, ctx, None)?;
        let unrouted = fail(StatusCode::NOT_FOUND, "no route", &ctx.labels);
        return Err(logged(
            unrouted,
            &ctx.conn,
            None,
            Said::of(req, &ctx.authority, None),
        ));
    };
    let found = &ctx.table.routes_of(listener)[index];
    ctx.labels.route = found.name.clone();
    allow(req, ctx, Some(found))?;
    if let Some(resp) = answers_itself(found, req, text(&ctx.authority)) {
        let said = Said::of(req, &ctx.authority, Some(found));
        return Err(logged(local(resp, &ctx.labels), &ctx.conn, None, said));
    }
    Ok(Routed {
        route: index as u32,
        service: packed(found.pick_service()),
        endpoint: NONE,
        to_service: false,
    })
}

/// A transparent listener's request: its original destination chose the
/// service (or endpoint). The listener's route for it applies (timeouts,
/// retries, filters) if it may send there; else a plain route to it.
fn by_destination(ctx: &mut RequestCtx, found: Option<usize>, to: Destination) -> Routed {
    let (service, endpoint) = match to {
        Destination::Service(s) => (s, None),
        Destination::Endpoint { service, endpoint } => (service, Some(endpoint)),
    };
    let own = found.filter(|&i| ctx.table.routes_of(ctx.conn.listener)[i].sends_to(service));
    let (route, to_service) = match own {
        Some(i) => (i, false),
        None => (service, true),
    };
    let routed = Routed {
        route: route as u32,
        service: packed(Some(service)),
        endpoint: packed(endpoint),
        to_service,
    };
    ctx.labels.route = routed.route(&ctx.table, ctx.conn.listener).name.clone();
    routed
}

/// Rate limit, redirect and direct response: answered without an upstream.
fn answers_itself(route: &Route, req: &Request<RequestBody>, authority: &str) -> Option<Response<ProxyBody>> {
    let filters = &route.filters;
    if let Some(limit) = &filters.rate_limit {
        if let Err(wait) = limit.try_acquire(Instant::now()) {
            let mut resp = error_response(StatusCode::TOO_MANY_REQUESTS, "rate limited");
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
            return Some(resp);
        }
    }
    if let Some(redirect) = &filters.redirect {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut resp = Response::new(full(bytes::Bytes::new()));
        *resp.status_mut() = redirect.status;
        if let Ok(location) = HeaderValue::from_str(&redirect.location(authority, path)) {
            resp.headers_mut().insert(http::header::LOCATION, location);
        }
        return Some(resp);
    }
    if let Some(direct) = &filters.direct {
        let mut resp = Response::new(full(direct.body.clone()));
        *resp.status_mut() = direct.status;
        for (k, v) in &direct.headers {
            resp.headers_mut().append(k.clone(), v.clone());
        }
        return Some(resp);
    }
    None
}
