//! The simulated Flux on its own against the shared cluster: many releases at once,
//! upgrades, failures, suspend, and generations that arrive while one is in flight.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use vworkspace_testkit::env::{TestEnv, poll_until};
use vworkspace_testkit::fixtures::{apply_crds, third_party_crd_files};
use vworkspace_testkit::sim::flux::{
    FluxOptions, FluxSimulator, helm_release, helm_release_resource, helm_repository,
    helm_repository_resource,
};

const LIMIT: Duration = Duration::from_secs(60);

struct Apis {
    releases: Api<DynamicObject>,
    repositories: Api<DynamicObject>,
}

async fn setup(prefix: &str) -> Result<(TestEnv, String, Apis)> {
    let env = TestEnv::shared().await?;
    apply_crds(&env.client, &third_party_crd_files()?).await?;
    let ns = env.fresh_namespace(prefix).await?;
    let apis = Apis {
        releases: Api::namespaced_with(env.client.clone(), &ns, &helm_release_resource()),
        repositories: Api::namespaced_with(env.client.clone(), &ns, &helm_repository_resource()),
    };
    Ok((env, ns, apis))
}

fn ready(obj: &DynamicObject) -> Option<(String, String)> {
    let generation = obj.metadata.generation?;
    let status = &obj.data["status"];
    if status["observedGeneration"].as_i64() != Some(generation) {
        return None;
    }
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
    ))
}

