//! Stage 1, authorize: the request target is well formed (RFC 9112, 3.2),
//! the caller's identity header is this proxy's to set, and the inbound
//! policy allows the caller. Route-scoped policy lands here.

use super::answer::{fail, Failure};
use super::ctx::{authority_of, RequestCtx, Said};
use super::observe::logged;
use crate::policy::Decision;
use crate::proto::RequestBody;
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
    // Only this proxy may say who the caller is.
    match &conn.client_id {
        Some(id) => req.headers_mut().insert(&CLIENT_ID_HEADER, id.clone()),
        None => req.headers_mut().remove(&CLIENT_ID_HEADER),
    };
    if !conn.inbound {
        return Ok(());
    }
    let decision = ctx.table.policy.decide(
        &conn.listener_name,
        conn.peer.ip(),
        conn.tls.identity(),
        Some(req.uri().path()),
    );
    conn.shared.metrics.authorization(&conn.listener_name, &decision);
    match decision {
        Decision::Allow(_) => Ok(()),
        Decision::Audit => {
            eprintln!(
                "meshcore: audit: {} {} from {} ({}) would be denied",
                req.method(),
                req.uri().path(),
                conn.peer,
                conn.tls.identity().unwrap_or("no identity")
            );
            Ok(())
        }
        Decision::Deny(_) => {
            let denied = fail(StatusCode::FORBIDDEN, "unauthorized", &ctx.labels);
            Err(logged(denied, conn, None, Said::of(req, &ctx.authority, None)))
        }
    }
}
