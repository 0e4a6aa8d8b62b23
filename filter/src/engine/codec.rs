//! The little binary codec behind every record Vigil keeps in shared data:
//! fixed-width little-endian numbers, varints for counts, short strings. A
//! reader returns `None` on anything it did not write (short, too long, bad
//! UTF-8), never panics.

pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// LEB128: counts are mostly small.
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    /// A string of at most 255 bytes (longer ones are cut at a char boundary).
    pub fn str(&mut self, s: &str) {
        let mut end = s.len().min(255);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let cut = s.get(..end).unwrap_or("");
        self.u8(cut.len() as u8);
        self.0.extend_from_slice(cut.as_bytes());
    }
}

pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take::<1>()?[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take()?))
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take()?))
    }
    pub fn f32(&mut self) -> Option<f32> {
        Some(f32::from_le_bytes(self.take()?))
    }
    pub fn f64(&mut self) -> Option<f64> {
        Some(f64::from_le_bytes(self.take()?))
    }
    pub fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    pub fn str(&mut self) -> Option<&'a str> {
        let n = usize::from(self.u8()?);
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        std::str::from_utf8(head).ok()
    }
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_short_input() {
        let mut buf = Vec::new();
        let mut w = Writer(&mut buf);
        w.varint(0);
        w.varint(300);
        w.varint(u64::MAX);
        w.str("/users/{id}");
        w.str(&"é".repeat(200)); // 400 bytes: cut to 254 at a char boundary
        let mut r = Reader(&buf);
        assert_eq!(r.varint(), Some(0));
        assert_eq!(r.varint(), Some(300));
        assert_eq!(r.varint(), Some(u64::MAX));
        assert_eq!(r.str(), Some("/users/{id}"));
        assert_eq!(r.str().map(str::len), Some(254));
        assert!(r.is_empty());
        assert_eq!(Reader(&[0x80, 0x80]).varint(), None);
        assert_eq!(Reader(&[0xff; 11]).varint(), None);
        assert_eq!(Reader(&[5, b'a']).str(), None);
    }
}
