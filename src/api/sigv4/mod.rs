//! Verification of AWS Signature Version 4 (Authorization-header form) for the KMS JSON API.
//!
//! The module is independent of any HTTP framework: the server copies what it received into a
//! [`RequestParts`] and calls [`Verifier::verify`]. The canonical request is rebuilt exactly the
//! way the AWS SDK for Rust (`aws-sigv4`) builds it for non-S3 services, which is what the other
//! AWS SDKs agree on for the requests KMS clients send (`POST /`, no query string).
//!
//! - this file: the verifier (head check, signature check, signing-key cache) and its errors;
//! - [`parse`]: the Authorization header, `SignedHeaders`, `X-Amz-Date` and what must be signed;
//! - [`canonical`]: the canonical request (URI, query and header value canonicalisation).
//!
//! Not supported, on purpose:
//! - query-string (presigned) authentication and the `Date` header as a date source;
//! - session tokens: an `X-Amz-Security-Token` header that the client signed is hashed into the
//!   canonical request like any other signed header (so the signature still verifies), but the
//!   token itself is never interpreted; identities come from the access key id alone.
//! - `UNSIGNED-PAYLOAD` and streaming payloads: the payload hash is always computed from the body.

mod canonical;
mod parse;

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::sync;
use canonical::{canonical_request, trim_spaces};
use parse::ParsedAuth;
use parse::{check_coverage, check_skew, clip, parse_amz_date, parse_authorization, single_header};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const TERMINATOR: &str = "aws4_request";
/// Bound on cached signing keys; a key is only useful for one (access key, day), so a small map
/// suffices and is simply cleared when full.
const CACHE_CAPACITY: usize = 256;

type HmacSha256 = Hmac<Sha256>;

/// The head of an HTTP request (what SigV4 covers besides the body), as received.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// Request method, e.g. `"POST"`.
    pub method: &'a str,
    /// Raw path as received (still percent-encoded), e.g. `"/"`.
    pub path: &'a str,
    /// Raw query string without the leading `?`, often `""`.
    pub query: &'a str,
    /// Header names in any case, raw values, in received order; names may repeat.
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// Looks up the secret access key belonging to an access key id.
pub trait SecretStore {
    fn secret_for(&self, access_key_id: &str) -> Option<&str>;
}

/// Why a request failed authentication; [`AuthError::aws_name`] gives the AWS exception name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No Authorization header at all.
    Missing,
    /// Malformed Authorization header, missing/invalid X-Amz-Date, `host` not signed, or a
    /// malformed credential scope.
    Incomplete(String),
    /// The access key id is not known.
    UnknownAccessKey,
    /// The signature does not match (also: credential scoped to another region or service).
    BadSignature,
    /// X-Amz-Date is more than 15 minutes away from the server clock.
    Expired(String),
}

impl AuthError {
    /// The AWS exception name for the `__type` field / `x-amzn-ErrorType` header.
    ///
    /// `Expired` maps to `InvalidSignatureException` because that is what AWS KMS (and the other
    /// JSON-protocol services) return for clock skew, with a "Signature expired: ..." message;
    /// `RequestExpired` is the Query-protocol (EC2-style) name.
    pub fn aws_name(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::Incomplete(_) => "IncompleteSignatureException",
            AuthError::UnknownAccessKey => "UnrecognizedClientException",
            AuthError::BadSignature | AuthError::Expired(_) => "InvalidSignatureException",
        }
    }

    /// A human-readable message worded like AWS's.
    pub fn message(&self) -> String {
        match self {
            AuthError::Missing => "Missing Authentication Token".to_owned(),
            AuthError::Incomplete(m) | AuthError::Expired(m) => m.clone(),
            AuthError::UnknownAccessKey => {
                "The security token included in the request is invalid.".to_owned()
            }
            AuthError::BadSignature => "The request signature we calculated does not match the \
                 signature you provided. Check your AWS Secret Access Key and signing method. \
                 Consult the service documentation for details."
                .to_owned(),
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.aws_name(), self.message())
    }
}

