//! The journal's hash chain: how a record line is sealed (`"prev"`: the previous record's
//! hash, `"hash"`: SHA-256 of the line without its own `"hash"` member) and how a journal
//! is verified line by line (`gateway audit verify`). The chain runs across files: the
//! first record of a file reopened for log rotation links to the last record of the file
//! before it, and a hub that starts on a non-empty journal continues its chain.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// A record's hash: SHA-256.
pub type Hash = [u8; 32];

/// What the first record of a new chain links to.
pub const GENESIS: Hash = [0; 32];

/// Lowercase hex of a hash (64 characters).
pub fn hex(h: &Hash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in h {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn unhex(s: &str) -> Option<Hash> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// `,"hash":"` + 64 hex digits + `"}`: the fixed-size end of every sealed line.
const SEAL_LEN: usize = 9 + 64 + 2;

/// Seals the JSON object that ends `buf` (from `start`; it already carries `"prev"`):
/// appends its `"hash"` member and the newline. Returns the hash.
pub fn seal(buf: &mut Vec<u8>, start: usize) -> Hash {
    let digest = ring::digest::digest(&ring::digest::SHA256, &buf[start..]);
    let mut hash = GENESIS;
    hash.copy_from_slice(digest.as_ref());
    // The object ends in `}`: reopen it for the last member.
    buf.pop();
    buf.extend_from_slice(b",\"hash\":\"");
    buf.extend_from_slice(hex(&hash).as_bytes());
    buf.extend_from_slice(b"\"}\n");
    hash
}

/// Why a line is not a sound link of the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// Not a sealed journal record (truncated, not JSON, no `hash`).
    #[error("not a sealed journal record")]
    NotARecord,
    /// The record's content does not match its hash: it was altered.
    #[error("the record does not match its hash (altered)")]
    Altered,
    /// The record does not link to the one before it: a record was removed, inserted or
    /// reordered, or the files are not consecutive.
    #[error("does not link to the previous record (a record was removed, inserted or reordered)")]
    Unlinked,
}

/// Checks one line (without its newline) against the previous hash (`None`: the first
/// record of the first file, which may link to anything); returns its hash.
pub fn check_line(line: &[u8], prev: Option<&Hash>) -> Result<Hash, Broken> {
    let (claimed, body_end) = sealed_hash(line).ok_or(Broken::NotARecord)?;
    let mut body = Vec::with_capacity(body_end + 1);
    body.extend_from_slice(&line[..body_end]);
    body.push(b'}');
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|_| Broken::NotARecord)?;
    let linked = value
        .get("prev")
        .and_then(serde_json::Value::as_str)
        .and_then(unhex)
        .ok_or(Broken::NotARecord)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &body);
    if digest.as_ref() != claimed {
        return Err(Broken::Altered);
    }
    if prev.is_some_and(|p| *p != linked) {
        return Err(Broken::Unlinked);
    }
    Ok(claimed)
}

/// The hash a sealed line claims and where its body ends (before `,"hash":…`).
fn sealed_hash(line: &[u8]) -> Option<(Hash, usize)> {
    let body_end = line.len().checked_sub(SEAL_LEN)?;
    let seal = &line[body_end..];
    let hex_part = seal.strip_prefix(b",\"hash\":\"")?.strip_suffix(b"\"}")?;
    Some((unhex(std::str::from_utf8(hex_part).ok()?)?, body_end))
}

/// The outcome of verifying one journal file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every line is a sealed record linked to the one before.
    Sound {
        /// Records checked.
        records: u64,
        /// The last record's hash (what the next file's first record links to).
        last: Option<Hash>,
    },
    /// The first line that breaks the chain.
    Broken {
        /// 1-based line number.
        line: u64,
        /// Why.
        why: Broken,
    },
}

/// Verifies a journal read from `input`. `prev` is the last hash of the file before it
/// (`None` for the first file: its first record may link to anything).
pub fn verify(input: impl Read, prev: Option<Hash>) -> std::io::Result<Verdict> {
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::with_capacity(512);
    let (mut n, mut last) = (0u64, prev);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(Verdict::Sound { records: n, last });
        }
        n += 1;
        // A line without its newline is a record cut short (a crash or a full disk).
        let Some(text) = line.strip_suffix(b"\n") else {
            return Ok(Verdict::Broken {
                line: n,
                why: Broken::NotARecord,
            });
        };
        match check_line(text, last.as_ref()) {
            Ok(h) => last = Some(h),
            Err(why) => return Ok(Verdict::Broken { line: n, why }),
        }
    }
}

