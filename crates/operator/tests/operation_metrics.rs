//! The operation catalog and the telemetry labels agree. The telemetry crate maps
//! through strings by design (it depends on neither the API types nor the catalog), so
//! this is where a drift between the two vocabularies is caught: `main` refuses to start
//! on a catalog pair the metrics cannot label, and these tests fail first. No cluster.

use prometheus_client::registry::Registry;
use vworkspace_api::operation::{Engine, OperationType};
use vworkspace_reconcile::catalog;
use vworkspace_telemetry::metrics::{self as telemetry, OperationMetrics};

#[test]
fn every_api_type_and_engine_is_a_metric_label_with_the_same_spelling() {
    for ty in OperationType::ALL {
        let label: telemetry::OperationType = ty.as_str().parse().expect("a type label");
        assert_eq!(label.as_str(), ty.as_str());
    }
    for engine in Engine::ALL {
        let label: telemetry::Engine = engine.as_str().parse().expect("an engine label");
        assert_eq!(label.as_str(), engine.as_str());
    }
    assert_eq!(
        telemetry::OperationType::ALL.len(),
        OperationType::ALL.len()
    );
    assert_eq!(telemetry::Engine::ALL.len(), Engine::ALL.len());
}

#[test]
fn the_catalog_pairs_give_36_zero_series() {
    // The mapping `main` does.
    let kinds: Vec<(telemetry::OperationType, telemetry::Engine)> = catalog::builtin()
        .kinds()
        .map(|(ty, engine)| {
            (
                ty.as_str().parse().expect("a type label"),
                engine.as_str().parse().expect("an engine label"),
            )
        })
        .collect();
    assert_eq!(kinds.len(), 9);

    let mut registry = Registry::default();
    OperationMetrics::register(&mut registry, kinds);
    let text = telemetry::encode(&registry);
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("vworkspace_operator_operation_total{"))
        .collect();
    assert_eq!(series.len(), 36, "{text}");
    assert!(series.iter().all(|l| l.ends_with("} 0")), "{text}");
    for template in catalog::builtin().templates() {
        let line = format!(
            "vworkspace_operator_operation_total{{engine=\"{}\",outcome=\"blocked\",type=\"{}\"}} 0",
            template.engine(),
            template.operation_type()
        );
        assert!(series.contains(&line.as_str()), "{line} missing in\n{text}");
    }
}
