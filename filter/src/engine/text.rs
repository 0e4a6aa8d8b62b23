//! Number formatting for the request path without `core::fmt`.
//!
//! Every request writes shared-data keys and header values full of numbers.
//! Through `format!` each number costs a trip through `core::fmt`'s dynamic
//! dispatch (and `{:.3}` the exact float-to-decimal algorithm), which the
//! native profile of the request path showed at a seventh of its time. These
//! write the same text directly.

use std::fmt::Write;

/// Appends `n` in decimal.
pub fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    for &d in digits.get(at..).unwrap_or(&[]) {
        out.push(char::from(d));
    }
}

/// Appends `x` with three decimals, as `{:.3}` writes it.
pub fn push_fixed3(out: &mut String, x: f64) {
    // Exact thousandths only: ties and odd values go the standard way.
    let scaled = x * 1000.0;
    if x.is_sign_negative() || !(0.0..1e15).contains(&scaled) || (scaled - scaled.floor() - 0.5).abs() < 1e-6 {
        let _ = write!(out, "{x:.3}");
        return;
    }
    let m = scaled.round() as u64;
    push_u64(out, m / 1000);
    out.push('.');
    let frac = m % 1000;
    out.push(char::from(b'0' + (frac / 100) as u8));
    out.push(char::from(b'0' + (frac / 10 % 10) as u8));
    out.push(char::from(b'0' + (frac % 10) as u8));
}

/// Appends `n` as 16 lowercase hex digits, as `{:016x}` writes it.
pub fn push_hex16(out: &mut String, n: u64) {
    for shift in (0..16).rev() {
        let d = ((n >> (shift * 4)) & 0xf) as u8;
        out.push(char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_core_fmt() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let specials = [0.0, -0.0, 1.0, 0.5, 0.0005, 0.0015, 0.9995, 0.1234999, 2.5e-4, 123.4565, -0.25, 1e16, f64::NAN, f64::INFINITY, 0.6];
        let randoms: Vec<f64> = (0..20_000).map(|_| (next() % 10_000_000) as f64 / 7_777.0).collect();
        for &x in specials.iter().chain(&randoms) {
            let mut s = String::new();
            push_fixed3(&mut s, x);
            assert_eq!(s, format!("{x:.3}"), "{x}");
        }
        for n in [0u64, 7, 10, 99, 100, 12345, u64::MAX].into_iter().chain((0..1000).map(|_| next())) {
            let (mut a, mut b) = (String::new(), String::new());
            push_u64(&mut a, n);
            push_hex16(&mut b, n);
            assert_eq!((a, b), (n.to_string(), format!("{n:016x}")));
        }
    }
}
