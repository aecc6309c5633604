//! Stage 3, plugins: runs the route's `on_request` hooks (which may answer,
//! edit the request or choose a service), and applies what the later hooks
//! (`on_upstream_request`, `on_response`) change to the messages in flight.
//! (`crate::plugin` talks to Python; this module only edits HTTP messages.)

use super::answer::{fail, local, Failure, Report};
use super::ctx::{text, RequestCtx, Said};
use super::observe::logged;
use super::template::Template;
use crate::balance::Endpoint;
use crate::message::{error_response, full, ProxyBody};
use crate::metrics::RequestLabels;
use crate::plugin::{Change, HeaderList, PluginHost, PluginRequest, RequestFacts};
use crate::proto::RequestBody;
use crate::route::Route;
use crate::upstream::UpstreamBody;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use std::sync::Arc;

/// The plugins a routed request runs with: none unless its route has plugins
/// and some are loaded.
pub(super) struct Hooked {
    pub host: Option<Arc<PluginHost>>,
    pub req: Option<PluginRequest>,
}

impl Hooked {
    pub fn none() -> Self {
        Hooked {
            host: None,
            req: None,
        }
    }
}

/// `on_request` for a request (with the service it goes to) on a route with plugins: the hooks may answer it,
/// edit it, or choose another of the table's services.
pub(super) async fn run_on_request(
    req: &mut Request<RequestBody>,
    ctx: &RequestCtx,
    route: &Route,
    service: Option<usize>,
) -> Result<(Hooked, Option<usize>), Failure> {
    let table = &ctx.table;
    let host = if route.plugins {
        ctx.conn.shared.plugins.load_full()
    } else {
        None
    };
    let Some(host) = host else {
        return Ok((Hooked::none(), service));
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    let method = req.method().clone();
    let facts = RequestFacts {
        route: &route.name,
        method: method.as_str(),
        path: &path,
        authority: text(&ctx.authority),
        headers: header_list(req.headers()),
        peer: ctx.conn.peer.to_string(),
        identity: ctx.conn.tls.identity(),
        service: service.map(|i| &*table.services[i].name),
    };
    let (preq, chosen) = on_request(&host, facts, req, &ctx.labels)
        .await
        .map_err(|f| logged(f, &ctx.conn, None, Said::of(req, &ctx.authority, Some(route))))?;
    let service = match chosen {
        None => service,
        Some(name) => match table.services.iter().position(|s| *s.name == name) {
            Some(found) => Some(found),
            None => {
                let failed = plugin_failed(&format!("plugin chose unknown service {name:?}"), &ctx.labels);
                let said = Said::of(req, &ctx.authority, Some(route));
                return Err(logged(failed, &ctx.conn, Some(preq), said));
            }
        },
    };
    let hooked = Hooked {
        host: Some(host),
        req: Some(preq),
    };
    Ok((hooked, service))
}

/// What `on_request` decided, applied to `req`; `Ok(Some(name))` when a plugin chose a service.
async fn on_request(
    host: &std::sync::Arc<PluginHost>,
    facts: RequestFacts<'_>,
    req: &mut Request<RequestBody>,
    labels: &RequestLabels,
) -> Result<(PluginRequest, Option<String>), Failure> {
    let (preq, change) = host
        .on_request(facts)
        .await
        .map_err(|e| plugin_failed(&e, labels))?;
    match change {
        Change::Respond {
            status,
            headers,
            body,
        } => {
            // The request a hook answered keeps its `ctx` for `on_log`.
            let mut answered = local(plugin_response(status, headers, body), labels);
            answered.log = Some(Box::new(Report {
                summary: Default::default(),
                span: None,
                plugin: Some((host.clone(), Some(preq))),
            }));
            Err(answered)
        }
        Change::Request {
            path,
            headers,
            service,
        } => {
            *req.uri_mut() = path
                .parse::<PathAndQuery>()
                .map(Uri::from)
                .map_err(|_| plugin_failed("plugin set an invalid path", labels))?;
            if let Some(list) = headers {
                *req.headers_mut() = header_map(list).map_err(|e| plugin_failed(&e, labels))?;
            }
            Ok((preq, service))
        }
        Change::Nothing | Change::Response { .. } => Ok((preq, None)),
    }
}

/// `on_upstream_request` for one attempt: `Ok(Some(t))` when the hooks edited the request.
pub(super) async fn on_upstream_request(
    host: &PluginHost,
    preq: &PluginRequest,
    endpoint: &Endpoint,
    template: &Template,
    labels: &RequestLabels,
) -> Result<Option<Template>, Failure> {
    let change = host
        .on_upstream_request(preq, endpoint.addr.to_string(), &endpoint.zone)
        .await
        .map_err(|e| plugin_failed(&e, labels))?;
    match change {
        Change::Respond {
            status,
            headers,
            body,
        } => Err(local(plugin_response(status, headers, body), labels)),
        Change::Request { path, headers, .. } => {
            let mut edited = template.clone();
            edited.path = path
                .parse()
                .map_err(|_| plugin_failed("plugin set an invalid path", labels))?;
            if let Some(list) = headers {
                edited.headers = header_map(list).map_err(|e| plugin_failed(&e, labels))?;
            }
            Ok(Some(edited))
        }
        Change::Nothing | Change::Response { .. } => Ok(None),
    }
}

/// `on_response`, applied to the upstream's response head.
pub(super) async fn on_response(
    host: &PluginHost,
    preq: &PluginRequest,
    resp: &mut Response<UpstreamBody>,
    labels: &RequestLabels,
) -> Result<(), Failure> {
    let change = host
        .on_response(preq, resp.status().as_u16(), header_list(resp.headers()))
        .await
        .map_err(|e| plugin_failed(&e, labels))?;
    match change {
        Change::Respond {
            status,
            headers,
            body,
        } => Err(local(plugin_response(status, headers, body), labels)),
        Change::Response { status, headers } => {
            *resp.status_mut() = StatusCode::from_u16(status)
                .map_err(|_| plugin_failed("plugin set an invalid status", labels))?;
            *resp.headers_mut() = header_map(headers).map_err(|e| plugin_failed(&e, labels))?;
            Ok(())
        }
        Change::Nothing | Change::Request { .. } => Ok(()),
    }
}

pub(super) fn plugin_failed(reason: &str, labels: &RequestLabels) -> Failure {
    eprintln!("meshcore: plugins: {reason}");
    fail(StatusCode::INTERNAL_SERVER_ERROR, "plugin error", labels)
}

pub(super) fn header_list(headers: &HeaderMap) -> HeaderList {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn header_map(list: HeaderList) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::with_capacity(list.len());
    for (k, v) in list {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("plugin set invalid header {k:?}"))?;
        let value =
            HeaderValue::from_str(&v).map_err(|_| format!("plugin set an invalid value for {k:?}"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// A response a plugin made; a bad header or status becomes a 500.
fn plugin_response(status: u16, headers: HeaderList, body: Vec<u8>) -> Response<ProxyBody> {
    let (Ok(status), Ok(headers)) = (StatusCode::from_u16(status), header_map(headers)) else {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "plugin error");
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}
