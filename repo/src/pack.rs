//! Blobs (one chunk each: compressed, then sealed when the repository is encrypted) and the
//! pack objects that hold many of them, so an object store sees few large objects.
//!
//! A pack is `blob* trailer u32-le(trailer length)`; the trailer is a sealed, compressed
//! JSON list of the pack's entries, so an index can be rebuilt from the packs alone. The
//! fast path is the index objects written at the end of each backup.

use aligned_vec::{AVec, ConstAlign};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::crypto::{MasterKey, NONCE_LEN};
use super::RepoError;

/// SHA-256 of a chunk's plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn parse(s: &str) -> Result<Self, RepoError> {
        let bytes =
            hex::decode(s).map_err(|_| RepoError::Corrupt(format!("bad chunk id {s:?}")))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| RepoError::Corrupt(format!("bad chunk id {s:?}")))?;
        Ok(Self(arr))
    }
}

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex()[..16])
    }
}

impl Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChunkId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Where a chunk is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Pack object name (hex SHA-256 of the pack's bytes).
    pub pack: String,
    pub offset: u64,
    /// Stored (compressed, sealed) length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub id: ChunkId,
    #[serde(flatten)]
    pub location: Location,
}

const FLAG_ZSTD: u8 = 1;

/// zstd level: 1 is the fastest level that still shrinks text-like data well; the
/// backup is bound by hashing and I/O, not by squeezing the last percent.
pub const ZSTD_LEVEL: i32 = 1;

/// Per-thread codec state: zstd contexts are costly to create, so each thread keeps its
/// own and reuses it for every chunk.
struct Codec {
    compressor: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
    scratch: Vec<u8>,
}

/// Size of the compressibility trial.
const PROBE: usize = 8 * 1024;

thread_local! {
    static CODEC: std::cell::RefCell<Option<Codec>> = const { std::cell::RefCell::new(None) };
}

fn with_codec<T>(f: impl FnOnce(&mut Codec) -> Result<T, RepoError>) -> Result<T, RepoError> {
    CODEC.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let mut compressor =
                zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(|e| RepoError::local("zstd", e))?;
            // A content checksum (XXH64) in every frame: decompression checks it, so a
            // reader of an unencrypted repository need not hash every chunk again.
            compressor
                .set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
                .map_err(|e| RepoError::local("zstd", e))?;
            *slot = Some(Codec {
                compressor,
                decompressor: zstd::bulk::Decompressor::new()
                    .map_err(|e| RepoError::local("zstd", e))?,
                scratch: Vec::new(),
            });
        }
        match slot.as_mut() {
            Some(codec) => f(codec),
            None => Err(RepoError::Io("zstd context missing".into())),
        }
    })
}

/// Compresses (when that shrinks it) and seals one chunk, in one buffer:
/// `[nonce] flag body [tag]`.
pub fn encode_blob(data: &[u8], key: Option<&MasterKey>) -> Result<Vec<u8>, RepoError> {
    let header = if key.is_some() { NONCE_LEN } else { 0 };
    let bound = zstd::zstd_safe::compress_bound(data.len()).max(data.len());
    let mut out = Vec::with_capacity(header + 1 + bound + 16);
    out.resize(header + 1, 0);
    let compressed = with_codec(|c| {
        // Random-looking data (media, already-compressed files) costs zstd as much time
        // as text and gains nothing: a trial on a small sample decides, as Borg's
        // "auto" compression does. Short chunks are simply compressed.
        if data.len() > 2 * PROBE {
            let bound = zstd::zstd_safe::compress_bound(PROBE);
            c.scratch.clear();
            c.scratch.reserve(bound);
            let n = c
                .compressor
                .compress_to_buffer(&data[..PROBE], &mut c.scratch)
                .map_err(|e| RepoError::local("compress", e))?;
            if n * 100 >= PROBE * 97 {
                return Ok(data.len());
            }
        }
        let mut cursor = std::io::Cursor::new(&mut out);
        cursor.set_position((header + 1) as u64);
        c.compressor
            .compress_to_buffer(data, &mut cursor)
            .map_err(|e| RepoError::local("compress", e))
    })?;
    if compressed < data.len() {
        out[header] = FLAG_ZSTD;
    } else {
        out.truncate(header + 1);
        out[header] = 0;
        out.extend_from_slice(data);
    }
    if let Some(k) = key {
        k.seal_in_place(&mut out)?;
    }
    Ok(out)
}

