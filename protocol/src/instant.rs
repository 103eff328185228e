//! Instants as operators type them, for the point-in-time routes and the CLI.

use chrono::{DateTime, Utc};

/// A text that is not an instant; the message says what to type instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InstantError(pub String);

/// Parses an instant as operators type it: RFC 3339 (`2024-01-15T14:30:00Z`), also with
/// a space for the `T` (what `date --rfc-3339=seconds` prints) or without a zone (UTC).
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>, InstantError> {
    let t = text.trim();
    let with_t = if t.len() > 10 && t.as_bytes()[10] == b' ' {
        format!("{}T{}", &t[..10], &t[11..])
    } else {
        t.to_string()
    };
    if let Ok(parsed) = DateTime::parse_from_rfc3339(&with_t) {
        return Ok(parsed.with_timezone(&Utc));
    }
    // `+00` (no minutes), as PostgreSQL prints it.
    if let Ok(parsed) = DateTime::parse_from_str(&with_t, "%Y-%m-%dT%H:%M:%S%.f%#z") {
        return Ok(parsed.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(&with_t, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|n| n.and_utc())
        .map_err(|_| {
            if chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").is_ok() {
                // What arrives of an unquoted `$(date --rfc-3339=seconds)`: the shell split
                // the URL at the space and the time went nowhere.
                return InstantError(format!(
                    "{text:?} is a date without a time (an unquoted `date --rfc-3339=seconds` is split at its space by the shell): give the time too, with a T, e.g. .../point-in-time/$(date -u -d '1 hour ago' +%Y-%m-%dT%H:%M:%SZ)"
                ));
            }
            InstantError(format!(
                "{text:?} is not a timestamp: use RFC 3339, e.g. 2024-01-15T14:30:00Z"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_as_operators_type_them() {
        let want = DateTime::parse_from_rfc3339("2024-01-15T14:30:00Z")
            .expect("t")
            .with_timezone(&Utc);
        for text in [
            "2024-01-15T14:30:00Z",
            "2024-01-15 14:30:00+00:00",
            "2024-01-15T16:30:00+02:00",
            "2024-01-15 14:30:00+00",
            "2024-01-15T14:30:00",
        ] {
            assert_eq!(parse_instant(text).expect(text), want, "{text}");
        }
        for bad in ["", "yesterday", "2024-13-01T00:00:00Z", "1705329000"] {
            assert!(parse_instant(bad).is_err(), "{bad}");
        }
        // The runbook's unquoted `$(date --rfc-3339=seconds)` leaves only the date: the
        // error says why and what to type.
        let split = parse_instant("2024-01-15").expect_err("a date alone");
        let text = split.to_string();
        assert!(
            text.contains("without a time") && text.contains("+%Y-%m-%dT%H:%M:%SZ"),
            "{text}"
        );
    }
}
