//! A worker process for the credential store's cross-process tests: one `TokenManager` on a
//! credential kept in the PostgreSQL store.
//!
//! Environment: `DH_STORE_URL`, `DH_STORE_SCHEMA`, `DECKHAND_STORE_KEYS`, `DH_ACCOUNT`,
//! `DH_TOKEN_URL`, `DH_CLIENT_ID`, `DH_CLIENT_SECRET`, `DH_LEASE_MS`, and `DH_MODE`:
//! * `calls`: asks for an authorization every 20 ms for `DH_DURATION_MS`, then prints
//!   `token_requests=N errors=N generation=N`;
//! * `refresh`: forces one refresh and prints `generation=N` (tests kill it mid-way).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deckhand::auth::CredentialStore;
use deckhand::auth::{AccountId, Grant, HolderId, MemorySink, TokenEndpoint, TokenManager};
use deckhand::store::{KeyRing, PgCredentialStore, StoreOptions};

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let lease = Duration::from_millis(var("DH_LEASE_MS").parse().expect("DH_LEASE_MS"));
    let store = PgCredentialStore::connect(
        &var("DH_STORE_URL"),
        KeyRing::from_env().expect("DECKHAND_STORE_KEYS"),
        StoreOptions {
            schema: var("DH_STORE_SCHEMA"),
            lease,
            max_connections: 2,
        },
    )
    .await
    .expect("connecting the store");
    let account = AccountId::new(var("DH_ACCOUNT")).expect("DH_ACCOUNT");
    let stored = store
        .load(&account)
        .await
        .expect("loading the account")
        .expect("the account is seeded");
    let endpoint = TokenEndpoint::new(&var("DH_TOKEN_URL"), var("DH_CLIENT_ID"))
        .expect("token URL")
        .client_secret(var("DH_CLIENT_SECRET"))
        .grant(Grant::RefreshToken);
    let manager = TokenManager::builder(stored.credentials, endpoint, MemorySink::new())
        .generation(stored.generation)
        .store(Arc::new(store), account, HolderId::for_this_process())
        .build();
    match var("DH_MODE").as_str() {
        "refresh" => match manager.force_refresh().await {
            Ok(auth) => {
                println!("generation={}", auth.generation());
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("error={e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            let duration = Duration::from_millis(var("DH_DURATION_MS").parse().expect("ms"));
            let end = Instant::now() + duration;
            let mut errors = 0;
            while Instant::now() < end {
                if let Err(e) = manager.authorization().await {
                    errors += 1;
                    eprintln!("authorization failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            println!(
                "token_requests={} errors={errors} generation={}",
                manager.metrics().token_requests,
                manager.generation()
            );
            ExitCode::SUCCESS
        }
    }
}
