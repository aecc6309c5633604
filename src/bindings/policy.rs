//! `meshcore policy explain`: the proxy's own authorization, asked without
//! starting a proxy, so that the answer is the one the proxy would give.

use super::errors::ConfigError;
use super::guarded;
use crate::{config, policy::Policy, proto::target};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::net::IpAddr;

/// How the policy (`to_core()["policy"]`, as JSON) decides a request on
/// `listener` from `peer`, with the caller's `identity` if any; without a
/// `path`, an opaque connection. JSON: the decision, its rule label, the
/// protecting prefix, the rules tried, and the path as policy saw it.
#[pyfunction]
#[pyo3(signature = (policy_json, listener, peer, identity=None, path=None, method="GET"))]
pub fn explain_policy(
    policy_json: &str,
    listener: &str,
    peer: &str,
    identity: Option<&str>,
    path: Option<&str>,
    method: &str,
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
        let explanation = policy.explain(listener, peer, identity, path.as_deref().map(|p| (p, &method)));
        let mut out = serde_json::to_value(&explanation).expect("an explanation serializes");
        out["path"] = path.into();
        Ok(out.to_string())
    })
}
