//! DNS names as drmesh keeps them (lowercase, fully qualified: "db.x.test.") and the
//! zone checks of the configuration and the providers.

use hickory_proto::rr::Name;

use super::DnsError;

/// Parses a domain name, lowercases it and makes it fully qualified ("db.x.test.").
pub(super) fn normalize_name(name: &str) -> Result<String, DnsError> {
    parse_name(name).map(|n| n.to_string())
}

/// Whether `name` is `zone` or inside it (both as given to [`normalize_name`]).
pub(super) fn in_zone(zone: &str, name: &str) -> Result<bool, DnsError> {
    Ok(parse_name(zone)?.zone_of(&parse_name(name)?))
}

/// The zone a record belongs to by default: its parent ("db.x.test." → "x.test.").
pub(super) fn parent_zone(name: &str) -> Result<String, DnsError> {
    let n = parse_name(name)?;
    if n.num_labels() < 2 {
        return Err(DnsError::Name {
            name: name.to_string(),
            message: "needs at least two labels to have a parent zone".into(),
        });
    }
    Ok(n.base_name().to_string())
}

pub(super) fn parse_name(name: &str) -> Result<Name, DnsError> {
    let bad = |message: String| DnsError::Name {
        name: name.to_string(),
        message,
    };
    if name.trim().is_empty() || name == "." {
        return Err(bad("empty".into()));
    }
    let mut n = Name::from_ascii(name).map_err(|e| bad(e.to_string()))?;
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_zones_checked() {
        assert_eq!(
            normalize_name("DB.Drmesh.Test").expect("name"),
            "db.drmesh.test."
        );
        assert_eq!(
            normalize_name("db.drmesh.test.").expect("name"),
            "db.drmesh.test."
        );
        assert!(normalize_name("").is_err());
        assert!(normalize_name("a..b").is_err());
        assert!(in_zone("drmesh.test", "db.drmesh.test.").expect("names"));
        assert!(!in_zone("other.test", "db.drmesh.test.").expect("names"));
        assert_eq!(
            parent_zone("db.drmesh.test").expect("parent"),
            "drmesh.test."
        );
        assert!(parent_zone("test.").is_err());
    }
}