impl std::error::Error for AuthError {}

/// The identity established by a valid signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
    /// The region of the signature's scope (one the verifier serves).
    pub region: String,
}

/// The regions a verifier serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Regions {
    /// These (the first is the default).
    List(Vec<String>),
    /// Any region a client signs for.
    Any,
}

impl Regions {
    fn allows(&self, region: &str) -> bool {
        match self {
            Regions::Any => is_region_name(region),
            Regions::List(l) => l.iter().any(|r| r == region),
        }
    }
}

/// What a region name looks like (`us-east-1`, `eu-central-2`, `local`): 1 to 32 lowercase
/// letters, digits and dashes. A scope naming anything else is refused before it is used.
pub fn is_region_name(r: &str) -> bool {
    (1..=32).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// What signatures prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The signature is checked with the access key's configured secret.
    Secrets,
    /// CI mode: any access key id is accepted and no secret is verified; the signature's
    /// shape, scope and time are still checked (`serve --ci`, loopback only).
    AnyCredentials,
}

/// What a cached signing key is for: SHA-256 over the access key id, the secret (so that
/// rotating a secret never reuses a stale signing key), the day and the region, each
/// length-prefixed. The service is the verifier's own. A fixed-size key: a lookup allocates
/// nothing.
type CacheKey = [u8; 32];

