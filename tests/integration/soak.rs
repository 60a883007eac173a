//! The short variant of `make soak` (`harness::soak`, `Plan::short`): the whole system under
//! simulator faults, paused queues, a killed worker and a concurrent backfill, then compared with
//! the oracle, on each store. The figures come from `make soak`, not from here.

use harness::soak::{self, Plan, StoreChoice};

async fn short_soak(store: StoreChoice) {
    let plan = Plan::short(store);
    let customers_per_tenant = plan.customers_per_tenant;
    let report = soak::run(plan).await.expect("the soak runs");
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    assert_eq!(report.found.duplicates, 0);
    assert_eq!(
        report.found.customers_matching, report.found.customers,
        "{report}"
    );
    assert!(report.sent.omneo_changes > 0 && report.sent.consent_changes > 0);
    assert!(report.sent.reward_calls > 0 && report.sent.metric_calls > 0);
    assert!(report.found.interactions > 0 && report.found.rewards > 0);
    let (calls, faulted) = report.calls;
    assert!(
        faulted > 0 && calls > 0,
        "faults were injected: {calls} / {faulted}"
    );
    assert!(report.retried > 0, "faults made the queue retry");
    assert_eq!(report.backfill["state"], "completed", "{}", report.backfill);
    assert_eq!(
        report.backfill["counts"]["read"],
        u64::from(customers_per_tenant),
        "{}",
        report.backfill
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_on_memory_matches_its_oracle() {
    short_soak(StoreChoice::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_on_firestore_matches_its_oracle() {
    short_soak(StoreChoice::Firestore).await;
}
