//! `meshcore policy explain`: the proxy's own authorization, asked without
//! starting a proxy, so that the answer is the one the proxy would give.

use super::errors::ConfigError;
use super::guarded;
use crate::policy::{Asked, Policy};
use crate::route::{Route, Routes};
use crate::{config, proto::target};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::net::IpAddr;

/// How the policy (`to_core()["policy"]`, as JSON) decides a request on
/// `listener` from `peer`, with the caller's `identity` if any; without a
/// `path`, an opaque connection. The request's route is found among
/// `routes_json` (`to_core()["routes"]`) by `host`, path and `headers`, as
/// the proxy finds it. JSON: the decision, its rule label, the route, what
/// protects the request, the rules tried, and the path as policy saw it.
#[pyfunction]
#[pyo3(signature = (policy_json, listener, peer, identity=None, path=None, method="GET", routes_json="[]", host="", headers=Vec::new()))]
#[allow(clippy::too_many_arguments)]
pub fn explain_policy(
    policy_json: &str,
    listener: &str,
    peer: &str,
    identity: Option<&str>,
    path: Option<&str>,
    method: &str,
    routes_json: &str,
    host: &str,
    headers: Vec<(String, String)>,
) -> PyResult<String> {
    guarded(|| {
        let settings: config::Policy =
            serde_json::from_str(policy_json).map_err(|e| ConfigError::new_err(format!("policy: {e}")))?;
        let policy = Policy::new(&settings).map_err(ConfigError::new_err)?;
        let peer: IpAddr = peer
            .parse()
            .map_err(|_| PyValueError::new_err(format!("{peer:?} is not an IP address")))?;
        let method = http::Method::from_bytes(method.as_bytes())
            .map_err(|_| PyValueError::new_err(format!("{method:?} is not a request method")))?;
        // The proxy decides on the normalised path, which is also what the app gets.
        let path = match path.map(target::normalize) {
            None => None,
            Some(Ok(normal)) => Some(normal.unwrap_or_else(|| path.unwrap_or("/").to_owned())),
            Some(Err((status, why))) => {
                let refused = serde_json::json!({
                    "decision": "refused",
                    "status": status.as_u16(),
                    "reason": why,
                });
                return Ok(refused.to_string());
            }
        };
        let route = match &path {
            Some(path) => route_of(routes_json, listener, host, path, &headers)?,
            None => None,
        };
        let asked = path.as_deref().map(|path| Asked {
            path,
            method: &method,
            route: route.as_deref(),
        });
        let explanation = policy.explain(listener, peer, identity, asked);
        let mut out = serde_json::to_value(&explanation).expect("an explanation serializes");
        out["path"] = path.into();
        out["route"] = route.into();
        Ok(out.to_string())
    })
}

/// The name of the listener's route a request matches, by the proxy's own matcher.
fn route_of(
    routes_json: &str,
    listener: &str,
    host: &str,
    path: &str,
    headers: &[(String, String)],
) -> PyResult<Option<String>> {
    let settings: Vec<config::Route> =
        serde_json::from_str(routes_json).map_err(|e| ConfigError::new_err(format!("routes: {e}")))?;
    // Matching needs no service, so every backend resolves to a placeholder.
    let routes = (settings.iter().enumerate())
        .filter(|(_, r)| r.listener == listener)
        .map(|(i, r)| Route::new(i, r, |_| Some(0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ConfigError::new_err)?;
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        let bad = || PyValueError::new_err(format!("header {name}: {value:?} is not a valid header"));
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let value = http::HeaderValue::from_str(value).map_err(|_| bad())?;
        map.append(name, value);
    }
    let routes_of_listener = Routes::new(routes);
    let found = routes_of_listener.find(crate::route::host_of(host), path, &map);
    Ok(found.map(|i| routes_of_listener.as_slice()[i].name.to_string()))
}