fn cache_key(access_key_id: &str, secret: &str, date: &str, region: &str) -> CacheKey {
    let mut h = Sha256::new();
    h.update(b"p11kms sigv4 signing-key cache\0");
    for part in [access_key_id, secret, date, region] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// Verifies SigV4 header signatures for its regions and one service.
pub struct Verifier {
    regions: Regions,
    trust: Trust,
    service: String,
    /// Derived signing keys: saves the four chained HMACs on every request after the first.
    cache: Mutex<HashMap<CacheKey, [u8; 32]>>,
}

impl fmt::Debug for Verifier {
    // Hand-written so that cached signing keys never end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("regions", &self.regions)
            .field("trust", &self.trust)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier of signatures for `region` only, with the configured secrets.
    #[cfg(test)]
    pub fn new(region: &str, service: &str) -> Self {
        Verifier::serving(
            Regions::List(vec![region.to_owned()]),
            Trust::Secrets,
            service,
        )
    }

    /// A verifier for `regions`, trusting signatures as `trust` says.
    /// Whether this verifier accepts requests signed for `region` (a region the server serves).
    pub fn serves(&self, region: &str) -> bool {
        self.regions.allows(region)
    }

    pub fn serving(regions: Regions, trust: Trust, service: &str) -> Self {
        Verifier {
            regions,
            trust,
            service: service.to_owned(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Checks a whole request at once (the server checks the head before it reads the body:
    /// [`Verifier::check_head`], then [`HeadChecked::finish`]).
    #[cfg(test)]
    pub fn verify(
        &self,
        req: &RequestParts,
        body: &[u8],
        store: &dyn SecretStore,
        now: OffsetDateTime,
    ) -> Result<Verified, AuthError> {
        self.check_head(req, store, now)?.finish(body)
    }

    /// Everything SigV4 checks that does not need the body: the Authorization header's
    /// shape, the date and its skew, the scope, which headers are signed, and that the access
    /// key is known. The server calls this before it reads a body, so a client without a
    /// valid access key never makes it read one. The signature itself is checked by
    /// [`HeadChecked::finish`] with the body (`req.body` is ignored here).
    pub fn check_head<'a>(
        &'a self,
        req: &RequestParts<'a>,
        store: &'a dyn SecretStore,
        now: OffsetDateTime,
    ) -> Result<HeadChecked<'a>, AuthError> {
        let auth_value = match single_header(req.headers, "authorization")? {
            Some(v) => v,
            None => return Err(AuthError::Missing),
        };
        let auth_text = std::str::from_utf8(auth_value)
            .map_err(|_| AuthError::Incomplete("Authorization header is not valid UTF-8".into()))?;
        let auth = parse_authorization(auth_text)?;

        let amz_date_raw = single_header(req.headers, "x-amz-date")?.ok_or_else(|| {
            AuthError::Incomplete(format!(
                "Authorization header requires existence of a 'X-Amz-Date' header. \
                 Authorization={}",
                clip(auth_text)
            ))
        })?;
        let (amz_date, request_time) = parse_amz_date(amz_date_raw)?;

        // Structural checks on the scope first (AWS reports these as incomplete signatures).
        let day = &amz_date[..8];
        if auth.date != day {
            return Err(AuthError::Incomplete(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
                 from HTTP: '{}' != '{day}', from '{amz_date}'.",
                clip(auth.date)
            )));
        }
        if auth.terminator != TERMINATOR {
            return Err(AuthError::Incomplete(format!(
                "Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{}'.",
                clip(auth.terminator)
            )));
        }
        check_coverage(req, &auth.signed_headers)?;
        // A scope for another region/service is a signature error at AWS (the client signed
        // something this endpoint would never accept). The unit variant carries no detail.
        if !self.regions.allows(auth.region) || auth.service != self.service {
            return Err(AuthError::BadSignature);
        }

        check_skew(request_time, now)?;

        let secret = match self.trust {
            Trust::Secrets => store
                .secret_for(auth.access_key_id)
                .ok_or(AuthError::UnknownAccessKey)?,
            Trust::AnyCredentials => "",
        };
        Ok(HeadChecked {
            verifier: self,
            head: *req,
            auth,
            amz_date,
            secret,
        })
    }

    fn signing_key(
        &self,
        access_key_id: &str,
        secret: &str,
        date: &str,
        region: &str,
    ) -> Option<[u8; 32]> {
        let key = cache_key(access_key_id, secret, date, region);
        if let Some(k) = sync::lock(&self.cache).get(&key) {
            return Some(*k);
        }
        // Derived outside the lock; a concurrent duplicate derivation is harmless.
        let k_signing = derive_signing_key(secret, date, region, &self.service)?;
        let mut cache = sync::lock(&self.cache);
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, k_signing);
        Some(k_signing)
    }
}

/// A request whose head passed [`Verifier::check_head`]; [`HeadChecked::finish`] checks the
/// signature over it and the body.
pub struct HeadChecked<'a> {
    verifier: &'a Verifier,
    head: RequestParts<'a>,
    auth: ParsedAuth<'a>,
    amz_date: &'a str,
    secret: &'a str,
}

impl HeadChecked<'_> {
    /// The access key id the request claims (not yet proven: see [`HeadChecked::finish`]).
    #[cfg(test)]
    pub fn access_key_id(&self) -> &str {
        self.auth.access_key_id
    }

    /// Checks the signature over the head and `body`.
    pub fn finish(self, body: &[u8]) -> Result<Verified, AuthError> {
        let payload_hash = hex::encode(Sha256::digest(body));
        // A signed x-amz-content-sha256 must describe the body we actually received; the
        // canonical request always uses the real body hash.
        if self.auth.signed_headers.contains(&"x-amz-content-sha256") {
            let all_match = self
                .head
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-amz-content-sha256"))
                .all(|(_, v)| trim_spaces(v).eq_ignore_ascii_case(payload_hash.as_bytes()));
            if !all_match {
                return Err(AuthError::BadSignature);
            }
        }
        let v = self.verifier;
        // Anything but 64 hex digits is simply a wrong signature (the length is public).
        let mut provided = [0u8; 32];
        hex::decode_to_slice(self.auth.signature, &mut provided)
            .map_err(|_| AuthError::BadSignature)?;
        let verified = Verified {
            access_key_id: self.auth.access_key_id.to_owned(),
            region: self.auth.region.to_owned(),
        };
        if v.trust == Trust::AnyCredentials {
            return Ok(verified);
        }
        let canonical = canonical_request(&self.head, &self.auth.signed_headers, &payload_hash);
        let day = &self.amz_date[..8];
        let string_to_sign = format!(
            "{ALGORITHM}\n{}\n{day}/{}/{}/{TERMINATOR}\n{}",
            self.amz_date,
            self.auth.region,
            v.service,
            hex::encode(Sha256::digest(&canonical))
        );
        let signing_key = v
            .signing_key(self.auth.access_key_id, self.secret, day, self.auth.region)
            .ok_or(AuthError::BadSignature)?;
        let expected =
            hmac_sha256(&signing_key, string_to_sign.as_bytes()).ok_or(AuthError::BadSignature)?;
        if bool::from(expected.ct_eq(&provided)) {
            Ok(verified)
        } else {
            Err(AuthError::BadSignature)
        }
    }
}

