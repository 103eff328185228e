//! WAL file names (segments, partial segments, timeline history and backup history
//! files), segment arithmetic, and the checks a segment's first page header must pass
//! before it is archived.

use drmesh_protocol::Lsn;

/// A WAL file name or segment that is refused.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{0:?} is not a WAL file name PostgreSQL archives")]
    BadName(String),
    #[error("WAL segment {name} refused: {why}")]
    BadSegment { name: String, why: String },
}

/// What kind of file PostgreSQL archives under a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalKind {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY`: a whole segment.
    Segment,
    /// A segment's name plus `.partial`: the last, incomplete segment of a timeline that
    /// ended (written at promotion).
    Partial,
    /// `TTTTTTTT.history`: the timeline's history file.
    History,
    /// A segment's name plus `.XXXXXXXX.backup`: a backup history file.
    Backup,
}

/// A parsed WAL file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalName {
    pub name: String,
    pub kind: WalKind,
    pub timeline: u32,
    /// The segment number (`log * segments-per-log + seg`) needs the segment size, so the
    /// two halves are kept as named.
    pub log: u32,
    pub seg: u32,
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
}

impl WalName {
    /// Parses a file name as PostgreSQL passes it in `%f` (no directories).
    pub fn parse(name: &str) -> Result<Self, WalError> {
        let bad = || WalError::BadName(name.to_string());
        if let Some(tli) = name.strip_suffix(".history") {
            let timeline = hex8(tli).ok_or_else(bad)?;
            return Ok(Self {
                name: name.into(),
                kind: WalKind::History,
                timeline,
                log: 0,
                seg: 0,
            });
        }
        let (segment, kind) = if let Some(s) = name.strip_suffix(".partial") {
            (s, WalKind::Partial)
        } else if let Some(s) = name.strip_suffix(".backup") {
            let (s, offset) = s.split_once('.').ok_or_else(bad)?;
            hex8(offset).ok_or_else(bad)?;
            (s, WalKind::Backup)
        } else {
            (name, WalKind::Segment)
        };
        if segment.len() != 24 || !segment.is_ascii() {
            return Err(bad());
        }
        let timeline = hex8(&segment[..8]).ok_or_else(bad)?;
        let log = hex8(&segment[8..16]).ok_or_else(bad)?;
        let seg = hex8(&segment[16..]).ok_or_else(bad)?;
        if timeline == 0 {
            return Err(bad());
        }
        Ok(Self {
            name: name.into(),
            kind,
            timeline,
            log,
            seg,
        })
    }

    /// The segment number, given the segment size.
    pub fn segment_number(&self, segment_size: u64) -> u64 {
        self.log as u64 * segments_per_log(segment_size) + self.seg as u64
    }
}

fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size
}

/// The name of segment `segno` of `timeline`.
pub fn segment_name(timeline: u32, segno: u64, segment_size: u64) -> String {
    let per = segments_per_log(segment_size);
    format!("{timeline:08X}{:08X}{:08X}", segno / per, segno % per)
}

/// The segment holding `lsn`.
pub fn segment_of(lsn: Lsn, segment_size: u64) -> u64 {
    lsn.0 / segment_size
}

/// The segment holding the byte just before `lsn` (where a record ending at `lsn` is);
/// what `pg_walfile_name` answers for a backup's stop LSN.
pub fn segment_before(lsn: Lsn, segment_size: u64) -> u64 {
    lsn.0.saturating_sub(1) / segment_size
}

fn is_segment_size(n: u64) -> bool {
    n.is_power_of_two() && (1 << 20..=1 << 30).contains(&n)
}

/// What a segment's first page header says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub magic: u16,
    pub timeline: u32,
    pub page_address: u64,
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

/// XLP_LONG_HEADER: the first page of every segment has the long header.
const XLP_LONG_HEADER: u16 = 0x0002;

fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks that `data` is a whole, undamaged-looking segment (or partial segment) named
/// `name`: the size its header declares, the long page header, the page address of the
/// segment its name says, a timeline no later than its name's. A truncated copy, a file
/// of zeros or another segment's content is refused, so it is never acknowledged.
pub fn check_segment(name: &WalName, data: &[u8]) -> Result<SegmentHeader, WalError> {
    let bad = |why: String| WalError::BadSegment {
        name: name.name.clone(),
        why,
    };
    // XLogLongPageHeaderData: magic u16, info u16, tli u32, pageaddr u64, rem_len u32,
    // (padding), sysid u64 @24, seg_size u32 @32, xlog_blcksz u32 @36.
    if data.len() < 40 {
        return Err(bad(format!("only {} bytes", data.len())));
    }
    let header = SegmentHeader {
        magic: le_u16(data, 0),
        timeline: le_u32(data, 4),
        page_address: le_u64(data, 8),
        system_identifier: le_u64(data, 24),
        segment_size: le_u32(data, 32),
        block_size: le_u32(data, 36),
    };
    let info = le_u16(data, 2);
    if info & XLP_LONG_HEADER == 0 || header.magic == 0 {
        return Err(bad("no WAL page header at its start".into()));
    }
    let size = header.segment_size as u64;
    if !is_segment_size(size) {
        return Err(bad(format!(
            "header declares a segment size of {size} bytes"
        )));
    }
    if data.len() as u64 != size {
        return Err(bad(format!(
            "{} bytes, but its header declares segments of {size} (truncated or padded?)",
            data.len()
        )));
    }
    if !(header.block_size.is_power_of_two() && (1024..=65536).contains(&header.block_size)) {
        return Err(bad(format!(
            "header declares pages of {} bytes",
            header.block_size
        )));
    }
    let expected = name.segment_number(size) * size;
    if header.page_address != expected {
        return Err(bad(format!(
            "its first page is for {}, not {}",
            Lsn(header.page_address),
            Lsn(expected)
        )));
    }
    // The first segment of a new timeline starts as a copy of the old one's.
    if header.timeline == 0 || header.timeline > name.timeline {
        return Err(bad(format!(
            "its first page is on timeline {}, after the name's {}",
            header.timeline, name.timeline
        )));
    }
    Ok(header)
}

