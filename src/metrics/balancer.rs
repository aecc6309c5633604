//! Balancer gauges, per service: read from the live routing table at
//! scrape time (`Table::balancer_gauges`) rather than counted.

use super::text::{header, sample, Kind, Labels};
use crate::balance::Standing;
use std::sync::Arc;

/// One service's balancer, as it stands at the scrape.
pub struct BalancerGauges {
    pub service: Arc<str>,
    pub active_tiers: usize,
    /// In-flight requests per active endpoint.
    pub load: f64,
    pub panic: bool,
    /// Endpoints per state, in the order of `ENDPOINT_STATES`.
    pub endpoints: [usize; 3],
}

pub const ENDPOINT_STATES: [Standing; 3] = [Standing::Active, Standing::Standby, Standing::Tripped];

pub(super) fn render(out: &mut String, services: &[BalancerGauges]) {
    let service = |s: &BalancerGauges| Labels::new().with("dst_service", &s.service);
    header(
        out,
        "balancer_active_tiers",
        Kind::Gauge,
        "Cost tiers in use by a service's balancer.",
    );
    for s in services {
        sample(out, "balancer_active_tiers", &service(s), s.active_tiers);
    }
    header(
        out,
        "balancer_load",
        Kind::Gauge,
        "In-flight requests per active endpoint, as last seen by the balancer.",
    );
    for s in services {
        sample(out, "balancer_load", &service(s), s.load);
    }
    header(
        out,
        "balancer_panic",
        Kind::Gauge,
        "1 while too few endpoints are available and the balancer uses all of them.",
    );
    for s in services {
        sample(out, "balancer_panic", &service(s), u8::from(s.panic));
    }
    header(
        out,
        "balancer_endpoints",
        Kind::Gauge,
        "Endpoints per state (active, standby, tripped).",
    );
    for s in services {
        for (state, n) in ENDPOINT_STATES.iter().zip(s.endpoints) {
            sample(
                out,
                "balancer_endpoints",
                &service(s).with("state", state.as_str()),
                n,
            );
        }
    }
}
