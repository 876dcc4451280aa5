//! A minimal SigV4 signer for the load generator: exactly the requests it sends (POST /, no
//! query, four signed headers), so signing costs a few microseconds and does not weigh on the
//! machine the server shares. Checked against the `aws-sigv4` crate in the tests below.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::api::sigv4::derive_signing_key;

pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
const SIGNED_HEADERS: &str = "content-type;host;x-amz-date;x-amz-target";

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: this cannot fail.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Signs requests for one access key, region and host; caches the day's signing key.
#[derive(Clone)]
pub struct Signer {
    access_key_id: String,
    secret: String,
    region: String,
    host: String,
    day_key: Option<(String, [u8; 32])>,
}

impl Signer {
    pub fn new(access_key_id: &str, secret: &str, region: &str, host: &str) -> Signer {
        Signer {
            access_key_id: access_key_id.to_owned(),
            secret: secret.to_owned(),
            region: region.to_owned(),
            host: host.to_owned(),
            day_key: None,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn signing_key(&mut self, day: &str) -> [u8; 32] {
        if let Some((d, k)) = &self.day_key {
            if d == day {
                return *k;
            }
        }
        let Some(k) = derive_signing_key(&self.secret, day, &self.region, "kms") else {
            unreachable!("HMAC accepts any key length")
        };
        self.day_key = Some((day.to_owned(), k));
        k
    }

    /// The `Authorization` value for `POST /` with these headers and body hash (hex SHA-256).
    pub fn authorization(&mut self, amz_date: &str, target: &str, body_sha256: &str) -> String {
        let day = &amz_date[..8];
        let canonical = format!(
            "POST\n/\n\ncontent-type:{CONTENT_TYPE}\nhost:{}\nx-amz-date:{amz_date}\n\
             x-amz-target:{target}\n\n{SIGNED_HEADERS}\n{body_sha256}",
            self.host
        );
        let scope = format!("{day}/{}/kms/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let sig = hmac(&self.signing_key(day), to_sign.as_bytes());
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={SIGNED_HEADERS}, Signature={}",
            self.access_key_id,
            hex::encode(sig)
        )
    }
}

/// `YYYYMMDD'T'HHMMSS'Z'` for a Unix time in seconds.
pub fn amz_date(unix_secs: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix_secs)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub fn sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;

    #[test]
    fn matches_aws_sigv4() {
        let unix = 1_780_000_000;
        let date = amz_date(unix);
        let body = br#"{"KeyId":"alias/x","KeySpec":"AES_256"}"#;
        let target = "TrentService.GenerateDataKey";
        let host = "127.0.0.1:4599";
        let mut ours = Signer::new("AKIDEXAMPLE", "secret/key+1", "us-east-2", host);
        let auth = ours.authorization(&date, target, &sha256_hex(body));

        let identity = Credentials::new("AKIDEXAMPLE", "secret/key+1", None, None, "t").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-2")
            .name("kms")
            .time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix as u64))
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let headers = [
            ("content-type", CONTENT_TYPE),
            ("host", host),
            ("x-amz-date", date.as_str()),
            ("x-amz-target", target),
        ];
        let req = SignableRequest::new(
            "POST",
            format!("http://{host}/"),
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(req, &params).unwrap().into_parts();
        let theirs = instructions
            .headers()
            .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.to_string())
            .unwrap();
        assert_eq!(auth, theirs);
        assert_eq!(date, "20260528T202640Z");
    }
}
