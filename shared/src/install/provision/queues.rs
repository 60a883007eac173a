//! Step `queues`: the tenant's two Cloud Tasks queues (product.md §5.4), their names reserved for
//! the tenant before they are created.

use super::Run;
use crate::install::failure::StepFailure;
use crate::queue::{QueueName, QueueSettings, TenantQueues};

/// Reserves both queue names for the tenant, then ensures both queues; their names.
pub(super) async fn ensure(run: &Run<'_>) -> Result<Vec<QueueName>, StepFailure> {
    let queues =
        TenantQueues::of(run.tenant, &run.record.settings).map_err(StepFailure::QueueSettings)?;
    reserve(run.app.store.as_ref(), run.tenant, &queues).await?;
    let mut names = Vec::new();
    for name in queues.both() {
        let direction = name
            .direction()
            .expect("tenant queue names end with their direction");
        run.app
            .queue
            .ensure_queue(name, &QueueSettings::for_direction(direction))
            .await?;
        names.push(name.clone());
    }
    Ok(names)
}

/// Reserves the names for `tenant`; a name another tenant holds is [`StepFailure::QueueTaken`].
pub(crate) async fn reserve(
    store: &dyn crate::store::Store,
    tenant: &crate::domain::TenantId,
    queues: &TenantQueues,
) -> Result<(), StepFailure> {
    for name in queues.both() {
        let owner = store.reserve_queue_name(name, tenant).await?;
        if &owner != tenant {
            return Err(StepFailure::QueueTaken {
                name: name.clone(),
                owner,
            });
        }
    }
    Ok(())
}
