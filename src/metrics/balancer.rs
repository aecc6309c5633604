//! Balancer gauges, per service: read from the live routing table at
//! scrape time rather than counted.

use super::text::{header, sample, Kind, Labels};
use crate::balance::Standing;
use crate::table::Table;
use std::time::Instant;

pub(super) fn render(out: &mut String, table: &Table) {
    let now = Instant::now();
    let service = |s: &crate::table::Service| Labels::new().with("dst_service", &s.name);
    header(
        out,
        "balancer_active_tiers",
        Kind::Gauge,
        "Cost tiers in use by a service's balancer.",
    );
    for s in &table.services {
        let tiers = s.balancer.zonal().map_or(1, |z| z.active_tiers());
        sample(out, "balancer_active_tiers", &service(s), tiers);
    }
    header(
        out,
        "balancer_load",
        Kind::Gauge,
        "In-flight requests per active endpoint, as last seen by the balancer.",
    );
    for s in &table.services {
        let load = match s.balancer.zonal() {
            Some(z) => z.load(),
            None => {
                let eps = s.balancer.endpoints();
                eps.iter().map(|e| e.pending()).sum::<usize>() as f64 / eps.len().max(1) as f64
            }
        };
        sample(out, "balancer_load", &service(s), load);
    }
    header(
        out,
        "balancer_panic",
        Kind::Gauge,
        "1 while too few endpoints are available and the balancer uses all of them.",
    );
    for s in &table.services {
        let panic = u8::from(s.balancer.in_panic(now));
        sample(out, "balancer_panic", &service(s), panic);
    }
    header(
        out,
        "balancer_endpoints",
        Kind::Gauge,
        "Endpoints per state (active, standby, tripped).",
    );
    for s in &table.services {
        let standing = s.balancer.standing(now);
        for state in [Standing::Active, Standing::Standby, Standing::Tripped] {
            let n = standing.iter().filter(|&&x| x == state).count();
            let labels = service(s).with("state", state.as_str());
            sample(out, "balancer_endpoints", &labels, n);
        }
    }
}
