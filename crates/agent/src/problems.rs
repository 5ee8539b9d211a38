//! What the agent skipped or set aside instead of failing: a state file moved
//! aside, a Node or Service left out of the route or service table, a pod
//! kept running on its last good spec. Each source (the node, route sync,
//! service sync, the kubelet) replaces its own list whenever it reconciles,
//! so a problem that is fixed disappears; `tapestry status` lists them under
//! PROBLEMS. Control path only: a `parking_lot` lock, never touched per
//! packet.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use tapestry_proto::Problem;

/// Who reported a problem; also its label in `tapestry status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The node's own state file.
    State,
    /// Route sync: Nodes left out of the route table.
    Routes,
    /// Service sync: Services left out of the service table.
    Services,
    /// The kubelet: pods kept on their last good spec.
    Kubelet,
    /// The liveness lease: renewals failing.
    Lease,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::State => "state",
            Source::Routes => "routes",
            Source::Services => "services",
            Source::Kubelet => "kubelet",
            Source::Lease => "lease",
        }
    }
}

/// Every source's current problems.
#[derive(Debug, Default)]
pub struct Problems {
    by_source: Mutex<BTreeMap<Source, Vec<(String, String)>>>,
}

impl Problems {
    /// Replaces `source`'s problems with `now` (`(object, reason)` pairs).
    pub fn set(&self, source: Source, now: Vec<(String, String)>) {
        self.by_source.lock().insert(source, now);
    }

    /// Adds one problem to `source`'s list.
    pub fn add(&self, source: Source, object: String, reason: String) {
        self.by_source
            .lock()
            .entry(source)
            .or_default()
            .push((object, reason));
    }

    /// Every problem, by source then as reported.
    pub fn list(&self) -> Vec<Problem> {
        self.by_source
            .lock()
            .iter()
            .flat_map(|(source, list)| {
                list.iter().map(|(object, reason)| Problem {
                    source: source.name().to_owned(),
                    object: object.clone(),
                    reason: reason.clone(),
                })
            })
            .collect()
    }
}
