//! The typed values of condition operators, parsed strictly: numbers, dates, booleans, IP
//! ranges. The same parsers read policy values (where a failure is a [`super::PolicyError`])
//! and request values (where a failure is simply "does not match").

use std::net::IpAddr;

/// A decimal number: optional sign, digits, optional fraction (`10`, `-3`, `1.5`, `.5`).
/// No exponents, no `inf`/`NaN`, no spaces.
pub(super) fn number(s: &str) -> Option<f64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let ok = all_digits(int)
        && frac.is_none_or(all_digits)
        && (!int.is_empty() || frac.is_some_and(|f| !f.is_empty()));
    if !ok {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// `true` or `false`, any case (policies write `"true"`, `"True"` or JSON `true`).
pub(super) fn boolean(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Nanoseconds since 1970-01-01T00:00:00Z.
pub(super) type Instant = i128;

const NANOS: i128 = 1_000_000_000;

/// A date and time, as the IAM date operators take them:
/// - epoch seconds: digits with an optional sign and fraction (`1700000000`, `1700000000.5`);
///   a bare four-digit year is therefore read as epoch seconds, not as a year;
/// - W3C ISO 8601: `YYYY-MM`, `YYYY-MM-DD`, `YYYY-MM-DDThh:mm`, `YYYY-MM-DDThh:mm:ss`,
///   `YYYY-MM-DDThh:mm:ss.s…`, each time followed by `Z` or `±hh:mm` (`±hhmm` too); a time
///   without a zone is taken as UTC.
pub(super) fn date(s: &str) -> Option<Instant> {
    if s.get(1..)
        .is_some_and(|rest| rest.contains(['-', 'T', 't']))
    {
        iso8601(s)
    } else {
        epoch(s)
    }
}

fn epoch(s: &str) -> Option<Instant> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() || int.len() > 12 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = fraction_nanos(frac, body.contains('.'))?;
    let secs: i128 = int.parse().ok()?;
    let v = secs * NANOS + nanos;
    Some(if neg { -v } else { v })
}

/// The nanoseconds of a fraction's digits (`"5"` → 500 000 000); more than 9 digits are cut.
fn fraction_nanos(frac: &str, had_dot: bool) -> Option<i128> {
    if !had_dot {
        return Some(0);
    }
    if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n: i128 = 0;
    for i in 0..9 {
        let d = frac.as_bytes().get(i).map_or(0, |b| i128::from(b - b'0'));
        n = n * 10 + d;
    }
    Some(n)
}

fn digits_n(s: &str, n: usize) -> Option<u32> {
    if s.len() == n && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn iso8601(s: &str) -> Option<Instant> {
    if !s.is_ascii() {
        return None;
    }
    let (date_part, time_part) = match s.find(['T', 't']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut fields = date_part.split('-');
    let year = digits_n(fields.next()?, 4)?;
    let month = digits_n(fields.next()?, 2)?;
    let day = match fields.next() {
        Some(d) => digits_n(d, 2)?,
        None if time_part.is_none() => 1,
        None => return None,
    };
    if fields.next().is_some() {
        return None;
    }
    let month = time::Month::try_from(u8::try_from(month).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?)
            .ok()?;
    // Julian day number of 1970-01-01.
    let days = i128::from(date.to_julian_day() - 2_440_588);
    let mut t = days * 86_400 * NANOS;
    if let Some(tp) = time_part {
        t += time_of_day(tp)?;
    }
    Some(t)
}

/// `hh:mm[:ss[.fff]]` then a zone; the nanoseconds after midnight UTC (may be negative or
/// past a day by the zone offset).
fn time_of_day(s: &str) -> Option<Instant> {
    let (clock, offset) = if let Some(c) = s.strip_suffix(['Z', 'z']) {
        (c, 0i128)
    } else if let Some(i) = s.find(['+', '-']) {
        let sign: i128 = if s.as_bytes()[i] == b'-' { -1 } else { 1 };
        let z = &s[i + 1..];
        let (h, m) = match z.split_once(':') {
            Some((h, m)) => (digits_n(h, 2)?, digits_n(m, 2)?),
            None if z.len() == 4 => (digits_n(&z[..2], 2)?, digits_n(&z[2..], 2)?),
            None => return None,
        };
        if h > 23 || m > 59 {
            return None;
        }
        (&s[..i], sign * i128::from(h * 3600 + m * 60) * NANOS)
    } else {
        (s, 0)
    };
    let mut parts = clock.split(':');
    let h = digits_n(parts.next()?, 2)?;
    let m = digits_n(parts.next()?, 2)?;
    let (sec, nanos) = match parts.next() {
        Some(sf) => {
            let (sec, frac) = sf.split_once('.').unwrap_or((sf, ""));
            (digits_n(sec, 2)?, fraction_nanos(frac, sf.contains('.'))?)
        }
        None => (0, 0),
    };
    if parts.next().is_some() || h > 23 || m > 59 || sec > 59 {
        return None;
    }
    let local = i128::from(h * 3600 + m * 60 + sec) * NANOS + nanos;
    // Local time = UTC + offset, so UTC = local − offset.
    Some(local - offset)
}

/// An IP range: an address and how many leading bits must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cidr {
    v4: bool,
    bits: u128,
    prefix: u8,
}

impl Cidr {
    /// `203.0.113.0/24`, `2001:DB8::/32`, or a bare address (the whole width). Host bits set
    /// below the prefix are ignored.
    pub(super) fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (a, Some(p.parse::<u8>().ok()?))
            }
            None => (s, None),
        };
        let (v4, bits) = ip_bits(addr.parse::<IpAddr>().ok()?);
        let width = if v4 { 32 } else { 128 };
        let prefix = prefix.unwrap_or(width);
        if prefix > width {
            return None;
        }
        Some(Cidr {
            v4,
            bits: bits & mask(v4, prefix),
            prefix,
        })
    }

    /// Whether the request value `s` (an address; an IPv4-mapped IPv6 address counts as its
    /// IPv4 address) is in the range.
    pub(super) fn contains(&self, s: &str) -> bool {
        let addr = match s.parse::<IpAddr>() {
            Ok(a) => a,
            Err(_) => return false,
        };
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        let (v4, bits) = ip_bits(addr);
        v4 == self.v4 && bits & mask(v4, self.prefix) == self.bits
    }
}