/// The SigV4 signing key for one secret, day (`YYYYMMDD`), region and service: the HMAC chain
/// `AWS4<secret>` → date → region → service → `aws4_request`. The verifier and the
/// benchmark's signer both use this one.
pub(crate) fn derive_signing_key(
    secret: &str,
    date: &str,
    region: &str,
    service: &str,
) -> Option<[u8; 32]> {
    let k_secret = format!("AWS4{secret}");
    let k_date = hmac_sha256(k_secret.as_bytes(), date.as_bytes())?;
    let k_region = hmac_sha256(&k_date, region.as_bytes())?;
    let k_service = hmac_sha256(&k_region, service.as_bytes())?;
    hmac_sha256(&k_service, TERMINATOR.as_bytes())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Option<[u8; 32]> {
    // HMAC accepts keys of any length, so this never fails in practice; no panic path anyway.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return None,
    };
    mac.update(data);
    Some(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{
        sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
    };
    use aws_sigv4::sign::v4;
    use std::time::SystemTime;
    use time::macros::datetime;

    // The fixtures below are shared with the tests of `parse` and `canonical`.
    pub(super) const AKID: &str = "AKIAIOSFODNN7EXAMPLE";
    pub(super) const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    pub(super) const REGION: &str = "eu-west-1";
    pub(super) const HOST: &str = "kms.eu-west-1.amazonaws.com";
    pub(super) const T0: OffsetDateTime = datetime!(2024-05-01 12:00:00 UTC);
    pub(super) const BODY: &[u8] = br#"{"KeyId":"alias/test","KeySpec":"AES_256"}"#;

    pub(super) struct Store(Vec<(String, String)>);

    impl Store {
        pub(super) fn one(akid: &str, secret: &str) -> Self {
            Store(vec![(akid.to_owned(), secret.to_owned())])
        }
    }

    impl SecretStore for Store {
        fn secret_for(&self, access_key_id: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|(k, _)| k == access_key_id)
                .map(|(_, s)| s.as_str())
        }
    }

    /// A request as the server would see it, owned so tests can tamper with it.
    #[derive(Clone, Debug)]
    pub(super) struct Owned {
        pub(super) method: String,
        pub(super) path: String,
        pub(super) query: String,
        pub(super) headers: Vec<(String, Vec<u8>)>,
        pub(super) body: Vec<u8>,
    }

    impl Owned {
        pub(super) fn verify_with(
            &self,
            v: &Verifier,
            store: &dyn SecretStore,
            now: OffsetDateTime,
        ) -> Result<Verified, AuthError> {
            let headers: Vec<(&str, &[u8])> = self
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect();
            let parts = RequestParts {
                method: &self.method,
                path: &self.path,
                query: &self.query,
                headers: &headers,
            };
            v.verify(&parts, &self.body, store, now)
        }

        pub(super) fn verify(&self) -> Result<Verified, AuthError> {
            self.verify_with(&Verifier::new(REGION, "kms"), &Store::one(AKID, SECRET), T0)
        }

        pub(super) fn header(&self, name: &str) -> String {
            let (_, v) = self
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .expect("header present");
            String::from_utf8(v.clone()).expect("utf-8")
        }

        pub(super) fn set_header(&mut self, name: &str, value: &str) {
            self.remove_header(name);
            self.headers
                .push((name.to_owned(), value.as_bytes().to_vec()));
        }

        pub(super) fn remove_header(&mut self, name: &str) {
            self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        }
    }

    pub(super) struct Signing<'a> {
        pub(super) secret: &'a str,
        pub(super) region: &'a str,
        pub(super) service: &'a str,
        pub(super) time: OffsetDateTime,
        pub(super) settings: SigningSettings,
    }

    impl Default for Signing<'_> {
        fn default() -> Self {
            Signing {
                secret: SECRET,
                region: REGION,
                service: "kms",
                time: T0,
                settings: SigningSettings::default(),
            }
        }
    }

    /// Signs with the AWS SDK's own signer and returns what a server would receive.
    pub(super) fn sign_with(
        s: Signing,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Owned {
        let identity = Credentials::new(AKID, s.secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(s.region)
            .name(s.service)
            .time(SystemTime::from(s.time))
            .settings(s.settings)
            .build()
            .expect("signing params")
            .into();
        let signable = SignableRequest::new(
            method,
            uri,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .expect("signable request");
        let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        let mut req = builder.body(body.to_vec()).expect("request");
        instructions.apply_to_request_http1x(&mut req);
        Owned {
            method: req.method().as_str().to_owned(),
            path: req.uri().path().to_owned(),
            query: req.uri().query().unwrap_or("").to_owned(),
            headers: req
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body: req.into_body(),
        }
    }

    pub(super) fn kms_headers() -> Vec<(&'static str, &'static str)> {
        vec![
            ("host", HOST),
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "TrentService.GenerateDataKey"),
        ]
    }

    pub(super) fn signed_kms(s: Signing) -> Owned {
        sign_with(s, "POST", &format!("https://{HOST}/"), &kms_headers(), BODY)
    }

    pub(super) fn valid() -> Owned {
        signed_kms(Signing::default())
    }

    pub(super) fn ok() -> Result<Verified, AuthError> {
        Ok(Verified {
            access_key_id: AKID.to_owned(),
            region: REGION.to_owned(),
        })
    }

    pub(super) fn is_incomplete(r: Result<Verified, AuthError>) -> bool {
        matches!(r, Err(AuthError::Incomplete(_)))
    }

    #[test]
    fn valid_request_verifies() {
        let req = valid();
        let auth = req.header("authorization");
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-target"));
        assert_eq!(req.verify(), ok());
    }

    #[test]
    fn tampered_body_is_bad_signature() {
        let mut req = valid();
        req.body = br#"{"KeyId":"alias/other","KeySpec":"AES_256"}"#.to_vec();
        assert_eq!(req.verify(), Err(AuthError::BadSignature));
    }

    #[test]
    fn tampered_signed_header_is_bad_signature() {
        let mut req = valid();
        req.set_header("x-amz-target", "TrentService.Decrypt");
        assert_eq!(req.verify(), Err(AuthError::BadSignature));
    }

    #[test]
    fn tampered_method_path_or_query_is_bad_signature() {
        for f in [
            |r: &mut Owned| r.method = "PUT".into(),
            |r: &mut Owned| r.path = "/x".into(),
            |r: &mut Owned| r.query = "a=b".into(),
        ] {
            let mut req = valid();
            f(&mut req);
            assert_eq!(req.verify(), Err(AuthError::BadSignature));
        }
    }

    #[test]
    fn the_head_is_checked_before_the_body() {
        let req = valid();
        let headers: Vec<(&str, &[u8])> = req
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let head = RequestParts {
            method: &req.method,
            path: &req.path,
            query: &req.query,
            headers: &headers,
        };
        let v = Verifier::new(REGION, "kms");
        let store = Store::one(AKID, SECRET);
        let checked = v.check_head(&head, &store, T0).expect("head is fine");
        assert_eq!(checked.access_key_id(), AKID);
        assert_eq!(checked.finish(BODY), ok());
        // An unknown access key is refused without any body.
        let other = Store::one("AKIDOTHER", SECRET);
        assert!(matches!(
            v.check_head(&head, &other, T0),
            Err(AuthError::UnknownAccessKey)
        ));
        let checked = v.check_head(&head, &store, T0).expect("head is fine");
        assert_eq!(checked.finish(b"{}"), Err(AuthError::BadSignature));
    }

    #[test]
    fn wrong_secret_is_bad_signature() {
        let req = signed_kms(Signing {
            secret: "not-the-right-secret",
            ..Signing::default()
        });
        assert_eq!(req.verify(), Err(AuthError::BadSignature));
    }

    #[test]
    fn unknown_access_key() {
        let req = valid();
        let store = Store::one("AKIDOTHER", SECRET);
        assert_eq!(
            req.verify_with(&Verifier::new(REGION, "kms"), &store, T0),
            Err(AuthError::UnknownAccessKey)
        );
    }

    #[test]
    fn missing_authorization() {
        let mut req = valid();
        req.remove_header("authorization");
        assert_eq!(req.verify(), Err(AuthError::Missing));
    }

    #[test]
    fn credential_date_must_match_amz_date() {
        let mut req = valid();
        let auth = req
            .header("authorization")
            .replace("/20240501/", "/20240502/");
        req.set_header("authorization", &auth);
        assert!(is_incomplete(req.verify()));
    }

    #[test]
    fn bad_terminator_is_incomplete() {
        let mut req = valid();
        let auth = req
            .header("authorization")
            .replace("/aws4_request", "/aws5_request");
        req.set_header("authorization", &auth);
        assert!(is_incomplete(req.verify()));
    }

    #[test]
    fn wrong_region_or_service_scope_is_bad_signature() {
        let req = signed_kms(Signing {
            region: "us-east-1",
            ..Signing::default()
        });
        assert_eq!(req.verify(), Err(AuthError::BadSignature));
        let req = signed_kms(Signing {
            service: "sts",
            ..Signing::default()
        });
        assert_eq!(req.verify(), Err(AuthError::BadSignature));
    }

    #[test]
    fn signed_content_sha256_must_match_body() {
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let req = signed_kms(Signing {
            settings,
            ..Signing::default()
        });
        assert!(req.header("authorization").contains("x-amz-content-sha256"));
        assert_eq!(req.verify(), ok());
        let mut tampered = req.clone();
        tampered.body.push(b' ');
        assert_eq!(tampered.verify(), Err(AuthError::BadSignature));
    }

    #[test]
    fn cache_hit_gives_same_result_and_follows_secret_changes() {
        let verifier = Verifier::new(REGION, "kms");
        let store = Store::one(AKID, SECRET);
        let req = valid();
        assert_eq!(req.verify_with(&verifier, &store, T0), ok());
        assert_eq!(sync::lock(&verifier.cache).len(), 1);
        assert_eq!(req.verify_with(&verifier, &store, T0), ok());
        assert_eq!(sync::lock(&verifier.cache).len(), 1);
        // Same key id, rotated secret: the cached signing key must not be reused.
        let rotated = Store::one(AKID, "a-new-secret");
        assert_eq!(
            req.verify_with(&verifier, &rotated, T0),
            Err(AuthError::BadSignature)
        );
        let fresh = signed_kms(Signing {
            secret: "a-new-secret",
            ..Signing::default()
        });
        assert_eq!(fresh.verify_with(&verifier, &rotated, T0), ok());
        assert_eq!(
            fresh.verify_with(&verifier, &store, T0),
            Err(AuthError::BadSignature)
        );
        assert_eq!(req.verify_with(&verifier, &store, T0), ok());
    }

    #[test]
    fn cache_stays_bounded() {
        let verifier = Verifier::new(REGION, "kms");
        for i in 0..(CACHE_CAPACITY + 10) {
            verifier.signing_key(&format!("AKID{i}"), SECRET, "20240501", REGION);
        }
        assert!(sync::lock(&verifier.cache).len() <= CACHE_CAPACITY);
    }

    #[test]
    fn error_names_and_messages() {
        assert_eq!(
            AuthError::Missing.aws_name(),
            "MissingAuthenticationTokenException"
        );
        assert_eq!(
            AuthError::Incomplete("x".into()).aws_name(),
            "IncompleteSignatureException"
        );
        assert_eq!(
            AuthError::UnknownAccessKey.aws_name(),
            "UnrecognizedClientException"
        );
        assert_eq!(
            AuthError::BadSignature.aws_name(),
            "InvalidSignatureException"
        );
        assert_eq!(
            AuthError::Expired("x".into()).aws_name(),
            "InvalidSignatureException"
        );
        assert_eq!(AuthError::Missing.message(), "Missing Authentication Token");
        assert!(AuthError::BadSignature
            .message()
            .starts_with("The request signature we calculated"));
        assert_eq!(AuthError::Incomplete("why".into()).message(), "why");
    }

    /// The worked example of AWS's SigV4 documentation ("Derive a signing key"), and the
    /// verifier's cached key is that same key.
    #[test]
    fn signing_key_derivation_known_answer() {
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let key = derive_signing_key(secret, "20120215", "us-east-1", "iam").expect("key");
        assert_eq!(
            hex::encode(key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
        let verifier = Verifier::new("us-east-1", "iam");
        assert_eq!(
            verifier.signing_key("AKID", secret, "20120215", "us-east-1"),
            Some(key)
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn head_of(o: &Owned) -> Vec<(String, Vec<u8>)> {
            o.headers.clone()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            /// Arbitrary headers and bodies: never a panic, never a pass.
            #[test]
            fn arbitrary_requests_never_verify(
                headers in proptest::collection::vec(
                    ("[A-Za-z-]{1,16}", proptest::collection::vec(any::<u8>(), 0..64)), 0..16),
                auth in "\\PC{0,300}",
                body in proptest::collection::vec(any::<u8>(), 0..128),
            ) {
                let mut h: Vec<(&str, &[u8])> =
                    headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
                h.push(("authorization", auth.as_bytes()));
                h.push(("x-amz-date", b"20240501T120000Z"));
                let parts = RequestParts { method: "POST", path: "/", query: "", headers: &h };
                let r = Verifier::new(REGION, "kms").verify(&parts, &body, &Store::one(AKID, SECRET), T0);
                prop_assert!(r.is_err());
            }

            /// A genuinely signed request with its body changed in any way never verifies.
            #[test]
            fn changed_bodies_never_verify(body in proptest::collection::vec(any::<u8>(), 0..200)) {
                prop_assume!(body != BODY);
                let mut req = valid();
                req.body = body;
                prop_assert_eq!(req.verify(), Err(AuthError::BadSignature));
            }

            /// Any signed header's value changed (beyond SigV4's whitespace folding) fails.
            #[test]
            fn changed_signed_values_never_verify(which in 0usize..4, byte in 33u8..127, at in 0usize..40) {
                let req = valid();
                let signed = ["content-type", "host", "x-amz-date", "x-amz-target"];
                let name = signed[which];
                let mut headers = head_of(&req);
                let Some((_, v)) = headers.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
                    return Ok(());
                };
                let i = at % v.len().max(1);
                prop_assume!(!v.is_empty() && v[i] != byte);
                v[i] = byte;
                let mut tampered = req.clone();
                tampered.headers = headers;
                prop_assert!(tampered.verify().is_err());
            }
        }
    }
}
