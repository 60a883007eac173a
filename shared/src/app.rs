//! The state every handler receives: configuration plus the store and queue backends it selects.

use std::sync::Arc;

use crate::config::Config;
use crate::queue::Queue;
use crate::store::Store;

/// Shared application state, cheap to clone behind an [`Arc`].
pub struct App {
    /// The configuration read at start.
    pub config: Config,
    /// Tenant and install state.
    pub store: Arc<dyn Store>,
    /// Task queues.
    pub queue: Arc<dyn Queue>,
}

impl App {
    /// State over explicit backends (tests and the local stack choose their own).
    pub fn new(config: Config, store: Arc<dyn Store>, queue: Arc<dyn Queue>) -> Arc<Self> {
        Arc::new(Self {
            config,
            store,
            queue,
        })
    }
}
