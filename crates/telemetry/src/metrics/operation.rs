//! `vworkspace_operator_operation_total{type,engine,outcome}`: Operation completions,
//! per verb and per engine.
//!
//! Invariants: the family exists from registration on, with a series at 0 for every
//! (type, engine) pair the caller passes times every [`OperationOutcome`]. The pairs come
//! from the operation catalog (`vworkspace_reconcile::catalog::builtin().kinds()`,
//! mapped to these label enums through their string spellings, which is why this crate
//! depends on neither the catalog nor the API types): the catalog is the one list of
//! pairs, and its 9 pairs × 4 outcomes = 36 series are exposed rather than the full
//! 6 × 7 × 4 product, because a pair outside the catalog (e.g. Restore × helm) can never
//! be counted and its series would only be noise. Recording a pair that was not passed
//! at registration still works; its series starts existing at its first increment.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::init_series;
use super::labels::{Engine, OperationOutcome, OperationType};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    engine: Engine,
    outcome: OperationOutcome,
    r#type: OperationType,
}

/// Handles to `vworkspace_operator_operation_total`, registered for the Operation
/// controller.
///
/// Cloning is cheap; every clone updates the same series.
#[derive(Clone, Debug)]
pub struct OperationMetrics {
    operation_total: Family<OperationLabels, Counter>,
}

impl OperationMetrics {
    /// Registers `vworkspace_operator_operation_total` into `registry`, at 0 for each of
    /// `kinds` (the catalog's distinct (type, engine) pairs; a repeated pair is
    /// harmless) times every outcome.
    pub fn register(
        registry: &mut Registry,
        kinds: impl IntoIterator<Item = (OperationType, Engine)>,
    ) -> Self {
        let metrics = OperationMetrics {
            operation_total: Family::default(),
        };
        for (r#type, engine) in kinds {
            for outcome in OperationOutcome::ALL {
                init_series(
                    &metrics.operation_total,
                    &OperationLabels {
                        r#type,
                        engine,
                        outcome: *outcome,
                    },
                );
            }
        }
        registry.register(
            "vworkspace_operator_operation",
            "Operation completions per type, engine and outcome",
            metrics.operation_total.clone(),
        );
        metrics
    }

    /// Counts one Operation reaching `outcome` (call once per transition, not per reconcile).
    pub fn record_operation(
        &self,
        r#type: OperationType,
        engine: Engine,
        outcome: OperationOutcome,
    ) {
        self.operation_total
            .get_or_create(&OperationLabels {
                r#type,
                engine,
                outcome,
            })
            .inc();
    }
}
