//! Single-flight caches: the first caller of a key computes the value, concurrent and
//! later callers of the same key wait for it and share the result (or the error).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

type Shared<T> = Arc<OnceCell<Result<Arc<T>, String>>>;

/// Single-flight cache: the first caller of a key computes, the others wait for it.
#[derive(Debug)]
pub struct Flights<K, T> {
    cells: Mutex<HashMap<K, Shared<T>>>,
}

impl<K: Eq + Hash + Clone, T> Flights<K, T> {
    pub fn new() -> Self {
        Self {
            cells: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get<F>(&self, key: &K, compute: F) -> Result<Arc<T>, String>
    where
        F: Future<Output = Result<T, String>>,
    {
        let cell = {
            let mut cells = match self.cells.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            cells.entry(key.clone()).or_default().clone()
        };
        cell.get_or_init(|| async { compute.await.map(Arc::new) })
            .await
            .clone()
    }
}

impl<K: Eq + Hash + Clone, T> Default for Flights<K, T> {
    fn default() -> Self {
        Self::new()
    }
}
