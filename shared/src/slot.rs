//! Redis Cluster hash slots (SPEC 2.2): which slot a key lives in, for clients that
//! group keys by node (the relay's `NSCACHE.DEL` per slot). nscache stores an entry
//! under a name in the same slot as its key, so the key's slot is the entry's.

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The slot of `key`, as `CLUSTER KEYSLOT` computes it: CRC16 (XMODEM) of the key's
/// hash tag (the bytes between the first `{` and the next `}`, when not empty), or
/// of the whole key, modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS
}

/// The hash tag of `key`, if it has a non-empty one.
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let len = rest.iter().position(|&b| b == b'}')?;
    (len > 0).then(|| &rest[..len])
}

/// CRC16-CCITT (XMODEM), the checksum of Redis Cluster's key slots.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag hashes the whole key; only the first `{` counts.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"a{b"), crc16(b"a{b") % SLOTS);
        assert_eq!(hash_tag(b"x{y}z"), Some(&b"y"[..]));
        assert_eq!(hash_tag(b"x{}z"), None);
    }
}
