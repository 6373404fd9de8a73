//! Mapping of `(prefix, key)` to the Redis key that stores the entry (SPEC 2.2).
//!
//! The stored name must hash to the same cluster slot as `key` alone, so cluster
//! clients that route on the declared `key` argument reach the node that owns the
//! entry. A key without a hash tag is wrapped as `prefix:{key}`, which makes the
//! whole key the tag; a key that already has a valid tag keeps it as `prefix:key`.

use crate::error::CacheError;

/// How the stored name was derived from the user's key; kept in the entry so two
/// user keys that map to the same stored name (`a` and `{a}`) never read each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyForm {
    /// `prefix:{key}`: the key had no hash tag.
    Wrapped,
    /// `prefix:key`: the key carries its own hash tag.
    Tagged,
}

/// The hash tag of `key` as Redis Cluster defines it, if there is one (the shared
/// crate's, which the relay groups keys by: one definition for both).
pub use cachetx_shared::slot::hash_tag;

/// Decides how `key` is stored, refusing keys whose slot a wrapper cannot keep.
pub fn key_form(key: &[u8]) -> Result<KeyForm, CacheError> {
    // Most keys hold no brace at all: a word-at-a-time scan settles them
    // without the searches below.
    if !has_brace(key) {
        return if key.is_empty() {
            Err(CacheError::EmptyKey)
        } else {
            Ok(KeyForm::Wrapped)
        };
    }
    if hash_tag(key).is_some() {
        Ok(KeyForm::Tagged)
    } else if key.is_empty() {
        // `prefix:{}` has an empty tag, so it would hash as a whole and leave
        // the slot of the empty key.
        Err(CacheError::EmptyKey)
    } else if key.contains(&b'}') {
        // Inside `{key}` the first `}` of the key would end the tag early.
        Err(CacheError::UnroutableKey)
    } else {
        Ok(KeyForm::Wrapped)
    }
}

/// Writes the stored name of `key` in namespace `prefix` into `out` (cleared first).
pub fn stored_name_into(prefix: &str, key: &[u8], form: KeyForm, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(prefix.len() + key.len() + 3);
    out.extend_from_slice(prefix.as_bytes());
    out.push(b':');
    match form {
        KeyForm::Wrapped => {
            out.push(b'{');
            out.extend_from_slice(key);
            out.push(b'}');
        }
        KeyForm::Tagged => out.extend_from_slice(key),
    }
}

/// Whether `key` holds a `{` or a `}`, eight bytes at a time.
fn has_brace(key: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero iff the same byte of the result has its top bit
    // set (exact for the lowest zero byte, which is all an "any" needs).
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS != 0;
    let word_has_brace =
        |w: u64| has_zero(w ^ (ONES * u64::from(b'{'))) || has_zero(w ^ (ONES * u64::from(b'}')));
    let mut words = key.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        if word_has_brace(u64::from_le_bytes(bytes)) {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b == b'{' || b == b'}')
}

