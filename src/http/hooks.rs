//! Applying what plugin hooks changed to the request or response in flight.
//! (`crate::plugin` talks to Python; this module only edits HTTP messages.)

use super::client::UpstreamBody;
use super::local::{header_list, header_map, local, plugin_failed, plugin_response, Failure, FailureLog};
use super::template::Template;
use crate::balance::Endpoint;
use crate::metrics::RequestLabels;
use crate::plugin::{Change, PluginHost, PluginRequest, RequestFacts};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode};

/// What `on_request` decided, applied to `req`; `Ok(Some(name))` when a plugin chose a service.
pub(super) async fn on_request(
    host: &std::sync::Arc<PluginHost>,
    facts: RequestFacts<'_>,
    req: &mut Request<super::RequestBody>,
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
            answered.log = Some(Box::new(FailureLog {
                host: host.clone(),
                req: Some(preq),
                summary: Default::default(),
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
