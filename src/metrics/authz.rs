//! Authorization families: inbound requests and connections allowed and
//! denied, by listener and the rule that decided.

use super::family::{series, snapshot};
use super::text::{header, sample, Kind, Labels};
use super::{AuthzLabels, Metrics};
use crate::policy::Decision;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

impl Metrics {
    pub fn authorization(&self, listener: &Arc<str>, decision: &Decision) {
        let (family, rule) = match decision {
            Decision::Allow(rule) => (&self.authz_allow, rule.clone()),
            Decision::Audit => (&self.authz_allow, Arc::from("default:audit")),
            Decision::Deny(rule) => (&self.authz_deny, rule.clone()),
        };
        let labels = AuthzLabels {
            listener: listener.clone(),
            rule,
        };
        series(family, &labels).fetch_add(1, Relaxed);
    }

    /// (listener, rule, allowed, count) of every decision since start.
    pub fn authorization_counts(&self) -> Vec<(AuthzLabels, bool, u64)> {
        let allowed = snapshot(&self.authz_allow).into_iter().map(|(l, v)| (l, true, v));
        let denied = snapshot(&self.authz_deny).into_iter().map(|(l, v)| (l, false, v));
        allowed
            .chain(denied)
            .map(|(l, allow, v)| (l, allow, v.load(Relaxed)))
            .collect()
    }

    pub(super) fn render_authz(&self, out: &mut String) {
        let families = [
            (
                "inbound_http_authz_allow_total",
                "Inbound requests and connections allowed.",
                &self.authz_allow,
            ),
            (
                "inbound_http_authz_deny_total",
                "Inbound requests and connections denied.",
                &self.authz_deny,
            ),
        ];
        for (name, help, family) in families {
            header(out, name, Kind::Counter, help);
            for (l, v) in snapshot(family) {
                let labels = Labels::new().with("listener", &l.listener).with("rule", &l.rule);
                sample(out, name, &labels, v.load(Relaxed));
            }
        }
    }
}
