//! Load shedding for scans: a bulkhead bounding concurrent reads on this
//! replica overall and per namespace.
//!
//! Invariant: a read either holds one overall permit and one permit of its
//! namespace for its whole scan, or is refused at once — it never waits in
//! a queue where its deadline could pass. Permits are released when the
//! [`ScanPermit`] drops, on every path (completion, error, client cancel).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default bound on concurrent scans per replica.
pub const DEFAULT_MAX_SCANS: usize = 256;
/// Default bound on concurrent scans of one namespace per replica.
pub const DEFAULT_MAX_SCANS_PER_NAMESPACE: usize = 128;

/// Which bound refused a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Full {
    /// The replica-wide bound.
    Server { limit: usize },
    /// The bound of one namespace.
    Namespace { name: String, limit: usize },
    /// The adaptive limit (see `admission`).
    Adaptive { limit: usize },
    /// The share of the adaptive limit batch reads may take.
    Batch { limit: usize },
    /// A namespace's fair share of the adaptive limit while others read.
    FairShare { name: String, share: usize },
    /// The budget was spent before the read could be admitted: too little
    /// is left for the smallest page storage can answer.
    BudgetSpent { left: std::time::Duration },
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Server { limit } => write!(f, "this server already runs {limit} scans"),
            Self::Namespace { name, limit } => {
                write!(
                    f,
                    "namespace {name:?} already runs {limit} scans on this server"
                )
            }
            Self::Adaptive { limit } => {
                write!(
                    f,
                    "this server runs {limit} scans, its current adaptive limit"
                )
            }
            Self::Batch { limit } => write!(
                f,
                "batch reads may take {limit} scans of this server's adaptive limit"
            ),
            Self::FairShare { name, share } => write!(
                f,
                "namespace {name:?} holds its fair share ({share} scans) of this server's limit"
            ),
            Self::BudgetSpent { left } => write!(
                f,
                "only {left:?} of the budget was left when the read could start (waiting \
                 for a worker on a busy machine)"
            ),
        }
    }
}

/// Held for the duration of one scan.
#[derive(Debug)]
pub struct ScanPermit {
    _server: OwnedSemaphorePermit,
    _namespace: OwnedSemaphorePermit,
}

/// The two-level bound on concurrent scans.
#[derive(Debug)]
pub struct Bulkhead {
    server: Arc<Semaphore>,
    server_limit: usize,
    per_namespace: usize,
    namespaces: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Default for Bulkhead {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SCANS, DEFAULT_MAX_SCANS_PER_NAMESPACE)
    }
}

impl Bulkhead {
    /// Limits below 1 are raised to 1.
    pub fn new(max_scans: usize, max_per_namespace: usize) -> Self {
        let server_limit = max_scans.max(1);
        Self {
            server: Arc::new(Semaphore::new(server_limit)),
            server_limit,
            per_namespace: max_per_namespace.max(1),
            namespaces: Mutex::new(HashMap::new()),
        }
    }

    /// The replica-wide bound.
    pub fn limit(&self) -> usize {
        self.server_limit
    }

    /// Permits of the replica-wide bound held now.
    pub fn in_use(&self) -> usize {
        self.server_limit - self.server.available_permits()
    }

    /// A permit for one scan of `namespace`, or which bound is full.
    /// Callers pass only namespaces that exist, so the map stays bounded by
    /// the namespaces created.
    pub fn try_acquire(&self, namespace: &str) -> Result<ScanPermit, Full> {
        let ns = {
            let mut map = self.namespaces.lock().expect("bulkhead map");
            match map.get(namespace) {
                Some(s) => s.clone(),
                None => map
                    .entry(namespace.to_string())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_namespace)))
                    .clone(),
            }
        };
        let namespace_permit = ns.try_acquire_owned().map_err(|_| Full::Namespace {
            name: namespace.to_string(),
            limit: self.per_namespace,
        })?;
        let server_permit = self
            .server
            .clone()
            .try_acquire_owned()
            .map_err(|_| Full::Server {
                limit: self.server_limit,
            })?;
        Ok(ScanPermit {
            _server: server_permit,
            _namespace: namespace_permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_beyond_each_bound_and_frees_on_drop() {
        let b = Bulkhead::new(3, 2);
        let a1 = b.try_acquire("a").unwrap();
        let a2 = b.try_acquire("a").unwrap();
        assert_eq!(
            b.try_acquire("a").unwrap_err(),
            Full::Namespace {
                name: "a".into(),
                limit: 2
            }
        );
        let b1 = b.try_acquire("b").unwrap();
        assert_eq!(b.try_acquire("c").unwrap_err(), Full::Server { limit: 3 });
        drop(a1);
        let c1 = b.try_acquire("c").unwrap();
        // A namespace refusal takes no server permit.
        drop((a2, b1, c1));
        let all: Vec<_> = (0..3)
            .map(|i| b.try_acquire(&format!("n{i}")).unwrap())
            .collect();
        assert_eq!(all.len(), 3);
    }
}
