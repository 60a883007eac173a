//! Step `data_sources`: the six Klaviyo data sources of [`DataSourceKind`] (product.md §5.4),
//! listed first, only the missing ones created.

use std::collections::BTreeMap;

use super::Run;
use crate::access::RateClass;
use crate::domain::DataSourceKind;
use crate::install::failure::StepFailure;
use crate::klaviyo::models::{NewDataSource, Visibility};

/// Lists every data source, creates the missing ones; ids by title.
pub(super) async fn ensure(run: &Run<'_>) -> Result<BTreeMap<String, String>, StepFailure> {
    let existing = run
        .klaviyo(RateClass::DataSources, |k, t| async move {
            k.data_sources(&t).await
        })
        .await?;
    let mut ids = BTreeMap::new();
    for kind in DataSourceKind::ALL {
        let title = kind.title();
        if let Some(found) = existing.iter().find(|s| s.attributes.title == title) {
            ids.insert(title.to_owned(), found.id.clone());
            continue;
        }
        let source = NewDataSource {
            title: title.to_owned(),
            visibility: Visibility::Private,
            description: Some(kind.description().to_owned()),
        };
        let created = run
            .klaviyo(RateClass::DataSources, |k, t| {
                let source = source.clone();
                async move { k.create_data_source(&t, &source).await }
            })
            .await?;
        tracing::info!(tenant = %run.tenant, data_source = %created.id, title, "created a Klaviyo data source");
        ids.insert(title.to_owned(), created.id);
    }
    Ok(ids)
}
