//! The status page in a real headless Chromium: the DOM the browser built from the page shows
//! each account with its state (active, needs re-auth, rotation lost, fork), generation, last
//! rotation and the worker that did it, and the page's counters; nothing secret.
//!
//! Needs Chromium (`/usr/bin/chromium`, or `CHROME=/path`); `.ci/run` installs Debian's
//! `chromium` when it is missing. Where there is none, the build script compiles this test as
//! ignored with the reason, so `cargo test` reports it as not run.

mod common;

use std::time::Duration;

use common::*;
use deckhand_platform::KeysUpdateIn;
use deckhand_platform::api::{ApiOptions, serve};
use deckhand_tests::postgres::TestSchema;

fn chrome() -> String {
    std::env::var("CHROME")
        .ok()
        .filter(|p| std::path::Path::new(p).is_file())
        .unwrap_or_else(|| {
            ["chromium", "chromium-browser", "google-chrome"]
                .iter()
                .map(|n| format!("/usr/bin/{n}"))
                .find(|p| std::path::Path::new(p).is_file())
                .expect("the build script found a browser")
        })
}

/// Loads `url` in headless Chromium and returns the DOM it built.
async fn dump_dom(url: &str, screenshot: &std::path::Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: Vec<String>| {
        let mut cmd = tokio::process::Command::new(chrome());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1400,700",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .kill_on_drop(true)
        .output()
    };
    let out = tokio::time::timeout(Duration::from_secs(60), run(vec!["--dump-dom".into()]))
        .await
        .expect("chromium answered within 60 s")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A picture for people (target/platform-status.png); not asserted beyond existing.
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        run(vec![format!("--screenshot={}", screenshot.display())]),
    )
    .await;
    String::from_utf8(out.stdout).unwrap()
}

#[cfg_attr(
    deckhand_no_browser,
    ignore = "not run: no Chromium found (install Debian's `chromium`, or set CHROME=/path/to/chrome)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    let schema = TestSchema::new().await;
    let platform = platform(&schema).await;
    for (id, rt) in [
        ("acc-active", "a0"),
        ("acc-fork", "f0"),
        ("acc-reauth", "r0"),
        ("acc-lost", "l0"),
    ] {
        platform.create_account(id, keys(rt)).await.unwrap();
    }
    let update = |parent: &str, rt: &str, worker: &str| KeysUpdateIn {
        keys: keys(rt),
        parent_fingerprint: Some(fingerprint(parent)),
        worker: worker.into(),
        worker_generation: None,
    };
    platform
        .apply_update("acc-active", &update("a0", "a1", "worker-a:1"))
        .await
        .unwrap();
    platform
        .apply_update("acc-fork", &update("f0", "f1", "worker-b:1"))
        .await
        .unwrap();
    platform
        .apply_update("acc-fork", &update("f0", "f1-other", "worker-c:2"))
        .await
        .unwrap();
    // What store-backed workers record when the provider refuses or a rotation is lost.
    for (id, state) in [
        ("acc-reauth", "needs_reauth"),
        ("acc-lost", "rotation_lost"),
    ] {
        sqlx::query(
            "UPDATE accounts SET state = $2, state_detail = 'invalid_grant' WHERE account_id = $1",
        )
        .bind(id)
        .bind(state)
        .execute(platform.store().pool())
        .await
        .unwrap();
    }
    step(
        &platform,
        "flow-1",
        "step_1",
        "acc-active",
        serde_json::json!({}),
    )
    .await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/status", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        platform.clone(),
        ApiOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let screenshot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/platform-status.png");
    let dom = dump_dom(&url, &screenshot).await;

    let row = |id: &str| {
        let start = dom
            .find(&format!("data-account=\"{id}\""))
            .unwrap_or_else(|| panic!("no row for {id} in the DOM:\n{dom}"));
        let end = dom[start..].find("</tr>").unwrap() + start;
        dom[start..end].to_owned()
    };
    let active = row("acc-active");
    assert!(active.contains("data-state=\"active\""), "{active}");
    assert!(
        active.contains("<td class=\"generation\">1</td>"),
        "{active}"
    );
    assert!(active.contains("worker-a:1"), "{active}");
    assert!(active.contains("<td>1</td>"), "the step count: {active}");
    let fork = row("acc-fork");
    assert!(
        fork.contains("<span class=\"badge fork\">fork</span>"),
        "{fork}"
    );
    assert!(
        fork.contains("worker-c:2"),
        "the fork names the second worker: {fork}"
    );
    assert!(
        fork.contains("worker-b:1"),
        "the kept rotation's worker: {fork}"
    );
    assert!(row("acc-reauth").contains("needs re-auth"));
    assert!(row("acc-lost").contains("rotation lost"));
    assert!(dom.contains("4 accounts, 3 need attention."), "{dom}");
    assert!(dom.contains("id=\"forks_detected\">1<"), "{dom}");
    // The browser built a table whose rows are inside it (the markup parsed as meant).
    let table = &dom[dom.find("<table id=\"accounts\">").unwrap()..dom.find("</table>").unwrap()];
    assert_eq!(table.matches("data-account=").count(), 4);
    for secret in ["at-a1", "\"a1\"", "f1-other"] {
        assert!(!dom.contains(secret), "`{secret}` on the page");
    }
    eprintln!("status page screenshot: {}", screenshot.display());
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    schema.cleanup().await;
}