/// Whether a stored blob of an unencrypted repository checks itself as it is decoded:
/// zstd-compressed with a content checksum in its frame (every blob written since the
/// checksum was turned on). Restore then skips the SHA-256 of the chunk; verify never.
pub fn self_checking(stored: &[u8]) -> bool {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
    const CONTENT_CHECKSUM: u8 = 0x04;
    stored.len() > 5
        && stored[0] == FLAG_ZSTD
        && stored[1..5] == ZSTD_MAGIC
        && stored[5] & CONTENT_CHECKSUM != 0
}

/// Opens, decompresses and checks one stored chunk against its id.
pub fn decode_blob(
    stored: &[u8],
    id: &ChunkId,
    raw_length: u32,
    key: Option<&MasterKey>,
) -> Result<Vec<u8>, RepoError> {
    decode_blob_checked(stored, id, raw_length, key, true)
}

/// As [`decode_blob`]; `check_id: false` skips hashing the plaintext, for readers of an
/// encrypted repository whose AES-GCM tag already authenticates every byte.
pub fn decode_blob_checked(
    stored: &[u8],
    id: &ChunkId,
    raw_length: u32,
    key: Option<&MasterKey>,
    check_id: bool,
) -> Result<Vec<u8>, RepoError> {
    let damaged = |why: &str| RepoError::Damaged(format!("chunk {}: {why}", id.hex()));
    let mut opened;
    let plain: &[u8] = match key {
        Some(k) => {
            opened = stored.to_vec();
            let range = k
                .open_in_place(&mut opened)
                .ok_or_else(|| damaged("authentication failed"))?;
            &opened[range]
        }
        None => stored,
    };
    let (flag, body) = plain.split_first().ok_or_else(|| damaged("empty"))?;
    let data = match *flag {
        FLAG_ZSTD => {
            let mut out = Vec::with_capacity(raw_length as usize);
            with_codec(|c| {
                c.decompressor
                    .decompress_to_buffer(body, &mut out)
                    .map_err(|e| damaged(&format!("decompress: {e}")))
            })?;
            out
        }
        0 => body.to_vec(),
        other => return Err(damaged(&format!("unknown flag {other}"))),
    };
    if data.len() != raw_length as usize || (check_id && ChunkId::of(&data) != *id) {
        return Err(damaged("content does not match its id"));
    }
    Ok(data)
}

/// Seals a metadata document (index, snapshot): zstd JSON, encrypted when keyed.
pub fn encode_doc<T: Serialize>(doc: &T, key: Option<&MasterKey>) -> Result<Vec<u8>, RepoError> {
    let json = serde_json::to_vec(doc).map_err(|e| RepoError::local("serialize", e))?;
    let z = zstd::bulk::compress(&json, 3).map_err(|e| RepoError::local("compress", e))?;
    match key {
        Some(k) => k.seal(&z),
        None => Ok(z),
    }
}

/// Largest metadata document accepted (decompressed).
const MAX_DOC: usize = 1 << 30;

