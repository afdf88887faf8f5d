//! Unsigned LEB128, the variable-length integer of group-key encodings and
//! of ClickHouse's `RowBinary` lengths: seven bits a byte, low bits first,
//! the high bit set on every byte but the last. Any length under 128 takes
//! one byte.

/// Appends `n`.
#[inline]
pub fn write(out: &mut Vec<u8>, n: usize) {
    let mut n = n as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a number from the front of `bytes`; returns it and the bytes after
/// it, or `None` when `bytes` ends inside it or it runs past 10 bytes.
#[inline]
pub fn read(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut n = 0_u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        n |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((n as usize, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches_the_reference_bytes() {
        for (n, bytes) in [
            (0_usize, vec![0_u8]),
            (127, vec![0x7F]),
            (128, vec![0x80, 0x01]),
            (300, vec![0xAC, 0x02]),
            (16_384, vec![0x80, 0x80, 0x01]),
        ] {
            let mut out = Vec::new();
            write(&mut out, n);
            assert_eq!(out, bytes, "{n}");
            out.push(9);
            assert_eq!(read(&out), Some((n, &[9_u8][..])));
        }
    }

    #[test]
    fn a_cut_or_endless_number_is_none() {
        assert_eq!(read(&[0x80]), None);
        assert_eq!(read(&[0xFF; 11]), None);
        assert_eq!(read(&[]), None);
    }
}
