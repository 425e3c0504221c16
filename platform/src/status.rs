//! What an operator looks at: every account with its state, generation, last rotation and the
//! worker that did it, and what the fencing did with its updates. Rendered as HTML
//! ([`render_html`]) and served as JSON ([`Status`]). Nothing secret is in here.

use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::{Metrics, PlatformError};

/// The state of every account and the service's counters.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// One entry per account, by id.
    pub accounts: Vec<AccountStatus>,
    /// The counters of this process (since it started).
    pub service: std::collections::BTreeMap<&'static str, u64>,
}

/// One account on the status page.
#[derive(Clone, Debug, Serialize)]
pub struct AccountStatus {
    /// The account id.
    pub id: String,
    /// `active`, `needs_reauth`, `rotation_lost` or `fork` (a fork outranks `active`).
    pub state: String,
    /// Why it is not active (no secrets).
    pub detail: Option<String>,
    /// The generation of the stored keys.
    pub generation: i64,
    /// When the keys last changed (RFC 3339, UTC).
    pub rotated_at: Option<String>,
    /// The worker (or API user) that sent them.
    pub rotated_by: Option<String>,
    /// Steps using the account.
    pub steps: i64,
    /// Updates applied.
    pub updates_applied: i64,
    /// Of those, applied without lineage (last-write-wins).
    pub updates_unfenced: i64,
    /// Duplicates ignored.
    pub updates_duplicate: i64,
    /// Stale updates dropped.
    pub updates_stale: i64,
    /// Forks detected.
    pub forks: i64,
}

