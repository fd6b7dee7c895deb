//! The consent snapshot decoders (`consent-cache`): JSON Lines (`.jsonl`) and the binary
//! `.snap` format, through `ConsentStore::load` on a file, as the gateway loads them.
//!
//! Input for `.jsonl`: the file. Input for `.snap`: one flags byte, then the file; with
//! bit 0 set the harness first rewrites the header and block CRC-32s to match the bytes
//! (otherwise nearly every mutation would stop at a checksum and the decoder behind it
//! would go unexplored). What must hold for a file that loads: the store written back as
//! `.snap` loads again with the same version and the same records.

use std::path::Path;

use consent_cache::{ConsentStore, MAGIC};

const HEADER_LEN: usize = 40;
const BLOCK_HEADER_LEN: usize = 12;

/// Runs one `.jsonl` input.
pub fn run_jsonl(data: &[u8]) {
    load_and_check("snapshot_jsonl", "in.jsonl", data);
}

/// Runs one `.snap` input.
pub fn run_bin(data: &[u8]) {
    let Some((&flags, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if flags & 1 == 1 {
        fix_checksums(&mut file);
    }
    load_and_check("snapshot_bin", "in.snap", &file);
}

fn load_and_check(target: &str, name: &str, bytes: &[u8]) {
    let dir = crate::scratch::dir(target);
    let path = dir.join(name);
    crate::scratch::write(&path, bytes);
    if let Ok(store) = ConsentStore::load(&path) {
        assert_rewrites(&store, &dir.join("again.snap"));
    }
}

/// The store survives a write and a load of the binary format unchanged.
fn assert_rewrites(store: &ConsentStore, path: &Path) {
    let written = match store.write_snapshot(path) {
        Ok(n) => n,
        Err(e) => panic!("a loaded store does not write: {e}"),
    };
    assert_eq!(written, store.len(), "records written");
    let again = match ConsentStore::load(path) {
        Ok(s) => s,
        Err(e) => panic!("a snapshot the store wrote does not load: {e}"),
    };
    assert_eq!(again.version(), store.version(), "version");
    assert_eq!(again.len(), store.len(), "record count");
    for c in store.iter() {
        let Some(d) = again.get(c.id()) else {
            panic!("a record is missing after the round trip");
        };
        assert_eq!(
            d.to_record(),
            c.to_record(),
            "a record changed in the round trip"
        );
    }
}

/// Recomputes the header CRC and every block CRC the framing reaches.
pub fn fix_checksums(file: &mut [u8]) {
    if file.len() < HEADER_LEN || file[..MAGIC.len()] != MAGIC {
        return;
    }
    let crc = crc32fast::hash(&file[..36]);
    file[36..40].copy_from_slice(&crc.to_le_bytes());
    let mut pos = HEADER_LEN;
    while let Some(head) = file.get(pos..pos + BLOCK_HEADER_LEN) {
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let end = pos + BLOCK_HEADER_LEN + len;
        let Some(payload) = file.get(pos + BLOCK_HEADER_LEN..end) else {
            return;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&head[..4]);
        h.update(payload);
        let crc = h.finalize();
        file[pos + 8..pos + 12].copy_from_slice(&crc.to_le_bytes());
        pos = end;
    }
}