fn ip_bits(a: IpAddr) -> (bool, u128) {
    match a {
        IpAddr::V4(v4) => (true, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (false, u128::from(v6)),
    }
}

fn mask(v4: bool, prefix: u8) -> u128 {
    let width: u32 = if v4 { 32 } else { 128 };
    let prefix = u32::from(prefix).min(width);
    if prefix == 0 {
        return 0;
    }
    // The top `prefix` bits of 128, moved down to the low 32 for IPv4.
    let ones = u128::MAX << (128 - prefix);
    if v4 {
        ones >> 96
    } else {
        ones
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_plain_decimals() {
        for (s, want) in [
            ("10", Some(10.0)),
            ("-3", Some(-3.0)),
            ("+4", Some(4.0)),
            ("1.5", Some(1.5)),
            (".5", Some(0.5)),
            ("5.", Some(5.0)),
            ("007", Some(7.0)),
            ("", None),
            ("-", None),
            (".", None),
            ("1e5", None),
            ("inf", None),
            ("NaN", None),
            (" 1", None),
            ("1 ", None),
            ("0x10", None),
            ("1.2.3", None),
            ("--1", None),
        ] {
            assert_eq!(number(s), want, "{s:?}");
        }
    }

    #[test]
    fn booleans_any_case() {
        assert_eq!(boolean("true"), Some(true));
        assert_eq!(boolean("FALSE"), Some(false));
        assert_eq!(boolean("True"), Some(true));
        assert_eq!(boolean("yes"), None);
        assert_eq!(boolean("1"), None);
        assert_eq!(boolean(""), None);
    }

    const S: i128 = NANOS;

    #[test]
    fn dates_iso8601_and_epoch() {
        let day = 86_400 * S;
        for (s, want) in [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("1970-01-02", Some(day)),
            ("1970-02", Some(31 * day)),
            ("2020-01-01T00:00:01Z", Some(1_577_836_801 * S)),
            ("2020-01-01T00:00:01.5Z", Some(1_577_836_801 * S + S / 2)),
            ("2020-01-01T01:00:01+01:00", Some(1_577_836_801 * S)),
            ("2019-12-31T23:00:01-01:00", Some(1_577_836_801 * S)),
            ("2019-12-31T23:00:01-0100", Some(1_577_836_801 * S)),
            ("2020-01-01T00:00Z", Some(1_577_836_800 * S)),
            ("2020-01-01T00:00:01", Some(1_577_836_801 * S)),
            ("2020-02-29T00:00:00Z", Some(1_582_934_400 * S)),
            ("1577836801", Some(1_577_836_801 * S)),
            ("1577836801.25", Some(1_577_836_801 * S + S / 4)),
            ("0", Some(0)),
            ("2019-02-29T00:00:00Z", None),
            ("2020-13-01", None),
            ("2020-1-01", None),
            ("2020-01-01T24:00:00Z", None),
            ("2020-01-01T00:60:00Z", None),
            ("2020-01-01T00:00:60Z", None),
            ("2020-01-01T00:00:00+25:00", None),
            ("2020-01-01T", None),
            ("2020-01-01Tx", None),
            ("2020-01T00:00Z", None),
            ("2020-01-01-01", None),
            ("yesterday", None),
            ("", None),
            ("1.", None),
            ("12-34", None),
            ("2020-01-01T00:00:00.Z", None),
            ("２０２０-01-01", None),
        ] {
            assert_eq!(date(s), want, "{s:?}");
        }
    }

    #[test]
    fn cidrs_v4_and_v6() {
        let net = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(net.contains("203.0.113.0") && net.contains("203.0.113.255"));
        assert!(!net.contains("203.0.114.1"));
        assert!(net.contains("::ffff:203.0.113.7"), "mapped v4 counts as v4");
        assert!(!net.contains("2001:db8::1") && !net.contains("not an ip") && !net.contains(""));
        let host = Cidr::parse("192.0.2.7").unwrap();
        assert!(host.contains("192.0.2.7") && !host.contains("192.0.2.8"));
        let loose = Cidr::parse("10.1.2.3/8").unwrap();
        assert!(
            loose.contains("10.200.0.1"),
            "host bits below the prefix are ignored"
        );
        let all4 = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all4.contains("8.8.8.8") && !all4.contains("::1"));
        let v6 = Cidr::parse("2001:DB8:1234:5678::/64").unwrap();
        assert!(v6.contains("2001:db8:1234:5678:ffff::1"));
        assert!(!v6.contains("2001:db8:1234:5679::1"));
        assert!(!v6.contains("203.0.113.1"));
        let one6 = Cidr::parse("2001:db8::1/128").unwrap();
        assert!(one6.contains("2001:db8::1") && !one6.contains("2001:db8::2"));
        assert!(Cidr::parse("::/0").unwrap().contains("::1"));
        for bad in [
            "203.0.113.0/33",
            "2001:db8::/129",
            "203.0.113.0/",
            "203.0.113/24",
            "203.0.113.0/-1",
            "203.0.113.0/2 4",
            "300.0.0.1",
            "01.2.3.4",
            "host.example",
            "",
        ] {
            assert!(Cidr::parse(bad).is_none(), "{bad:?}");
        }
    }
}
