//! Where the ext file system is in a raw disk image: the whole disk, or a
//! partition of an MBR or GPT table, read directly (no mounts, no loop
//! devices, no root).

use std::fs;
use std::path::Path;

/// The byte offset of the ext file system in a raw disk: the whole disk, or
/// the largest MBR or GPT partition that holds one.
pub(crate) fn find_ext_filesystem(raw: &Path) -> Result<u64, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(raw).map_err(|e| e.to_string())?;
    let mut read_at = |offset: u64, len: usize| -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        file.seek(SeekFrom::Start(offset)).ok()?;
        file.read_exact(&mut buf).ok()?;
        Some(buf)
    };
    let has_ext = |read_at: &mut dyn FnMut(u64, usize) -> Option<Vec<u8>>, offset: u64| {
        // The superblock starts 1024 bytes in; its magic 0xEF53 is at byte 56.
        read_at(offset + 1024 + 56, 2).is_some_and(|m| m == [0x53, 0xEF])
    };
    if has_ext(&mut read_at, 0) {
        return Ok(0);
    }
    let mbr = read_at(0, 512).ok_or("the disk is smaller than one sector")?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Err("neither an ext file system nor a partitioned disk".into());
    }
    let mut partitions: Vec<(u64, u64)> = Vec::new();
    let entries: Vec<&[u8]> = (0..4)
        .map(|i| &mbr[446 + 16 * i..446 + 16 * (i + 1)])
        .collect();
    if entries.iter().any(|e| e[4] == 0xEE) {
        // GPT: header at LBA 1, entries where it says.
        let header = read_at(512, 92).ok_or("truncated GPT header")?;
        if &header[0..8] != b"EFI PART" {
            return Err("protective MBR without a GPT header".into());
        }
        let le = |b: &[u8]| {
            b.iter()
                .rev()
                .fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
        };
        // Every number here comes from the file, which may be anything (an
        // imported image): arithmetic is checked, and only what a GPT entry
        // can be is read (128 bytes times a power of two, UEFI 2.10
        // §5.3.2; at most 4 KiB), so no value can overflow or make a
        // large allocation.
        let start = le(&header[72..80]).checked_mul(512);
        let count = le(&header[80..84]);
        let size = le(&header[84..88]);
        let size_ok = (128..=4096).contains(&size) && size.is_power_of_two();
        if let (Some(start), true) = (start, size_ok) {
            for i in 0..count.min(256) {
                let Some(at) = i.checked_mul(size).and_then(|off| off.checked_add(start)) else {
                    break;
                };
                if let Some(entry) = read_at(at, size as usize) {
                    let (first, last) = (le(&entry[32..40]), le(&entry[40..48]));
                    let bytes = (last.checked_sub(first))
                        .and_then(|n| n.checked_add(1))
                        .and_then(|n| n.checked_mul(512));
                    if let (true, Some(offset), Some(bytes)) =
                        (first > 0, first.checked_mul(512), bytes)
                    {
                        partitions.push((offset, bytes));
                    }
                }
            }
        }
    } else {
        for e in entries {
            let le32 = |b: &[u8]| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            let (first, sectors) = (le32(&e[8..12]), le32(&e[12..16]));
            if e[4] != 0 && sectors > 0 {
                partitions.push((first * 512, sectors * 512));
            }
        }
    }
    partitions
        .into_iter()
        .filter(|(offset, _)| {
            offset
                .checked_add(1024 + 56)
                .is_some_and(|_| has_ext(&mut read_at, *offset))
        })
        .max_by_key(|(_, size)| *size)
        .map(|(offset, _)| offset)
        .ok_or_else(|| "no partition holds an ext file system".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_file_systems_are_found_bare_and_in_partitions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fs_bytes = vec![0u8; 4096];
        fs_bytes[1024 + 56] = 0x53;
        fs_bytes[1024 + 57] = 0xEF;
        let bare = dir.path().join("bare.raw");
        fs::write(&bare, &fs_bytes).expect("write");
        assert_eq!(find_ext_filesystem(&bare), Ok(0));

        // MBR with a small non-ext partition at sector 8 and the ext one at 2048.
        let mut disk = vec![0u8; 2048 * 512 + 4096];
        let entry = |disk: &mut Vec<u8>, i: usize, kind: u8, first: u32, sectors: u32| {
            let at = 446 + 16 * i;
            disk[at + 4] = kind;
            disk[at + 8..at + 12].copy_from_slice(&first.to_le_bytes());
            disk[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
        };
        entry(&mut disk, 0, 0x0b, 8, 16);
        entry(&mut disk, 1, 0x83, 2048, 8);
        disk[510] = 0x55;
        disk[511] = 0xAA;
        disk[2048 * 512..].copy_from_slice(&fs_bytes);
        let mbr = dir.path().join("mbr.raw");
        fs::write(&mbr, &disk).expect("write");
        assert_eq!(find_ext_filesystem(&mbr), Ok(2048 * 512));

        let junk = dir.path().join("junk.raw");
        fs::write(&junk, vec![1u8; 4096]).expect("write");
        assert!(find_ext_filesystem(&junk).is_err());
    }

    #[test]
    fn any_bytes_in_a_partition_table_give_an_answer_not_a_panic() {
        // A protective MBR and a GPT header whose fields are arbitrary: a
        // simple generator (xorshift) fills them, thousands of times,
        // including the extremes.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.raw");
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..2000 {
            let mut disk = vec![0u8; 64 * 512];
            disk[446 + 4] = 0xEE;
            disk[510] = 0x55;
            disk[511] = 0xAA;
            disk[512..520].copy_from_slice(b"EFI PART");
            for byte in disk[520..604].iter_mut() {
                *byte = next() as u8;
            }
            let extremes = [0u64, 1, 2, 127, 128, 4096, u64::from(u32::MAX), u64::MAX];
            let pick = |r: u64| extremes[(r % extremes.len() as u64) as usize];
            if round % 2 == 0 {
                disk[584..592].copy_from_slice(&pick(next()).to_le_bytes());
                disk[592..596].copy_from_slice(&(pick(next()) as u32).to_le_bytes());
                disk[596..600].copy_from_slice(&(pick(next()) as u32).to_le_bytes());
            }
            // Entries at LBA 2 with arbitrary first and last sectors.
            for byte in disk[1024..1024 + 128 * 8].iter_mut() {
                *byte = next() as u8;
            }
            fs::write(&path, &disk).expect("write");
            let _ = find_ext_filesystem(&path);
        }
    }
}
