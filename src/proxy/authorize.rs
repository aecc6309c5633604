//! Stage 1, authorize: the request target is well formed (RFC 9112, 3.2)
//! and the caller's identity header is this proxy's to set. `allow`, the
//! inbound policy's decision, runs in stage 2 once the route is known, as
//! rules may protect routes.

use super::answer::{fail, Failure};
use super::ctx::{authority_of, RequestCtx, Said};
use super::observe::logged;
use crate::conn::ConnContext;
use crate::policy::{Asked, Decision};
use crate::proto::RequestBody;
use crate::route::Route;
use http::{Request, StatusCode};

/// Header carrying the caller's verified identity to the application.
pub static CLIENT_ID_HEADER: http::HeaderName = http::HeaderName::from_static("meshcore-client-id");

pub(super) fn authorize(req: &mut Request<RequestBody>, ctx: &mut RequestCtx) -> Result<(), Failure> {
    let conn = &*ctx.conn;
    if let Err((status, reason)) = crate::proto::target::check(req) {
        let refusal = fail(status, reason, &ctx.labels);
        return Err(logged(refusal, conn, None, Said::of(req, &ctx.authority, None)));
    }
    let authority = authority_of(req);
    ctx.labels.authority = authority.clone();
    ctx.authority = authority;
    // Only this proxy may say who the caller is, or a gateway it trusts (then the header
    // names the caller behind the gateway, and what policy checks is what the app gets).
    let named_by_gateway = match conn.via_gateway {
        true => match names_caller_behind_gateway(req, conn) {
            Ok(named) => named,
            Err(reason) => {
                let refused = fail(StatusCode::FORBIDDEN, reason, &ctx.labels);
                return Err(logged(refused, conn, None, Said::of(req, &ctx.authority, None)));
            }
        },
        false => false,
    };
    if !named_by_gateway {
        match &conn.client_id {
            Some(id) => req.headers_mut().insert(&CLIENT_ID_HEADER, id.clone()),
            None => req.headers_mut().remove(&CLIENT_ID_HEADER),
        };
    }
    Ok(())
}

/// Whether the inbound policy lets the caller make the request, which
/// routing found on `route` (a listener route of the request's listener).
pub(super) fn allow(
    req: &Request<RequestBody>,
    ctx: &RequestCtx,
    route: Option<&Route>,
) -> Result<(), Failure> {
    let conn = &*ctx.conn;
    if !conn.inbound {
        return Ok(());
    }
    // Through a trusted gateway, the caller it named (checked by `authorize`), else the gateway.
    let named = match conn.via_gateway {
        true => req.headers().get(&CLIENT_ID_HEADER).and_then(|v| v.to_str().ok()),
        false => None,
    };
    let caller = named.or(conn.tls.identity());
    let asked = Asked {
        path: req.uri().path(),
        method: req.method(),
        route: route.map(|r| &*r.name),
    };
    let decision = (ctx.table.policy).decide(&conn.listener_name, conn.peer.ip(), caller, Some(asked));
    conn.shared.metrics.authorization(&conn.listener_name, &decision);
    match decision {
        Decision::Allow(_) => Ok(()),
        Decision::Audit => {
            eprintln!(
                "meshcore: audit: {} {} from {} ({}) would be denied",
                req.method(),
                req.uri().path(),
                conn.peer,
                caller.unwrap_or("no identity")
            );
            Ok(())
        }
        Decision::Deny(_) => {
            let denied = fail(StatusCode::FORBIDDEN, "unauthorized", &ctx.labels);
            Err(logged(denied, conn, None, Said::of(req, &ctx.authority, route)))
        }
    }
}

/// Whether a trusted gateway names a caller in `meshcore-client-id` (false: the gateway calls
/// for itself); an error when the name is not a SPIFFE ID of a trust domain this proxy
/// accepts (a gateway may not vouch for outsiders).
fn names_caller_behind_gateway(req: &Request<RequestBody>, conn: &ConnContext) -> Result<bool, &'static str> {
    let mut named = req.headers().get_all(&CLIENT_ID_HEADER).iter();
    let (Some(value), None) = (named.next(), named.next()) else {
        return match req.headers().contains_key(&CLIENT_ID_HEADER) {
            true => Err("more than one caller named through the gateway"),
            false => Ok(false),
        };
    };
    let id = value
        .to_str()
        .map_err(|_| "a caller named through the gateway is not text")?;
    let domain = id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(domain, path)| !domain.is_empty() && !path.is_empty())
        .map(|(domain, _)| domain)
        .ok_or("a caller named through the gateway is not a SPIFFE ID")?;
    let accepted = conn.shared.identity.as_ref().map(|i| i.trust_domains());
    if !accepted.is_some_and(|domains| domains.iter().any(|d| d == domain)) {
        return Err("a caller named through the gateway is of a trust domain not accepted here");
    }
    Ok(true)
}