/// Writes the stored name of `key` in namespace `prefix` at the start of
/// `out` and returns it; None (nothing written) when `out` is too short.
pub fn stored_name_in<'b>(
    prefix: &str,
    key: &[u8],
    form: KeyForm,
    out: &'b mut [u8],
) -> Option<&'b [u8]> {
    let (open, close): (&[u8], &[u8]) = match form {
        KeyForm::Wrapped => (b":{", b"}"),
        KeyForm::Tagged => (b":", b""),
    };
    let len = prefix.len() + open.len() + key.len() + close.len();
    let name = out.get_mut(..len)?;
    let (p, rest) = name.split_at_mut(prefix.len());
    p.copy_from_slice(prefix.as_bytes());
    let (o, rest) = rest.split_at_mut(open.len());
    o.copy_from_slice(open);
    let (k, c) = rest.split_at_mut(key.len());
    k.copy_from_slice(key);
    c.copy_from_slice(close);
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cachetx_shared::slot::{crc16, key_slot};

    fn stored_name(prefix: &str, key: &[u8], form: KeyForm) -> Vec<u8> {
        let mut out = Vec::new();
        stored_name_into(prefix, key, form, &mut out);
        out
    }

    fn store(prefix: &str, key: &[u8]) -> Result<Vec<u8>, CacheError> {
        key_form(key).map(|form| stored_name(prefix, key, form))
    }

    #[test]
    fn crc16_matches_the_cluster_spec_vector() {
        // Reference value from the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
    }

    #[test]
    fn hash_tag_follows_first_open_and_first_close() {
        assert_eq!(hash_tag(b"{a}"), Some(&b"a"[..]));
        assert_eq!(hash_tag(b"x{a}{b}"), Some(&b"a"[..]));
        assert_eq!(hash_tag(b"{}a"), None);
        assert_eq!(hash_tag(b"a{b"), None);
        assert_eq!(hash_tag(b"}{a}"), Some(&b"a"[..]));
        assert_eq!(hash_tag(b"{{a}"), Some(&b"{a"[..]));
    }

    #[test]
    fn names_built_in_place_match_the_vector_form() {
        for (key, form) in [
            (&b"42"[..], KeyForm::Wrapped),
            (b"user:{7}:x", KeyForm::Tagged),
            (b"", KeyForm::Wrapped),
        ] {
            let mut buffer = [0u8; 32];
            let name = stored_name_in("ns", key, form, &mut buffer).map(<[u8]>::to_vec);
            assert_eq!(name, Some(stored_name("ns", key, form)), "{key:?}");
        }
        let mut small = [0u8; 6];
        assert_eq!(
            stored_name_in("ns", b"42", KeyForm::Wrapped, &mut small),
            None
        );
        assert_eq!(
            stored_name_in("ns", b"4", KeyForm::Wrapped, &mut small),
            Some(&b"ns:{4}"[..])
        );
    }

    #[test]
    fn brace_scan_finds_every_position() {
        for len in 0..40 {
            assert!(!has_brace(&vec![b'z'; len]));
            assert!(!has_brace(&vec![0x7c; len]), "| sits between the braces");
            for at in 0..len {
                for brace in [b'{', b'}'] {
                    let mut key = vec![0xffu8; len];
                    key[at] = brace;
                    assert!(has_brace(&key), "{brace} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn plain_keys_are_wrapped() {
        assert_eq!(store("p", b"42").unwrap(), b"p:{42}");
        assert_eq!(store("p", b"a{b").unwrap(), b"p:{a{b}");
        assert_eq!(store("p", b"\0\r\n").unwrap(), b"p:{\0\r\n}");
    }

    #[test]
    fn tagged_keys_keep_their_tag() {
        assert_eq!(store("p", b"user:{7}:x").unwrap(), b"p:user:{7}:x");
        assert_eq!(store("p", b"{7}").unwrap(), b"p:{7}");
    }

    #[test]
    fn keys_that_cannot_keep_their_slot_are_refused() {
        assert_eq!(store("p", b"a}b"), Err(CacheError::UnroutableKey));
        assert_eq!(store("p", b"{}x}"), Err(CacheError::UnroutableKey));
        // Only the first `{` opens a tag: these have none, yet hold a `}`.
        assert_eq!(store("p", b"{}a{b}"), Err(CacheError::UnroutableKey));
        assert_eq!(store("p", b"x{}"), Err(CacheError::UnroutableKey));
        assert_eq!(store("p", b""), Err(CacheError::EmptyKey));
    }

    #[test]
    fn every_accepted_key_keeps_its_slot() {
        let samples: [&[u8]; 10] = [
            b"1",
            b"candidate:42",
            b"{tag}rest",
            b"a{b",
            b"{{x}",
            b"}{y}",
            b"\xff\x00\x01",
            b"{",
            b"a{b{c",
            b"user:{7}:x",
        ];
        for key in samples {
            let stored = store("ns.v-1_x", key).unwrap();
            assert_eq!(key_slot(&stored), key_slot(key), "key {key:?}");
        }
    }
}
