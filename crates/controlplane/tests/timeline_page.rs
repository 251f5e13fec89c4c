//! The timeline page in a real browser (headless Chromium): events delivered through
//! `POST /api/agent/events` appear in the page's DOM, the filters in its URL apply, and
//! an event delivered while the page is open appears without a reload.
//!
//! The page's HTML carries no rows (checked below), so rows in the dumped DOM prove the
//! page's script fetched and drew them. Chromium comes from env `CHROMIUM` or `chromium`
//! on PATH; `cargo xtask test` installs Debian's package when it is missing.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{ORG, Server, TempDir, batch, event, poll_until, stat};

const ADMIN: &str = "page-admin-token";

fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
        .expect("chromium not found: set CHROMIUM or install it (`cargo xtask test` does)")
}

/// Loads `url`, lets the page's timers run for `budget_ms` of virtual time, and returns
/// the DOM as the script left it.
fn dump_dom(url: &str, budget_ms: u64) -> String {
    let profile = TempDir::new("vwcp-chromium");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn row_of(id: u64, kind: &str) -> String {
    format!(r#"<tr id="event-{id:032x}" data-kind="{kind}">"#)
}

#[tokio::test]
async fn the_page_shows_delivered_events_and_updates_live() {
    let s = Server::start_with(|c| c.admin_token = Some(ADMIN.into())).await;
    let delivered = s
        .post(
            "/api/agent/events",
            &batch(&[event(1, "OperationStarted"), event(2, "OperationSucceeded")]),
        )
        .await;
    assert_eq!(delivered.status().as_u16(), 200);
    let page = s.url(&format!("/orgs/{ORG}/timeline?admin_token={ADMIN}"));

    let html = s
        .http
        .get(&page)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !html.contains(&format!("{:032x}", 1)),
        "the served HTML has no rows"
    );

    let dom = tokio::task::spawn_blocking({
        let page = page.clone();
        move || dump_dom(&page, 3000)
    })
    .await
    .unwrap();
    let first = row_of(1, "OperationStarted");
    let second = row_of(2, "OperationSucceeded");
    assert!(dom.contains(&first), "event 1 missing from the DOM:\n{dom}");
    assert!(
        dom.contains(&second),
        "event 2 missing from the DOM:\n{dom}"
    );
    assert!(
        dom.find(&second).unwrap() < dom.find(&first).unwrap(),
        "newest first"
    );
    assert!(dom.contains("event 1") && dom.contains("2 events, updated"));

    // A filter given in the URL fills the form and applies.
    let filtered = tokio::task::spawn_blocking({
        let page = format!("{page}&kind=OperationStarted");
        move || dump_dom(&page, 3000)
    })
    .await
    .unwrap();
    assert!(filtered.contains(&first));
    assert!(!filtered.contains(&second), "filtered out:\n{filtered}");

    // Live: while one page load polls, a new event arrives; it must reach the DOM of
    // that same load (the page is fetched once), through a fetch after the insertion.
    let admin = |path: &str| s.http.get(s.url(path)).bearer_auth(ADMIN);
    let reset = s
        .http
        .delete(s.url("/admin/stats"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status().as_u16(), 200);
    let browser = tokio::task::spawn_blocking({
        let page = page.clone();
        move || dump_dom(&page, 120_000)
    });
    let fetches = || async {
        let stats: serde_json::Value = admin("/admin/stats")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stat(&stats, "GET /api/orgs/{org}/timeline", "200")
    };
    poll_until(
        Duration::from_secs(30),
        "the open page to poll twice",
        || async { (fetches().await >= 2).then_some(()) },
    )
    .await;
    let third = row_of(3, "OperationFailed");
    assert_eq!(
        s.post("/api/agent/events", &batch(&[event(3, "OperationFailed")]))
            .await
            .status()
            .as_u16(),
        200
    );
    let at_insert = fetches().await;
    let live = browser.await.unwrap();
    let stats: serde_json::Value = admin("/admin/stats")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        stat(&stats, "GET /api/orgs/{org}/timeline", "200") > at_insert,
        "the browser finished before it polled again; raise its budget"
    );
    assert_eq!(
        stat(&stats, "GET /orgs/{org}/timeline", "200"),
        1,
        "one page load, no reload"
    );
    assert!(live.contains(&third), "the live event is missing:\n{live}");
    assert!(live.find(&third).unwrap() < live.find(&second).unwrap());
    assert!(live.contains("3 events, updated"));
    s.running.shutdown().await;
}