/// Wait until `name` has its verdict for its current generation; its Ready status and
/// reason, and its history.
async fn verdict(api: &Api<DynamicObject>, name: &str) -> Result<(String, String, Vec<Value>)> {
    poll_until(LIMIT, &format!("{name} to have a verdict"), || async {
        let obj = api.get(name).await.ok()?;
        let (status, reason) = ready(&obj)?;
        let history = obj.data["status"]["history"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Some((status, reason, history))
    })
    .await
}

async fn set_version(api: &Api<DynamicObject>, name: &str, version: &str) -> Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "chart": { "spec": { "version": version } } } })),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn many_releases_at_once_install_upgrade_and_fail() -> Result<()> {
    let (env, ns, apis) = setup("flux-many").await?;
    let flux = FluxSimulator::start_with(
        env.client.clone(),
        Some(&ns),
        FluxOptions { max_in_flight: 8 },
    );
    const N: usize = 60;
    futures::stream::iter(0..N)
        .map(|i| {
            let (ns, apis) = (&ns, &apis);
            async move {
                let name = format!("r{i}");
                apis.repositories
                    .create(
                        &PostParams::default(),
                        &helm_repository(ns, &name, "https://c.example")?,
                    )
                    .await?;
                apis.releases
                    .create(
                        &PostParams::default(),
                        &helm_release(ns, &name, "app", "1.0.0")?,
                    )
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    for i in 0..N {
        let name = format!("r{i}");
        let (status, reason, history) = verdict(&apis.releases, &name).await?;
        ensure!(
            status == "True" && reason == "InstallSucceeded",
            "{name}: {reason}"
        );
        ensure!(history.len() == 1, "{name}: one history entry: {history:?}");
        ensure!(history[0]["version"] == 1 && history[0]["status"] == "deployed");
        let (status, reason, _) = verdict(&apis.repositories, &name).await?;
        ensure!(
            status == "True" && reason == "Succeeded",
            "repository {name}"
        );
    }
    let stats = flux.stats();
    ensure!(
        stats.releases == N as u64,
        "one verdict per release: {stats:?}"
    );
    ensure!(
        stats.repositories == N as u64,
        "one write per repository: {stats:?}"
    );
    ensure!(stats.gave_up == 0, "{stats:?}");

    // An upgrade adds an entry on top and supersedes the deployed one.
    set_version(&apis.releases, "r0", "1.1.0").await?;
    poll_until(LIMIT, "r0 upgraded", || async {
        let obj = apis.releases.get("r0").await.ok()?;
        let (status, reason) = ready(&obj)?;
        let history = obj.data["status"]["history"].as_array()?.clone();
        (status == "True"
            && reason == "UpgradeSucceeded"
            && history.len() == 2
            && history[0]["version"] == 2
            && history[0]["chartVersion"] == "1.1.0"
            && history[1]["status"] == "superseded")
            .then_some(())
    })
    .await?;

    // A version marked failing fails the upgrade with a failed entry.
    flux.fail_version("2.0.0", "pre-upgrade hook failed");
    set_version(&apis.releases, "r1", "2.0.0").await?;
    let (status, reason, history) = verdict(&apis.releases, "r1").await?;
    ensure!(status == "False" && reason == "UpgradeFailed", "{reason}");
    ensure!(history[0]["status"] == "failed" && history[1]["status"] == "deployed");
    Ok(())
}

#[tokio::test]
async fn generations_in_flight_are_serialised_per_release() -> Result<()> {
    let (env, ns, apis) = setup("flux-gen").await?;
    let _flux = FluxSimulator::start_with(
        env.client.clone(),
        Some(&ns),
        FluxOptions { max_in_flight: 4 },
    );
    // Every history the release ever shows, to catch a revision written twice.
    let seen = Arc::new(Mutex::new(Vec::<Value>::new()));
    let recorder = tokio::spawn({
        let (api, seen) = (apis.releases.clone(), seen.clone());
        async move {
            let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                if let Ok(Event::Apply(obj) | Event::InitApply(obj)) = event
                    && let Some(history) = obj.data["status"]["history"].as_array()
                    && let Ok(mut seen) = seen.lock()
                {
                    seen.extend(history.iter().cloned());
                }
            }
        }
    });
    apis.releases
        .create(
            &PostParams::default(),
            &helm_release(&ns, "hot", "app", "1.0.0")?,
        )
        .await?;
    // New generations as fast as the API server takes them, some while one is handled.
    for minor in 1..=8 {
        set_version(&apis.releases, "hot", &format!("1.{minor}.0")).await?;
    }
    let (status, _, history) = verdict(&apis.releases, "hot").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    recorder.abort();
    ensure!(status == "True");
    ensure!(
        history[0]["chartVersion"] == "1.8.0",
        "the newest version won: {history:?}"
    );
    ensure!(
        history.iter().filter(|h| h["status"] == "deployed").count() == 1,
        "exactly one deployed entry: {history:?}"
    );
    // No write was based on a stale read: a revision always means the same version,
    // and the revisions of the final history count down by one.
    let mut versions: BTreeMap<i64, String> = BTreeMap::new();
    for entry in seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter() {
        let (Some(revision), Some(version)) =
            (entry["version"].as_i64(), entry["chartVersion"].as_str())
        else {
            continue;
        };
        let first = versions
            .entry(revision)
            .or_insert_with(|| version.to_owned());
        ensure!(
            first == version,
            "revision {revision} was written for {first} and again for {version}"
        );
    }
    let revisions: Vec<i64> = history
        .iter()
        .filter_map(|h| h["version"].as_i64())
        .collect();
    ensure!(
        revisions.windows(2).all(|w| w[0] == w[1] + 1),
        "contiguous revisions, newest first: {revisions:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_suspended_release_is_left_alone_until_resumed() -> Result<()> {
    let (env, ns, apis) = setup("flux-suspend").await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    let mut hr = helm_release(&ns, "held", "app", "1.0.0")?;
    hr.data["spec"]["suspend"] = json!(true);
    apis.releases.create(&PostParams::default(), &hr).await?;
    // A release created after it gets its verdict, so the simulator is running.
    apis.releases
        .create(
            &PostParams::default(),
            &helm_release(&ns, "free", "app", "1.0.0")?,
        )
        .await?;
    verdict(&apis.releases, "free").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = apis.releases.get("held").await?;
    ensure!(
        held.data["status"].is_null(),
        "suspended: no status: {:?}",
        held.data
    );
    apis.releases
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "suspend": false } })),
        )
        .await?;
    let (status, reason, _) = verdict(&apis.releases, "held").await?;
    ensure!(status == "True" && reason == "InstallSucceeded", "{reason}");
    Ok(())
}
