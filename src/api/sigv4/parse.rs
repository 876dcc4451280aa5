//! The parts of a SigV4 request head that are parsed before anything is computed: the
//! Authorization header, its `SignedHeaders` list, `X-Amz-Date` and its skew, and the check
//! of which headers the signature must cover.

use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{Duration, OffsetDateTime, PrimitiveDateTime, UtcOffset};

use super::canonical::trim_spaces;
use super::{AuthError, RequestParts, ALGORITHM};

/// AWS accepts requests whose X-Amz-Date is within 15 minutes of its own clock.
const MAX_SKEW: Duration = Duration::minutes(15);
/// `yyyymmddThhmmssZ`, the ISO 8601 basic format SigV4 uses.
const AMZ_DATE_FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");

pub(super) struct ParsedAuth<'a> {
    pub(super) access_key_id: &'a str,
    pub(super) date: &'a str,
    pub(super) region: &'a str,
    pub(super) service: &'a str,
    pub(super) terminator: &'a str,
    /// As the client listed them: lower case, sorted, no repeats (checked), at most
    /// [`MAX_SIGNED_HEADERS`].
    pub(super) signed_headers: Vec<&'a str>,
    pub(super) signature: &'a str,
}

/// At most this many names in `SignedHeaders`: the SDKs sign five to ten, and each name is
/// looked up among the request's headers while the canonical request is built.
pub const MAX_SIGNED_HEADERS: usize = 64;
/// Longest canonical request accepted (it is built, and hashed, before the signature can be
/// checked, by anyone who knows an access key id; real ones are a few hundred bytes).
pub const MAX_CANONICAL_REQUEST: usize = 32 * 1024;

/// `SignedHeaders` as SigV4 defines it: lower-case names, sorted, separated by `;`. Repeats,
/// a wrong order, upper case or empty names are refused (a repeated name would make the
/// canonical request repeat that header's values: an amplification for anyone who knows an
/// access key id), and so are lists longer than [`MAX_SIGNED_HEADERS`].
pub(super) fn parse_signed_headers(signed: &str) -> Result<Vec<&str>, AuthError> {
    let mut names: Vec<&str> = Vec::new();
    for name in signed.split(';') {
        if names.len() == MAX_SIGNED_HEADERS {
            return Err(AuthError::Incomplete(format!(
                "SignedHeaders names more than {MAX_SIGNED_HEADERS} headers"
            )));
        }
        if name.is_empty() {
            return Err(AuthError::Incomplete(format!(
                "SignedHeaders contains an empty header name: '{}'",
                clip(signed)
            )));
        }
        if !name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
        }) {
            return Err(AuthError::Incomplete(format!(
                "SignedHeaders must list lower-case header names: '{}'",
                clip(name)
            )));
        }
        if let Some(prev) = names.last() {
            if *prev >= name {
                return Err(AuthError::Incomplete(format!(
                    "SignedHeaders must be sorted and name each header once: '{}' after '{}'",
                    clip(name),
                    clip(prev)
                )));
            }
        }
        names.push(name);
    }
    Ok(names)
}