/// Where a journal already on disk leaves the chain: the last record's hash, and whether
/// the file ends mid-line (a record cut short, which the next one must not run into).
/// `None` as hash when the file is empty, not a regular file, or its last line is not a
/// sealed record (the new records then start a new chain, which `verify` reports).
pub fn resume(path: &Path) -> std::io::Result<(Option<Hash>, bool)> {
    let meta = match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() > 0 => m,
        _ => return Ok((None, false)),
    };
    let mut f = File::open(path)?;
    let tail_len = meta.len().min(TAIL_BYTES);
    f.seek(SeekFrom::Start(meta.len() - tail_len))?;
    let mut tail = Vec::with_capacity(tail_len as usize);
    f.read_to_end(&mut tail)?;
    let cut_short = tail.last() != Some(&b'\n');
    let complete = match tail.iter().rposition(|&b| b == b'\n') {
        Some(end) => &tail[..end],
        None => return Ok((None, cut_short)),
    };
    let last_line = complete.rsplit(|&b| b == b'\n').next().unwrap_or_default();
    let hash = sealed_hash(last_line).map(|(h, _)| h);
    Ok((hash, cut_short))
}

/// How much of an existing journal is read to find its last record (records are a few
/// hundred bytes).
const TAIL_BYTES: u64 = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(bodies: &[&str], first: Hash) -> (Vec<u8>, Hash) {
        let mut buf = Vec::new();
        let mut prev = first;
        for b in bodies {
            let start = buf.len();
            buf.extend_from_slice(format!("{{{b},\"prev\":\"{}\"}}", hex(&prev)).as_bytes());
            prev = seal(&mut buf, start);
        }
        (buf, prev)
    }

    fn verdict(bytes: &[u8], prev: Option<Hash>) -> Verdict {
        verify(bytes, prev).expect("in-memory read")
    }

    #[test]
    fn a_sealed_chain_verifies_and_reports_its_last_hash() {
        let (buf, last) = chain(&["\"a\":1", "\"b\":\"x\"", "\"c\":null"], GENESIS);
        assert_eq!(
            verdict(&buf, None),
            Verdict::Sound {
                records: 3,
                last: Some(last)
            }
        );
        assert_eq!(hex(&last).len(), 64);
        assert_eq!(unhex(&hex(&last)), Some(last));
    }

    #[test]
    fn an_altered_record_is_reported_at_its_line() {
        let (buf, _) = chain(
            &["\"code\":\"ok\"", "\"code\":\"ok\"", "\"code\":\"ok\""],
            GENESIS,
        );
        let text = String::from_utf8(buf).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        let altered = format!(
            "{}\n{}\n{}\n",
            lines[0],
            lines[1].replace("\"ok\"", "\"no\""),
            lines[2]
        );
        assert_eq!(
            verdict(altered.as_bytes(), None),
            Verdict::Broken {
                line: 2,
                why: Broken::Altered
            }
        );
    }

    #[test]
    fn a_removed_or_reordered_record_breaks_the_link() {
        let (buf, _) = chain(&["\"n\":1", "\"n\":2", "\"n\":3"], GENESIS);
        let text = String::from_utf8(buf).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        let removed = format!("{}\n{}\n", lines[0], lines[2]);
        let reordered = format!("{}\n{}\n{}\n", lines[1], lines[0], lines[2]);
        for broken in [removed, reordered] {
            assert_eq!(
                verdict(broken.as_bytes(), None),
                Verdict::Broken {
                    line: 2,
                    why: Broken::Unlinked
                }
            );
        }
    }

    #[test]
    fn files_link_across_rotation_and_a_wrong_predecessor_is_caught() {
        let (_, last) = chain(&["\"n\":1", "\"n\":2"], GENESIS);
        let (second, _) = chain(&["\"n\":3"], last);
        assert!(matches!(
            verdict(&second, Some(last)),
            Verdict::Sound { records: 1, .. }
        ));
        let (_, other) = chain(&["\"n\":9"], GENESIS);
        assert_eq!(
            verdict(&second, Some(other)),
            Verdict::Broken {
                line: 1,
                why: Broken::Unlinked
            }
        );
    }

    #[test]
    fn garbage_truncation_and_a_missing_newline_are_not_records() {
        let (buf, _) = chain(&["\"n\":1"], GENESIS);
        for bad in [
            b"not json at all\n".to_vec(),
            buf[..buf.len() - 1].to_vec(),
            buf[..buf.len() - 20].to_vec(),
        ] {
            assert_eq!(
                verdict(&bad, None),
                Verdict::Broken {
                    line: 1,
                    why: Broken::NotARecord
                },
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
        assert_eq!(
            verdict(b"", None),
            Verdict::Sound {
                records: 0,
                last: None
            }
        );
    }

    #[test]
    fn resume_finds_the_last_hash_and_a_cut_short_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        assert_eq!(resume(&path).expect("missing"), (None, false));
        let (buf, last) = chain(&["\"n\":1", "\"n\":2"], GENESIS);
        std::fs::write(&path, &buf).expect("write");
        assert_eq!(resume(&path).expect("read"), (Some(last), false));
        let mut cut = buf.clone();
        cut.extend_from_slice(b"{\"n\":3,\"pr");
        std::fs::write(&path, &cut).expect("write");
        assert_eq!(resume(&path).expect("read"), (Some(last), true));
        std::fs::write(&path, b"{\"legacy\":true}\n").expect("write");
        assert_eq!(resume(&path).expect("read"), (None, false));
    }
}
