//! Token endpoint responses: the JSON body a provider returns, read as Deckhand reads it —
//! a JSON object (the token set, whose `access_token` may be a JWT whose `exp` is read when
//! there is no `expires_in`) or an OAuth2 error answer — and the stored form it becomes.
//! Secrets must never show in `Debug`.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use deckhand::credentials::TokenSet;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Some((&clock, body)) = data.split_first() else {
        return;
    };
    // An OAuth2 error answer (400/401/403) is parsed by the oauth2 crate's standard type.
    let _ = serde_json::from_slice::<oauth2::basic::BasicErrorResponse>(body);
    let Ok(map) = serde_json::from_slice::<Map<String, Value>>(body) else {
        return;
    };
    let received_at = UNIX_EPOCH + Duration::from_secs(u64::from(clock) * 86_400 * 200);
    // The oracle: the access token must not show in `Debug` *because it is the access token*.
    // Text equal to it may show for other reasons (field names are listed, and the structure
    // has words like `access_token`): a probe with another token shows the same text then.
    // (Two such false positives were found by this target; kept in fuzz/regressions/.)
    let mut probe = map.clone();
    probe.insert(
        "access_token".into(),
        Value::String("PROBE-token-0123456789".into()),
    );
    let probe_debug = TokenSet::from_response(probe, received_at)
        .map(|t| format!("{t:?}"))
        .unwrap_or_default();
    let Ok(token) = TokenSet::from_response(map, received_at) else {
        return;
    };
    let debug = format!("{token:?}");
    if let Some(secret) = token.access_token() {
        let secret = secret.expose();
        if secret.len() >= 8 && !probe_debug.contains(secret) {
            assert!(!debug.contains(secret), "the access token leaked into Debug");
        }
    }
    let _ = token.expires_at();
    let stored = TokenSet::from_stored(token.to_keys());
    assert_eq!(
        stored.access_token().map(|s| s.expose().to_owned()),
        token.access_token().map(|s| s.expose().to_owned())
    );
    let _ = stored.merged_with(token);
});