/// The segments a backup needs, from the one holding `start` to the one holding the
/// byte before `stop`, on `timeline`.
pub fn needed_segments(timeline: u32, start: Lsn, stop: Lsn, segment_size: u64) -> Vec<String> {
    let first = segment_of(start, segment_size);
    let last = segment_before(stop, segment_size).max(first);
    (first..=last)
        .map(|n| segment_name(timeline, n, segment_size))
        .collect()
}

/// The archived segments' gaps: for each timeline, the names missing between the
/// first and the last archived segment.
pub fn gaps(files: &[(u32, String)], segment_size: u64) -> Vec<String> {
    use std::collections::BTreeMap;
    let mut by_tli: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (_, f) in files {
        if let Ok(n) = WalName::parse(f) {
            if n.kind == WalKind::Segment {
                by_tli
                    .entry(n.timeline)
                    .or_default()
                    .push(n.segment_number(segment_size));
            }
        }
    }
    let mut missing = Vec::new();
    for (tli, mut segs) in by_tli {
        segs.sort_unstable();
        segs.dedup();
        for w in segs.windows(2) {
            for n in w[0] + 1..w[1] {
                missing.push(segment_name(tli, n, segment_size));
            }
        }
    }
    missing
}

/// Segments for tests elsewhere (the agent's archiving tests).
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::{WalName, XLP_LONG_HEADER};

    /// A fake segment with a valid long page header.
    pub fn segment(name: &str, size: u64) -> Vec<u8> {
        let n = WalName::parse(name).expect("name");
        let mut data = vec![0u8; size as usize];
        data[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        data[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        data[4..8].copy_from_slice(&n.timeline.to_le_bytes());
        data[8..16].copy_from_slice(&(n.segment_number(size) * size).to_le_bytes());
        data[24..32].copy_from_slice(&7_300_000_000_000_000_001u64.to_le_bytes());
        data[32..36].copy_from_slice(&(size as u32).to_le_bytes());
        data[36..40].copy_from_slice(&8192u32.to_le_bytes());
        data
    }
}

#[cfg(test)]
mod tests {
    use super::testing::segment;
    use super::*;

    const MB16: u64 = 16 << 20;

    #[test]
    fn names() {
        let n = WalName::parse("0000000200000001000000FE").expect("segment");
        assert_eq!(
            (n.kind, n.timeline, n.log, n.seg),
            (WalKind::Segment, 2, 1, 0xFE)
        );
        assert_eq!(n.segment_number(MB16), 256 + 0xFE);
        assert_eq!(
            segment_name(2, 256 + 0xFE, MB16),
            "0000000200000001000000FE"
        );
        assert_eq!(
            WalName::parse("00000003.history").expect("h").kind,
            WalKind::History
        );
        assert_eq!(
            WalName::parse("000000010000000000000003.partial")
                .expect("p")
                .kind,
            WalKind::Partial
        );
        assert_eq!(
            WalName::parse("000000010000000000000002.00000028.backup")
                .expect("b")
                .kind,
            WalKind::Backup
        );
        for bad in [
            "",
            "../000000010000000000000001",
            "00000001000000000000000",
            "0000000100000000000000010",
            "00000000000000000000000A",
            "0000000G0000000000000001",
            "x.history",
            "000000010000000000000002.backup",
            "000000010000000000000001.tmp",
        ] {
            assert!(WalName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn segments_for_a_backup() {
        // Start in segment 2, stop exactly at the start of segment 4: 2 and 3 are needed.
        let segs = needed_segments(1, Lsn(2 * MB16 + 40), Lsn(4 * MB16), MB16);
        assert_eq!(
            segs,
            ["000000010000000000000002", "000000010000000000000003"]
        );
        let segs = needed_segments(1, Lsn(0x1_0000_0000 - 10), Lsn(0x1_0000_0000 + 5), MB16);
        assert_eq!(
            segs,
            ["0000000100000000000000FF", "000000010000000100000000"]
        );
    }

    #[test]
    fn segment_checks() {
        let name = WalName::parse("000000010000000000000005").expect("name");
        let good = segment(&name.name, MB16);
        let h = check_segment(&name, &good).expect("good");
        assert_eq!(h.segment_size as u64, MB16);
        let truncated = &good[..good.len() - 8192];
        let err = check_segment(&name, truncated).expect_err("truncated");
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(
            check_segment(&name, &vec![0u8; MB16 as usize]).is_err(),
            "zeros"
        );
        let other = segment("000000010000000000000006", MB16);
        let err = check_segment(&name, &other).expect_err("other segment");
        assert!(err.to_string().contains("first page"), "{err}");
        let later_tli = segment("000000030000000000000005", MB16);
        assert!(check_segment(&name, &later_tli).is_err(), "later timeline");
        // The first segment of timeline 2 may begin as timeline 1's copy.
        let next = WalName::parse("000000020000000000000005").expect("name");
        assert!(check_segment(&next, &good).is_ok());
    }

    #[test]
    fn gaps_in_the_archive() {
        let files: Vec<(u32, String)> = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000005",
            "00000002.history",
            "000000020000000000000005",
            "000000020000000000000006",
        ]
        .iter()
        .map(|n| (1, n.to_string()))
        .collect();
        assert_eq!(
            gaps(&files, MB16),
            ["000000010000000000000003", "000000010000000000000004"]
        );
    }
}