/// What the signature must cover: `host`, and every `x-amz-*` header the request carries
/// (`X-Amz-Target` names the operation: an unsigned one could be swapped for another); and
/// every signed name must be present. `Content-Type` need not be signed (the AWS SDK for
/// JavaScript v2 never signs it). Also bounds the canonical request before it is built.
pub(super) fn check_coverage(req: &RequestParts, signed: &[&str]) -> Result<(), AuthError> {
    if signed.binary_search(&"host").is_err() {
        return Err(AuthError::Incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".into(),
        ));
    }
    // One pass over the request's headers: `signed` is sorted lower case (checked), so each
    // header is looked up by binary search, case-insensitively.
    let mut present: u64 = 0;
    let mut size = req.method.len() + req.path.len() * 3 + req.query.len() * 3 + 200;
    for (n, v) in req.headers {
        let found =
            signed.binary_search_by(|s| s.bytes().cmp(n.bytes().map(|b| b.to_ascii_lowercase())));
        match found {
            Ok(i) => {
                present |= 1 << i;
                size += n.len() + v.len() + 2;
            }
            Err(_) if n.len() > 6 && n.as_bytes()[..6].eq_ignore_ascii_case(b"x-amz-") => {
                return Err(AuthError::Incomplete(format!(
                    "The request signature does not cover the '{}' header: every x-amz-* header \
                     must be signed",
                    clip(&n.to_ascii_lowercase())
                )));
            }
            Err(_) => {}
        }
    }
    // At most MAX_SIGNED_HEADERS (64) names, so the bit set holds them all.
    if let Some(missing) = (0..signed.len()).find(|i| present & (1 << i) == 0) {
        return Err(AuthError::Incomplete(format!(
            "SignedHeaders names '{}', which the request does not have",
            clip(signed[missing])
        )));
    }
    if size > MAX_CANONICAL_REQUEST {
        return Err(AuthError::Incomplete(format!(
            "The signed headers are too large (over {MAX_CANONICAL_REQUEST} bytes)"
        )));
    }
    Ok(())
}

/// At most 200 bytes of a client-supplied value in a message.
pub(super) fn clip(s: &str) -> String {
    crate::api::error::clip_to(s, 200)
}

/// Parses `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
/// Components may be separated by commas and/or whitespace, since no value contains either.
pub(super) fn parse_authorization<'a>(text: &'a str) -> Result<ParsedAuth<'a>, AuthError> {
    let text = text.trim();
    let shown = clip(text);
    let (algorithm, rest) = text
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((text, ""));
    if algorithm != ALGORITHM {
        return Err(AuthError::Incomplete(format!(
            "Unsupported AWS 'algorithm': '{}'. Authorization={shown}",
            clip(algorithm)
        )));
    }

    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|p| !p.is_empty())
    {
        let (key, value) = part.split_once('=').ok_or_else(|| {
            AuthError::Incomplete(format!(
                "Authorization header component '{}' is not a key=value pair. \
                 Authorization={shown}",
                clip(part)
            ))
        })?;
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            // Unknown components influence nothing that is verified, so they are ignored.
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(AuthError::Incomplete(format!(
                "Authorization header has a duplicate '{key}' component. Authorization={shown}"
            )));
        }
    }

    // Empty values count as missing, so `Signature=` is reported rather than "mismatched".
    let nonempty = |v: Option<&'a str>| v.filter(|v| !v.is_empty());
    let (credential, signed, signature) =
        match (nonempty(credential), nonempty(signed), nonempty(signature)) {
            (Some(c), Some(h), Some(s)) => (c, h, s),
            (c, h, s) => {
                let mut msg = String::new();
                for (name, v) in [("Credential", c), ("Signature", s), ("SignedHeaders", h)] {
                    if v.is_none() {
                        msg.push_str(&format!(
                            "Authorization header requires '{name}' parameter. "
                        ));
                    }
                }
                return Err(AuthError::Incomplete(format!("{msg}Authorization={shown}")));
            }
        };

    let scope: Vec<&str> = credential.splitn(6, '/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(AuthError::Incomplete(format!(
            "Credential must have exactly 5 slash-delimited elements, e.g. \
             keyid/date/region/service/term, got '{}'",
            clip(credential)
        )));
    };
    if access_key_id.is_empty() {
        return Err(AuthError::Incomplete(format!(
            "Credential has an empty access key id: '{}'",
            clip(credential)
        )));
    }

    let signed_headers = parse_signed_headers(signed)?;
    Ok(ParsedAuth {
        access_key_id,
        date,
        region,
        service,
        terminator,
        signed_headers,
        signature,
    })
}

/// Returns the value of a header that must not repeat (`None` if absent).
pub(super) fn single_header<'a>(
    headers: &[(&str, &'a [u8])],
    name: &str,
) -> Result<Option<&'a [u8]>, AuthError> {
    let mut found = None;
    for (n, v) in headers {
        if n.eq_ignore_ascii_case(name) {
            if found.is_some() {
                return Err(AuthError::Incomplete(format!(
                    "Request has more than one '{name}' header."
                )));
            }
            found = Some(*v);
        }
    }
    Ok(found)
}