pub fn decode_doc<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    key: Option<&MasterKey>,
    what: &str,
) -> Result<T, RepoError> {
    let opened;
    let z: &[u8] = match key {
        Some(k) => {
            opened = k.open(bytes).ok_or_else(|| {
                RepoError::Damaged(format!(
                    "{what}: authentication failed (damaged, or another key)"
                ))
            })?;
            &opened
        }
        None => bytes,
    };
    let json = zstd::bulk::decompress(z, MAX_DOC)
        .map_err(|e| RepoError::Damaged(format!("{what}: decompress: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| RepoError::Damaged(format!("{what}: {e}")))
}

/// Bytes after a pack's trailer: the trailer's length, u32 little-endian.
pub const FOOTER_LEN: u64 = 4;

/// The length a pack was written with, from `tail`, its last bytes (at least its trailer
/// and footer): the end of its last blob, as its trailer lists them, plus the trailer and
/// the footer. [`PackBuilder`] lays the blobs end to end from offset 0 and the trailer
/// right after them, so a whole pack's tail gives back the pack's own size.
///
/// A pack cut short has no such tail: its last four bytes are then part of a blob or of
/// the trailer, and what they point at does not open as a trailer (sealed, hence
/// authenticated, when the repository is encrypted; a zstd frame of JSON otherwise).
/// That is `Damaged`.
pub fn written_length(tail: &[u8], key: Option<&MasterKey>) -> Result<u64, RepoError> {
    let footer_at = tail
        .len()
        .checked_sub(FOOTER_LEN as usize)
        .ok_or_else(|| RepoError::Damaged("no room for its footer".into()))?;
    let mut footer = [0u8; FOOTER_LEN as usize];
    footer.copy_from_slice(&tail[footer_at..]);
    let trailer_len = u32::from_le_bytes(footer) as usize;
    let trailer_at = footer_at.checked_sub(trailer_len).ok_or_else(|| {
        RepoError::Damaged(format!(
            "its footer names a {trailer_len}-byte trailer, longer than the \
             {footer_at} bytes read before it"
        ))
    })?;
    let entries: Vec<(ChunkId, u64, u32, u32)> =
        decode_doc(&tail[trailer_at..footer_at], key, "trailer")?;
    // Saturating: the offsets of an unencrypted trailer are whatever its bytes say.
    let blobs_end = entries
        .iter()
        .map(|&(_, offset, length, _)| offset.saturating_add(u64::from(length)))
        .max()
        .unwrap_or(0);
    Ok(blobs_end
        .saturating_add(trailer_len as u64)
        .saturating_add(FOOTER_LEN))
}

/// Pack buffers are aligned to the page, so the local backend can write them with
/// `O_DIRECT`: the disk reads them in place instead of the kernel copying them into the
/// page cache (a copy that cost a third of a backup's system time).
pub const PACK_ALIGN: usize = 4096;

/// A page-aligned buffer for a whole pack, written or read with `O_DIRECT`.
pub type PackBuf = AVec<u8, ConstAlign<PACK_ALIGN>>;

/// A finished pack's bytes, page-aligned (see [`PACK_ALIGN`]).
pub struct PackBytes(PackBuf);

impl AsRef<[u8]> for PackBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PackBytes {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn into_bytes(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self)
    }
}

/// Collects blobs into one pack.
pub struct PackBuilder {
    buf: PackBuf,
    entries: Vec<(ChunkId, u64, u32, u32)>,
}

impl PackBuilder {
    /// A builder for a pack that is finished once it reaches `pack_size`: its buffer has
    /// room for that, the last blob (≤ 4 MiB and a little) and the trailer, so it never
    /// grows (and copies itself) on the way.
    pub fn for_pack(pack_size: usize) -> Self {
        Self {
            buf: AVec::with_capacity(PACK_ALIGN, pack_size + 5 * 1024 * 1024),
            entries: Vec::new(),
        }
    }

    pub fn add(&mut self, id: ChunkId, raw_length: u32, blob: &[u8]) {
        let offset = self.buf.len() as u64;
        self.buf.extend_from_slice(blob);
        self.entries
            .push((id, offset, blob.len() as u32, raw_length));
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pack's name, its bytes, and its index entries.
    ///
    /// The name is the SHA-256 of the trailer and 16 random bytes: the trailer lists every
    /// blob's chunk id (a hash of its content), offset and length, so it names the pack
    /// without hashing every stored byte a second time; the random bytes make every
    /// upload's name its own. Architecture Invariant: no upload ever replaces an existing
    /// pack object — garbage collection relies on it (a pack it scheduled and deletes can
    /// never be one a writer stored again with the same bytes).
    pub fn finish(
        mut self,
        key: Option<&MasterKey>,
    ) -> Result<(String, PackBytes, Vec<IndexEntry>), RepoError> {
        let trailer_entries: Vec<(ChunkId, u64, u32, u32)> = self.entries.clone();
        let mut trailer = encode_doc(&trailer_entries, key)?;
        trailer.extend_from_slice(&(trailer.len() as u32).to_le_bytes());
        let mut named = Sha256::new();
        named.update(&trailer);
        named.update(rand::random::<[u8; 16]>());
        let name = hex::encode(named.finalize());
        self.buf.extend_from_slice(&trailer);
        let entries = self
            .entries
            .into_iter()
            .map(|(id, offset, length, raw_length)| IndexEntry {
                id,
                location: Location {
                    pack: name.clone(),
                    offset,
                    length,
                    raw_length,
                },
            })
            .collect();
        Ok((name, PackBytes(self.buf), entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_detect_damage() {
        let data = b"hello hello hello hello hello hello".repeat(100);
        let id = ChunkId::of(&data);
        let blob = encode_blob(&data, None).expect("encode");
        assert!(blob.len() < data.len(), "text compresses");
        assert_eq!(
            decode_blob(&blob, &id, data.len() as u32, None).expect("decode"),
            data
        );
        let mut bad = blob.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(decode_blob(&bad, &id, data.len() as u32, None).is_err());
    }

    #[test]
    fn sealed_blobs_need_the_key() {
        let (_, key) = crate::crypto::create(&crate::crypto::KeySource::Passphrase(
            "correct horse".into(),
        ))
        .expect("create")
        .expect("keyed");
        let data = b"MARKER-PLAINTEXT".repeat(64);
        let id = ChunkId::of(&data);
        let blob = encode_blob(&data, Some(&key)).expect("encode");
        assert!(!blob.windows(16).any(|w| w == b"MARKER-PLAINTEXT"));
        assert_eq!(
            decode_blob(&blob, &id, data.len() as u32, Some(&key)).expect("decode"),
            data
        );
        assert!(decode_blob(&blob, &id, data.len() as u32, None).is_err());
    }
}

#[cfg(test)]
mod length_tests {
    use super::*;

    /// A pack's tail gives back its length, and no cut of it gives back its own length:
    /// checked at every length, for a plain and an encrypted pack.
    #[test]
    fn a_pack_knows_its_written_length_and_no_cut_of_it_passes() {
        let (_, key) = crate::crypto::create(&crate::crypto::KeySource::Passphrase(
            "correct horse".into(),
        ))
        .expect("create")
        .expect("keyed");
        for key in [None, Some(&key)] {
            let mut builder = PackBuilder::for_pack(1 << 20);
            for data in [b"rewritten\n".to_vec(), b"page 7\n".repeat(300)] {
                let blob = encode_blob(&data, key).expect("encode");
                builder.add(ChunkId::of(&data), data.len() as u32, &blob);
            }
            let (_, bytes, entries) = builder.finish(key).expect("finish");
            let pack = bytes.as_ref();
            let blobs_end = entries
                .iter()
                .map(|e| e.location.offset + u64::from(e.location.length))
                .max()
                .expect("blobs");
            let len = pack.len() as u64;
            assert_eq!(written_length(pack, key).expect("whole"), len);
            // As verify reads it: from the end of the last blob.
            let tail = &pack[blobs_end as usize..];
            assert_eq!(written_length(tail, key).expect("whole"), len);
            for cut in 0..pack.len() {
                let short = &pack[..cut];
                let from_blobs_end = short.get(blobs_end as usize..).unwrap_or_default();
                for tail in [short, from_blobs_end] {
                    if let Ok(written) = written_length(tail, key) {
                        assert_ne!(written, cut as u64, "cut to {cut} of {len} passed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod checksum_tests {
    use super::*;

    #[test]
    fn compressed_blobs_check_themselves() {
        let data = b"a compressible line of text\n".repeat(2000);
        let id = ChunkId::of(&data);
        let blob = encode_blob(&data, None).expect("encode");
        assert!(self_checking(&blob), "zstd frames carry a content checksum");
        assert_eq!(
            decode_blob_checked(&blob, &id, data.len() as u32, None, false).expect("decode"),
            data
        );
        // A flipped byte inside the frame fails even without hashing the chunk.
        let mut bad = blob.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x10;
        assert!(decode_blob_checked(&bad, &id, data.len() as u32, None, false).is_err());
        // Random bytes are stored as they are, and are not self-checking.
        let noise: Vec<u8> = (0..40_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let raw = encode_blob(&noise, None).expect("encode");
        assert!(!self_checking(&raw) || raw[0] == FLAG_ZSTD);
    }
}
