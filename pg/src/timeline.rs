//! Timeline history files (`0000000N.history`), which PostgreSQL writes at promotion and
//! archives: how the timeline's ancestors branched off.

/// The lines of a timeline history file (`0000000N.history`): one per ancestor, its
/// timeline and the LSN where it branched off, oldest first.
pub fn parse_history(text: &str) -> Vec<(u32, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let parent = f.next()?.parse().ok()?;
            let lsn: drmesh_protocol::Lsn = f.next()?.parse().ok()?;
            Some((parent, lsn.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_history;

    #[test]
    fn history_lines_oldest_first() {
        assert_eq!(
            parse_history("1\t0/3000060\tno recovery target specified\n"),
            [(1, 0x3000060)]
        );
        assert_eq!(
            parse_history("1\t0/3000060\tx\n\n# comment\n2\t0/5000000\ty\n"),
            [(1, 0x3000060), (2, 0x5000000)]
        );
    }
}