/// Parses X-Amz-Date; returns the trimmed text (used verbatim in the string to sign) and time.
pub(super) fn parse_amz_date(raw: &[u8]) -> Result<(&str, OffsetDateTime), AuthError> {
    let bad = || {
        AuthError::Incomplete(format!(
            "Date must be in ISO-8601 'basic format'. Got '{}'.",
            clip(&String::from_utf8_lossy(raw))
        ))
    };
    let text = std::str::from_utf8(trim_spaces(raw)).map_err(|_| bad())?;
    // The length check also makes the `[..8]` day slice in `verify` safe.
    if text.len() != 16 || !text.is_ascii() {
        return Err(bad());
    }
    let dt = PrimitiveDateTime::parse(text, AMZ_DATE_FORMAT).map_err(|_| bad())?;
    Ok((text, dt.assume_utc()))
}

pub(super) fn check_skew(
    request_time: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<(), AuthError> {
    let now = now.to_offset(UtcOffset::UTC);
    let fmt = |t: OffsetDateTime| t.format(AMZ_DATE_FORMAT).unwrap_or_default();
    if request_time < now - MAX_SKEW {
        return Err(AuthError::Expired(format!(
            "Signature expired: {} is now earlier than {} ({} - 15 min.)",
            fmt(request_time),
            fmt(now - MAX_SKEW),
            fmt(now)
        )));
    }
    if request_time > now + MAX_SKEW {
        return Err(AuthError::Expired(format!(
            "Signature not yet current: {} is still later than {} ({} + 15 min.)",
            fmt(request_time),
            fmt(now + MAX_SKEW),
            fmt(now)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sigv4::tests::*;
    use crate::api::sigv4::Verifier;
    use aws_sigv4::http_request::SigningSettings;

    #[test]
    fn unsigned_extra_headers_are_ignored() {
        // The SDK never signs user-agent; proxies may add anything else afterwards.
        let mut headers = kms_headers();
        headers.push(("user-agent", "aws-sdk-rust/1.0"));
        let mut req = sign_with(
            Signing::default(),
            "POST",
            &format!("https://{HOST}/"),
            &headers,
            BODY,
        );
        assert!(!req.header("authorization").contains("user-agent"));
        req.set_header("user-agent", "something else");
        req.set_header("X-Forwarded-For", "127.0.0.1");
        req.set_header("X-Amzn-Trace-Id", "Root=1-abc");
        assert_eq!(req.verify(), ok());
        // But never an x-amz-* header: those carry meaning (the operation, a session token).
        req.headers
            .push(("x-amz-security-token".into(), b"unsigned".to_vec()));
        assert!(is_incomplete(req.verify()));
    }

    #[test]
    fn an_operation_the_signature_does_not_cover_is_refused() {
        // Signed without X-Amz-Target (botocore's SigV4Auth signs only the headers present),
        // then one is added: the signature would still verify, for any operation.
        let headers = vec![
            ("host", HOST),
            ("content-type", "application/x-amz-json-1.1"),
        ];
        let mut req = sign_with(
            Signing::default(),
            "POST",
            &format!("https://{HOST}/"),
            &headers,
            BODY,
        );
        assert_eq!(req.verify(), ok());
        req.set_header("X-Amz-Target", "TrentService.DisableKey");
        let e = req.verify().expect_err("unsigned target");
        assert!(
            matches!(e, AuthError::Incomplete(ref m) if m.contains("x-amz-target")),
            "{e:?}"
        );
    }

    #[test]
    fn content_type_need_not_be_signed() {
        // The AWS SDK for JavaScript v2 never signs Content-Type.
        let mut settings = SigningSettings::default();
        settings.excluded_headers = Some(vec!["content-type".into(), "user-agent".into()]);
        let req = signed_kms(Signing {
            settings,
            ..Signing::default()
        });
        assert!(!req.header("authorization").contains("content-type"));
        assert_eq!(req.verify(), ok());
    }

    #[test]
    fn signed_header_lists_are_strict() {
        let req = valid();
        let auth = req.header("authorization");
        let list = "content-type;host;x-amz-date;x-amz-target";
        assert!(auth.contains(list));
        let long = (0..MAX_SIGNED_HEADERS + 1)
            .map(|i| format!("x-h{i:03}"))
            .collect::<Vec<_>>()
            .join(";");
        for bad in [
            // The amplification: one name many times (each repeat copies its values).
            "host;host;host;x-amz-date;x-amz-target".to_owned(),
            "content-type;host;host;x-amz-date;x-amz-target".to_owned(),
            // Not sorted, upper case, not a header name.
            "host;content-type;x-amz-date;x-amz-target".to_owned(),
            "content-type;Host;x-amz-date;x-amz-target".to_owned(),
            "content-type;host;x-amz-date;x-amz-target;x y".to_owned(),
            long,
            // Names a header the request does not have.
            "content-type;host;x-amz-date;x-amz-target;x-missing".to_owned(),
        ] {
            let mut r = req.clone();
            r.set_header("authorization", &auth.replace(list, &bad));
            let e = r.verify().expect_err(&bad);
            assert!(matches!(e, AuthError::Incomplete(_)), "{bad}: {e:?}");
        }
    }

    #[test]
    fn the_canonical_request_is_bounded_before_it_is_built() {
        let mut headers = kms_headers();
        let big = "v".repeat(MAX_CANONICAL_REQUEST);
        headers.push(("x-big", &big));
        let req = sign_with(
            Signing::default(),
            "POST",
            &format!("https://{HOST}/"),
            &headers,
            BODY,
        );
        let e = req.verify().expect_err("too large");
        assert!(
            matches!(e, AuthError::Incomplete(ref m) if m.contains("too large")),
            "{e:?}"
        );
    }

    #[test]
    fn host_must_be_signed() {
        let mut settings = SigningSettings::default();
        settings.excluded_headers = Some(vec!["host".into()]);
        let req = signed_kms(Signing {
            settings,
            ..Signing::default()
        });
        assert!(!req.header("authorization").contains("host"));
        let e = req.verify().expect_err("host not signed");
        assert!(
            matches!(e, AuthError::Incomplete(ref m) if m.contains("'Host'")),
            "{e:?}"
        );
    }

    #[test]
    fn garbage_authorization_is_incomplete() {
        let sig = "0".repeat(64);
        for garbage in [
            "garbage".to_owned(),
            "".to_owned(),
            "AWS4-HMAC-SHA256".to_owned(),
            "AWS4-HMAC-SHA256 foo".to_owned(),
            "AWS4-HMAC-SHA512 Credential=a/b/c/d/e, SignedHeaders=host, Signature=00".to_owned(),
            format!("AWS4-HMAC-SHA256 Credential={AKID}/20240501/{REGION}/kms/aws4_request, SignedHeaders=host"),
            format!("AWS4-HMAC-SHA256 Credential={AKID}/20240501/{REGION}/kms, SignedHeaders=host, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential=/20240501/{REGION}/kms/aws4_request, SignedHeaders=host, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential={AKID}/20240501/{REGION}/kms/aws4_request, SignedHeaders=host;;x-amz-date, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential={AKID}/20240501/{REGION}/kms/aws4_request, SignedHeaders=host, Signature={sig}, Signature={sig}"),
        ] {
            let mut req = valid();
            req.set_header("Authorization", &garbage);
            let r = req.verify();
            assert!(is_incomplete(r.clone()), "{garbage:?} gave {r:?}");
        }
        let mut req = valid();
        req.headers.push(("authorization".into(), vec![0xff, 0xfe]));
        assert!(is_incomplete(req.verify()));
    }

    #[test]
    fn incomplete_message_names_the_missing_parts() {
        let mut req = valid();
        req.set_header("authorization", "AWS4-HMAC-SHA256 SignedHeaders=host");
        let e = req.verify().expect_err("must fail");
        assert_eq!(e.aws_name(), "IncompleteSignatureException");
        assert!(e.message().contains("requires 'Credential' parameter"));
        assert!(e.message().contains("requires 'Signature' parameter"));
        assert!(!e.message().contains("requires 'SignedHeaders' parameter"));
    }

    #[test]
    fn authorization_separators_are_tolerated() {
        let req = valid();
        let auth = req.header("authorization");
        for variant in [
            auth.replace(", ", ","),
            auth.replace(", ", " ,  "),
            auth.replace(", ", " "),
            format!("  {}  ", auth.replacen(' ', "   ", 1)),
        ] {
            let mut r = req.clone();
            r.set_header("authorization", &variant);
            assert_eq!(r.verify(), ok(), "{variant}");
        }
    }

    #[test]
    fn missing_or_bad_amz_date_is_incomplete() {
        let mut req = valid();
        req.remove_header("x-amz-date");
        assert!(is_incomplete(req.verify()));
        for bad in [
            "2024-05-01T12:00:00Z",
            "20240501T120000",
            "20241301T120000Z",
            "x",
        ] {
            let mut req = valid();
            req.set_header("x-amz-date", bad);
            assert!(is_incomplete(req.verify()), "{bad}");
        }
        let mut req = valid();
        req.headers
            .push(("X-Amz-Date".into(), b"20240501T120000Z".to_vec()));
        assert!(is_incomplete(req.verify()), "repeated x-amz-date");
    }

    #[test]
    fn clock_skew() {
        let verifier = Verifier::new(REGION, "kms");
        let store = Store::one(AKID, SECRET);
        for minutes in [-16, 16] {
            let req = signed_kms(Signing {
                time: T0 + Duration::minutes(minutes),
                ..Signing::default()
            });
            let e = req
                .verify_with(&verifier, &store, T0)
                .expect_err("skewed request");
            assert!(matches!(e, AuthError::Expired(_)), "{minutes}: {e:?}");
            assert_eq!(e.aws_name(), "InvalidSignatureException");
        }
        for minutes in [-14, 14] {
            let req = signed_kms(Signing {
                time: T0 + Duration::minutes(minutes),
                ..Signing::default()
            });
            assert_eq!(req.verify_with(&verifier, &store, T0), ok(), "{minutes}");
        }
        // Signed 16 minutes ago: AWS's wording, with our clock in a non-UTC offset.
        let req = valid();
        let later = (T0 + Duration::minutes(16)).to_offset(time::macros::offset!(+2));
        let e = req
            .verify_with(&verifier, &store, later)
            .expect_err("expired");
        assert_eq!(
            e.message(),
            "Signature expired: 20240501T120000Z is now earlier than 20240501T120100Z \
             (20240501T121600Z - 15 min.)"
        );
        let earlier = T0 - Duration::minutes(16);
        let e = req
            .verify_with(&verifier, &store, earlier)
            .expect_err("future");
        assert!(e
            .message()
            .starts_with("Signature not yet current: 20240501T120000Z"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            /// Any Authorization text: an answer, never a panic.
            #[test]
            fn authorization_text_never_panics(s in "\\PC{0,400}") {
                let _ = parse_authorization(&s);
                let _ = parse_authorization(&format!("AWS4-HMAC-SHA256 {s}"));
            }

            /// A SignedHeaders list is accepted exactly when it is canonical.
            #[test]
            fn signed_header_lists_accepted_only_when_canonical(
                names in proptest::collection::vec("[a-z0-9-]{1,10}", 1..80)
            ) {
                let joined = names.join(";");
                let canonical = names.len() <= MAX_SIGNED_HEADERS
                    && names.windows(2).all(|w| w[0] < w[1]);
                prop_assert_eq!(parse_signed_headers(&joined).is_ok(), canonical);
            }
        }
    }
}
