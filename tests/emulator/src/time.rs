//! Date-time helpers shared by the Salesforce and Graph emulation.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate, Utc};

/// Current time as UTC.
pub(crate) fn now_utc() -> DateTime<Utc> {
    DateTime::<Utc>::from(SystemTime::now())
}

/// Seconds since the Unix epoch (rounded down).
pub(crate) fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_millis(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// Parses the date-time notations both APIs use: RFC 3339 (`2024-01-01T00:00:00Z`,
/// `...+01:00`), Salesforce's `2024-01-01T00:00:00.000+0000`, and a bare date
/// (`2024-01-01`, midnight UTC).
pub(crate) fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Some(dt.with_timezone(&Utc));
    }
    if let Ok(dt) = DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(dt.with_timezone(&Utc));
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc())
}

/// Salesforce's date-time notation: `2024-01-01T00:00:00.000+0000`.
pub(crate) fn salesforce_datetime(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

/// Graph's date-time notation: `2024-01-01T00:00:00Z`.
pub(crate) fn graph_datetime(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Fixed origin of seeded data, so seeded timestamps are deterministic.
pub(crate) fn seed_epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(1_704_067_200, 0).unwrap_or_default() // 2024-01-01T00:00:00Z
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_notations() {
        let expected = seed_epoch();
        for text in [
            "2024-01-01T00:00:00Z",
            "2024-01-01T01:00:00+01:00",
            "2024-01-01T00:00:00.000+0000",
            "2024-01-01",
        ] {
            assert_eq!(parse_datetime(text), Some(expected), "{text}");
        }
        assert_eq!(parse_datetime("yesterday"), None);
        assert_eq!(
            salesforce_datetime(expected),
            "2024-01-01T00:00:00.000+0000"
        );
        assert_eq!(graph_datetime(expected), "2024-01-01T00:00:00Z");
    }
}
