//! Standard Webhooks signatures on the requests Keel sends downstream: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` under the type's `whsec_` secret, so
//! the service verifies Keel with any Standard Webhooks library.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// A signing key (`whsec_` then base64). Its bytes never reach a log: `Debug` prints nothing of them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn parse(raw: &str) -> Option<Self> {
        let encoded = raw.trim().strip_prefix("whsec_")?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
        (!bytes.is_empty()).then_some(Self(bytes))
    }

    /// The three headers for `body` sent as message `id` at `timestamp` (Unix seconds).
    pub fn headers(&self, id: &str, timestamp: i64, body: &[u8]) -> [(&'static str, String); 3] {
        [
            (ID_HEADER, id.to_string()),
            (TIMESTAMP_HEADER, timestamp.to_string()),
            (SIGNATURE_HEADER, format!("v1,{}", self.signature(id, timestamp, body))),
        ]
    }

    fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        #[allow(clippy::expect_used)] // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex_of(&Sha256::digest(bytes))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether two strings are equal, in time that depends on their length only.
pub fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// A fresh callback token for a job's attempt: `{job id}.{32 random bytes, base64url}`.
pub fn callback_token(job_id: &str) -> String {
    let mut secret = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut secret[..]);
    format!("{job_id}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (and of every official library's tests).
    #[test]
    fn the_specifications_example_signs_to_its_published_signature() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let [id, timestamp, signature] = secret.headers("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(id, (ID_HEADER, "msg_p5jXN8AQM9LWM0D4loKWxJek".to_string()));
        assert_eq!(timestamp, (TIMESTAMP_HEADER, "1614265330".to_string()));
        assert_eq!(signature, (SIGNATURE_HEADER, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_string()));
    }

    #[test]
    fn callback_tokens_name_their_job_and_differ_every_time() {
        let (one, two) = (callback_token("01JOB"), callback_token("01JOB"));
        assert!(one.starts_with("01JOB.") && one != two && one.len() == "01JOB.".len() + 43);
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(equal("abc", "abc") && !equal("abc", "abd") && !equal("abc", "ab"));
    }

    #[test]
    fn secrets_need_the_prefix_and_base64_and_never_print() {
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
        assert!(Secret::parse("whsec_not base64!").is_none());
        assert!(Secret::parse("whsec_").is_none());
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{secret:?}"), "Secret(..)");
    }
}