pub(crate) async fn load(pool: &PgPool, metrics: &Metrics) -> Result<Status, PlatformError> {
    let rows = sqlx::query(
        "SELECT a.account_id, a.state, a.state_detail, a.generation, a.rotated_by,
                to_char(a.rotated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS rotated,
                a.fork_detected_at IS NOT NULL AS forked, a.fork_detail,
                a.updates_applied, a.updates_unfenced, a.updates_duplicate, a.updates_stale,
                a.forks,
                (SELECT count(*) FROM steps s WHERE s.account_id = a.account_id) AS steps
         FROM accounts a ORDER BY a.account_id",
    )
    .fetch_all(pool)
    .await?;
    let mut accounts = Vec::with_capacity(rows.len());
    for row in rows {
        let mut state: String = row.try_get("state")?;
        let mut detail: Option<String> = row.try_get("state_detail")?;
        if row.try_get::<bool, _>("forked")? && state == "active" {
            state = "fork".into();
            detail = row.try_get("fork_detail")?;
        }
        accounts.push(AccountStatus {
            id: row.try_get("account_id")?,
            state,
            detail,
            generation: row.try_get("generation")?,
            rotated_at: row.try_get("rotated")?,
            rotated_by: row.try_get("rotated_by")?,
            steps: row.try_get("steps")?,
            updates_applied: row.try_get("updates_applied")?,
            updates_unfenced: row.try_get("updates_unfenced")?,
            updates_duplicate: row.try_get("updates_duplicate")?,
            updates_stale: row.try_get("updates_stale")?,
            forks: row.try_get("forks")?,
        });
    }
    Ok(Status {
        accounts,
        service: metrics.snapshot().into_iter().collect(),
    })
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The status page: a table of accounts (one row each, `data-state` on the row, the state in a
/// badge), the service counters, refreshed every 5 seconds.
pub fn render_html(status: &Status) -> String {
    let mut rows = String::new();
    for a in &status.accounts {
        let detail = a
            .detail
            .as_deref()
            .map(|d| format!("<div class=\"detail\">{}</div>", escape(d)))
            .unwrap_or_default();
        rows.push_str(&format!(
            "<tr data-account=\"{id}\" data-state=\"{state}\"><td class=\"id\">{id}</td>\
             <td><span class=\"badge {state}\">{label}</span>{detail}</td>\
             <td class=\"generation\">{generation}</td><td class=\"rotated-at\">{rotated_at}</td>\
             <td class=\"rotated-by\">{rotated_by}</td><td>{steps}</td>\
             <td>{applied}</td><td>{unfenced}</td><td>{dup}</td><td>{stale}</td><td>{forks}</td></tr>\n",
            id = escape(&a.id),
            state = escape(&a.state),
            label = match a.state.as_str() {
                "needs_reauth" => "needs re-auth".to_owned(),
                other => escape(&other.replace('_', " ")),
            },
            generation = a.generation,
            rotated_at = escape(a.rotated_at.as_deref().unwrap_or("never")),
            rotated_by = escape(a.rotated_by.as_deref().unwrap_or("—")),
            steps = a.steps,
            applied = a.updates_applied,
            unfenced = a.updates_unfenced,
            dup = a.updates_duplicate,
            stale = a.updates_stale,
            forks = a.forks,
        ));
    }
    if status.accounts.is_empty() {
        rows.push_str("<tr><td colspan=\"11\">No accounts yet.</td></tr>\n");
    }
    let alerts = status
        .accounts
        .iter()
        .filter(|a| a.state != "active")
        .count();
    let counters = status
        .service
        .iter()
        .map(|(k, v)| {
            format!(
                "<li><span class=\"counter\" id=\"{k}\">{v}</span> {}</li>",
                k.replace('_', " ")
            )
        })
        .collect::<String>();
    format!(
        "<!DOCTYPE html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">
<title>Deckhand platform — accounts</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .4rem .6rem; text-align: left; vertical-align: top; }}
th {{ background: #f4f4f4; }}
.badge {{ padding: .1rem .5rem; border-radius: .8rem; font-size: .85rem; color: #fff; }}
.badge.active {{ background: #2e7d32; }} .badge.needs_reauth {{ background: #ef6c00; }}
.badge.rotation_lost {{ background: #c62828; }} .badge.fork {{ background: #6a1b9a; }}
td.id, td.rotated-at, td.rotated-by {{ white-space: nowrap; }}
.detail {{ font-size: .8rem; color: #666; max-width: 30rem; }}
#summary {{ font-weight: bold; }}
</style></head>
<body>
<h1>Accounts</h1>
<p id=\"summary\" data-alerts=\"{alerts}\">{total} accounts, {alerts} need attention.</p>
<table id=\"accounts\">
<thead><tr><th>Account</th><th>State</th><th>Generation</th><th>Last rotation (UTC)</th><th>By</th><th>Steps</th>
<th>Applied</th><th>Unfenced</th><th>Duplicates</th><th>Stale</th><th>Forks</th></tr></thead>
<tbody>
{rows}</tbody></table>
<h2>This service</h2>
<ul id=\"service\">{counters}</ul>
<p><a href=\"/status.json\">JSON</a> · <a href=\"/metrics\">metrics</a></p>
</body></html>
",
        total = status.accounts.len(),
    )
}

/// The counters in Prometheus' text format.
pub fn render_metrics(status: &Status) -> String {
    let mut out = String::new();
    for (name, value) in &status.service {
        out.push_str(&format!(
            "# TYPE deckhand_platform_{name} counter\ndeckhand_platform_{name} {value}\n"
        ));
    }
    out.push_str("# TYPE deckhand_platform_accounts gauge\n");
    for state in ["active", "needs_reauth", "rotation_lost", "fork"] {
        let n = status.accounts.iter().filter(|a| a.state == state).count();
        out.push_str(&format!(
            "deckhand_platform_accounts{{state=\"{state}\"}} {n}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_what_it_shows() {
        let status = Status {
            accounts: vec![AccountStatus {
                id: "<script>alert(1)</script>".into(),
                state: "fork".into(),
                detail: Some("a & b".into()),
                generation: 3,
                rotated_at: None,
                rotated_by: Some("w\"1".into()),
                steps: 1,
                updates_applied: 3,
                updates_unfenced: 0,
                updates_duplicate: 1,
                updates_stale: 0,
                forks: 1,
            }],
            service: Default::default(),
        };
        let html = render_html(&status);
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("a &amp; b"));
        assert!(html.contains("1 need attention"));
    }
}
