//! Keyed hashing of identities.
//!
//! Identities are attacker-chosen strings and they pick a slot in a bounded
//! table, so the hash must be keyed: with a public unkeyed hash (FNV, say) an
//! attacker could craft names that all land on a victim's slots and evict it.
//! SipHash-2-4 is the standard answer for hash-flooding resistance and is small
//! enough to carry here rather than pull in a crate.

/// A SipHash-2-4 key. Every worker must use the same key (slots are shared),
/// so it comes from configuration, never from a per-VM random source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKey {
    k0: u64,
    k1: u64,
}

impl HashKey {
    pub const fn new(k0: u64, k1: u64) -> Self {
        Self { k0, k1 }
    }

    /// Derives a key from an operator-supplied secret of any length.
    pub fn from_secret(secret: &[u8]) -> Self {
        let base = HashKey::new(0x7669_6769_6c2d_6b30, 0x7669_6769_6c2d_6b31); // "vigil-k0" / "vigil-k1"
        HashKey::new(base.hash(&[secret, b"\x00"]), base.hash(&[secret, b"\x01"]))
    }

    /// SipHash-2-4 of the concatenation of `parts`.
    pub fn hash(&self, parts: &[&[u8]]) -> u64 {
        let mut s = SipState::new(self.k0, self.k1);
        let mut tail = [0u8; 8];
        let mut ntail = 0usize;
        let mut total: u64 = 0;
        for part in parts {
            for &b in part.iter() {
                if let Some(slot) = tail.get_mut(ntail) {
                    *slot = b;
                }
                ntail += 1;
                total = total.wrapping_add(1);
                if ntail == 8 {
                    s.compress(u64::from_le_bytes(tail));
                    ntail = 0;
                }
            }
        }
        let mut last = (total & 0xff) << 56;
        for (i, b) in tail.iter().take(ntail).enumerate() {
            last |= u64::from(*b) << (8 * i);
        }
        s.compress(last);
        s.finish()
    }
}

struct SipState {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
}

impl SipState {
    fn new(k0: u64, k1: u64) -> Self {
        Self {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
        }
    }

    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13) ^ self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16) ^ self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21) ^ self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17) ^ self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    fn compress(&mut self, m: u64) {
        self.v3 ^= m;
        self.round();
        self.round();
        self.v0 ^= m;
    }

    fn finish(mut self) -> u64 {
        self.v2 ^= 0xff;
        for _ in 0..4 {
            self.round();
        }
        self.v0 ^ self.v1 ^ self.v2 ^ self.v3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference vectors from the SipHash paper: key 00..0f, message 00..(n-1).
    #[test]
    fn matches_siphash24_reference_vectors() {
        let key = HashKey::new(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        let msg: Vec<u8> = (0u8..64).collect();
        assert_eq!(key.hash(&[&msg[..0]]), 0x726f_db47_dd0e_0e31);
        assert_eq!(key.hash(&[&msg[..1]]), 0x74f8_39c5_93dc_67fd);
        assert_eq!(key.hash(&[&msg[..8]]), 0x93f5_f579_9a93_2462);
        assert_eq!(key.hash(&[&msg[..15]]), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn concatenation_of_parts_is_what_is_hashed() {
        let key = HashKey::from_secret(b"s");
        assert_eq!(key.hash(&[b"ab", b"cdefghij"]), key.hash(&[b"abcdefghij"]));
        assert_ne!(key.hash(&[b"user:1"]), key.hash(&[b"user:2"]));
    }

    #[test]
    fn different_secrets_give_different_hashes() {
        let a = HashKey::from_secret(b"one");
        let b = HashKey::from_secret(b"two");
        assert_ne!(a.hash(&[b"alice"]), b.hash(&[b"alice"]));
    }
}
