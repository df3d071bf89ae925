//! Signature verification for inbound webhooks.
//!
//! Pure: no I/O, the clock is injected. Raw body bytes are MACed as received (never re-serialised, never
//! required to be UTF-8); MAC bytes are compared in constant time; every configured secret is tried
//! (rotation). Checks run in a fixed order: secrets configured, headers present and well-formed, timestamp
//! window, signature. Signature candidates live in a fixed stack array and the body is fed to the MAC in
//! place; the only heap use is a decoded Standard Webhooks key and the metadata of a verified body.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use serde::Deserialize;
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

/// How far a signed timestamp may be from `now`, in either direction.
pub const TOLERANCE: chrono::Duration = chrono::Duration::minutes(5);

/// Most signature entries accepted in one header; bounds parsing and comparison work.
pub const MAX_SIGNATURES: usize = 16;

/// Values at or above this are milliseconds (10^12 s is the year 33658; 10^12 ms is 2001).
const KEEL_MS_THRESHOLD: u64 = 1_000_000_000_000;

/// Standard base64; padding optional because Standard Webhooks secrets are often published without it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;
type Tag = [u8; 32];

/// A provider's signature scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Keel,
    Standard,
    Stripe,
    Github,
    Slack,
    Shopify,
}

impl Scheme {
    pub const ALL: [Scheme; 6] =
        [Scheme::Keel, Scheme::Standard, Scheme::Stripe, Scheme::Github, Scheme::Slack, Scheme::Shopify];

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Keel => "keel",
            Scheme::Standard => "standard",
            Scheme::Stripe => "stripe",
            Scheme::Github => "github",
            Scheme::Slack => "slack",
            Scheme::Shopify => "shopify",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scheme name is not one Keel knows; the provider must be rejected (fail closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown webhook scheme")]
pub struct UnknownScheme;

impl FromStr for Scheme {
    type Err = UnknownScheme;

    /// Trimmed, ASCII case-insensitive; no aliases, so a typo never selects some other scheme.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Scheme::ALL.into_iter().find(|scheme| scheme.as_str().eq_ignore_ascii_case(s)).ok_or(UnknownScheme)
    }
}

/// A webhook signing secret. Never printed; its bytes are overwritten when dropped.
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Clone for Secret {
    fn clone(&self) -> Self {
        Secret(self.0.clone())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(std::mem::take(&mut self.0).into_bytes());
    }
}

/// Best-effort zeroing without `unsafe` or an extra crate: zero the whole allocation (spare capacity
/// included) and hide the buffer behind `black_box` so the stores are not elided as dead.
fn wipe(mut bytes: Vec<u8>) {
    let capacity = bytes.capacity();
    bytes.fill(0);
    bytes.resize(capacity, 0);
    std::hint::black_box(&mut bytes);
}

/// What a verified request tells about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    pub event_id: Option<String>,
    pub timestamp: Option<DateTime<Utc>>,
    pub event_type: Option<String>,
}

/// Why a request was rejected. Messages name headers only, never secrets or signature values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    #[error("malformed header `{0}`")]
    MalformedHeader(&'static str),
    #[error("timestamp is older than the tolerance window")]
    TimestampTooOld,
    #[error("timestamp is too far in the future")]
    TimestampInFuture,
    #[error("signature does not match")]
    SignatureMismatch,
    #[error("no usable secret is configured for this provider")]
    NoSecrets,
}

impl VerifyError {
    pub fn status(&self) -> u16 {
        match self {
            VerifyError::MissingHeader(_) | VerifyError::MalformedHeader(_) => 400,
            _ => 401,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) => "missing_header",
            VerifyError::MalformedHeader(_) => "malformed_header",
            VerifyError::TimestampTooOld => "timestamp_too_old",
            VerifyError::TimestampInFuture => "timestamp_in_future",
            VerifyError::SignatureMismatch => "signature_mismatch",
            VerifyError::NoSecrets => "no_secrets",
        }
    }
}

// Header names, lowercase: HeaderMap lookups are case-insensitive and errors name them this way.
const KEEL_ID: &str = "x-webhook-event-id";
const KEEL_TS: &str = "x-webhook-timestamp";
const KEEL_SIG: &str = "x-webhook-signature";
const STD_NAMES: StdNames = StdNames { id: "webhook-id", ts: "webhook-timestamp", sig: "webhook-signature" };
const SVIX_NAMES: StdNames = StdNames { id: "svix-id", ts: "svix-timestamp", sig: "svix-signature" };
const STRIPE_SIG: &str = "stripe-signature";
const GITHUB_SIG: &str = "x-hub-signature-256";
const GITHUB_DELIVERY: &str = "x-github-delivery";
const GITHUB_EVENT: &str = "x-github-event";
const SLACK_TS: &str = "x-slack-request-timestamp";
const SLACK_SIG: &str = "x-slack-signature";
const SHOPIFY_SIG: &str = "x-shopify-hmac-sha256";
const SHOPIFY_EVENT_ID: &str = "x-shopify-event-id";
const SHOPIFY_WEBHOOK_ID: &str = "x-shopify-webhook-id";
const SHOPIFY_TOPIC: &str = "x-shopify-topic";

struct StdNames {
    id: &'static str,
    ts: &'static str,
    sig: &'static str,
}

/// Up to [`MAX_SIGNATURES`] decoded candidate MACs, on the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidates {
    tags: [Tag; MAX_SIGNATURES],
    len: usize,
}

impl Candidates {
    fn new() -> Self {
        Candidates { tags: [[0; 32]; MAX_SIGNATURES], len: 0 }
    }

    fn one(tag: Tag) -> Self {
        let mut c = Candidates::new();
        c.tags[0] = tag;
        c.len = 1;
        c
    }

    fn push(&mut self, tag: Tag) {
        if let Some(slot) = self.tags.get_mut(self.len) {
            *slot = tag;
            self.len += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn as_slice(&self) -> &[Tag] {
        self.tags.get(..self.len).unwrap_or(&[])
    }

    /// Constant time in the tag values; examines every candidate whatever matches.
    fn contains(&self, tag: &Tag) -> Choice {
        self.as_slice().iter().fold(Choice::from(0), |acc, c| acc | c.as_slice().ct_eq(tag.as_slice()))
    }
}

/// Verifies a webhook request against any of `secrets`.
pub fn verify(
    scheme: Scheme,
    secrets: &[Secret],
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Verified, VerifyError> {
    if secrets.is_empty() {
        return Err(VerifyError::NoSecrets);
    }
    match scheme {
        Scheme::Keel => verify_keel(secrets, headers, body, now),
        Scheme::Standard => verify_standard(secrets, headers, body, now),
        Scheme::Stripe => verify_stripe(secrets, headers, body, now),
        Scheme::Github => verify_github(secrets, headers, body),
        Scheme::Slack => verify_slack(secrets, headers, body, now),
        Scheme::Shopify => verify_shopify(secrets, headers, body),
    }
}

fn verify_keel(
    secrets: &[Secret],
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Verified, VerifyError> {
    let id = required(headers, KEEL_ID)?;
    let ts_text = required(headers, KEEL_TS)?;
    let ts_ms = parse_keel_timestamp(ts_text).ok_or(VerifyError::MalformedHeader(KEEL_TS))?;
    let sigs = parse_keel_signatures(required(headers, KEEL_SIG)?).ok_or(VerifyError::MalformedHeader(KEEL_SIG))?;
    let timestamp = check_window(ts_ms, now)?;
    let parts: [&[u8]; 3] = [ts_text.as_bytes(), b".", body];
    check_mac(secrets, raw_key, &parts, &sigs)?;
    Ok(Verified { event_id: Some(id.to_owned()), timestamp, event_type: BodyMeta::parse(body).and_then(|m| m.type_.0) })
}

fn verify_standard(
    secrets: &[Secret],
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Verified, VerifyError> {
    // One family of names per request, never a mix: webhook-* when any of them is present.
    let uses_std = [STD_NAMES.id, STD_NAMES.ts, STD_NAMES.sig].iter().any(|n| headers.contains_key(*n));
    let uses_svix = [SVIX_NAMES.id, SVIX_NAMES.ts, SVIX_NAMES.sig].iter().any(|n| headers.contains_key(*n));
    let names = if uses_svix && !uses_std { &SVIX_NAMES } else { &STD_NAMES };
    let id = required(headers, names.id)?;
    let ts_text = required(headers, names.ts)?;
    let ts_ms = parse_seconds(ts_text).ok_or(VerifyError::MalformedHeader(names.ts))?;
    let sigs =
        parse_standard_signatures(required(headers, names.sig)?).ok_or(VerifyError::MalformedHeader(names.sig))?;
    let timestamp = check_window(ts_ms, now)?;
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts_text.as_bytes(), b".", body];
    check_mac(secrets, standard_key, &parts, &sigs)?;
    Ok(Verified { event_id: Some(id.to_owned()), timestamp, event_type: BodyMeta::parse(body).and_then(|m| m.type_.0) })
}

fn verify_stripe(
    secrets: &[Secret],
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Verified, VerifyError> {
    let (ts_text, sigs) =
        parse_stripe_signature(required(headers, STRIPE_SIG)?).ok_or(VerifyError::MalformedHeader(STRIPE_SIG))?;
    let ts_ms = parse_seconds(ts_text).ok_or(VerifyError::MalformedHeader(STRIPE_SIG))?;
    let timestamp = check_window(ts_ms, now)?;
    let parts: [&[u8]; 3] = [ts_text.as_bytes(), b".", body];
    check_mac(secrets, raw_key, &parts, &sigs)?;
    let meta = BodyMeta::parse(body).unwrap_or_default();
    Ok(Verified { event_id: meta.id.0, timestamp, event_type: meta.type_.0 })
}

fn verify_github(secrets: &[Secret], headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
    let sigs =
        parse_github_signature(required(headers, GITHUB_SIG)?).ok_or(VerifyError::MalformedHeader(GITHUB_SIG))?;
    let delivery = optional(headers, GITHUB_DELIVERY)?;
    let event = optional(headers, GITHUB_EVENT)?;
    check_mac(secrets, raw_key, &[body], &sigs)?;
    let event_type = event.map(|event| match BodyMeta::parse(body).and_then(|m| m.action.0) {
        Some(action) => format!("{event}.{action}"),
        None => event.to_owned(),
    });
    Ok(Verified { event_id: delivery.map(str::to_owned), timestamp: None, event_type })
}

fn verify_slack(
    secrets: &[Secret],
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Verified, VerifyError> {
    let ts_text = required(headers, SLACK_TS)?;
    let ts_ms = parse_seconds(ts_text).ok_or(VerifyError::MalformedHeader(SLACK_TS))?;
    let sigs = parse_slack_signature(required(headers, SLACK_SIG)?).ok_or(VerifyError::MalformedHeader(SLACK_SIG))?;
    let timestamp = check_window(ts_ms, now)?;
    let parts: [&[u8]; 4] = [b"v0:", ts_text.as_bytes(), b":", body];
    check_mac(secrets, raw_key, &parts, &sigs)?;
    let meta = BodyMeta::parse(body).unwrap_or_default();
    let event_type = meta.event.0.or(meta.type_.0).or_else(|| is_slash_command(body).then(|| "command".to_owned()));
    Ok(Verified { event_id: meta.event_id.0, timestamp, event_type })
}

fn verify_shopify(secrets: &[Secret], headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
    let sigs =
        parse_shopify_signature(required(headers, SHOPIFY_SIG)?).ok_or(VerifyError::MalformedHeader(SHOPIFY_SIG))?;
    let event_id = match optional(headers, SHOPIFY_EVENT_ID)? {
        Some(id) => Some(id),
        None => optional(headers, SHOPIFY_WEBHOOK_ID)?,
    };
    let topic = optional(headers, SHOPIFY_TOPIC)?;
    check_mac(secrets, raw_key, &[body], &sigs)?;
    Ok(Verified { event_id: event_id.map(str::to_owned), timestamp: None, event_type: topic.map(str::to_owned) })
}

/// Returns the challenge to echo when an (already verified) Slack body is a `url_verification` handshake.
pub fn slack_url_verification_challenge(body: &[u8]) -> Option<String> {
    let meta = BodyMeta::parse(body)?;
    if meta.type_.0.as_deref() == Some("url_verification") { meta.challenge.0 } else { None }
}

// ---- headers -------------------------------------------------------------------------------------------

/// A header's value as trimmed visible ASCII (spaces allowed inside: signature lists use them).
/// A repeated header is malformed: two senders' values must never be combined or picked between.
fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(VerifyError::MalformedHeader(name));
    }
    let bytes = value.as_bytes();
    if !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(VerifyError::MalformedHeader(name));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| VerifyError::MalformedHeader(name))?;
    Ok(Some(text.trim_matches(' ')))
}

fn required<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, VerifyError> {
    match header(headers, name)? {
        None => Err(VerifyError::MissingHeader(name)),
        Some("") => Err(VerifyError::MalformedHeader(name)),
        Some(text) => Ok(text),
    }
}

/// Unsigned metadata: absent or empty means unknown; a non-ASCII value still rejects the request.
fn optional<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, VerifyError> {
    Ok(header(headers, name)?.filter(|v| !v.is_empty()))
}

// ---- parsers (None = malformed) ------------------------------------------

/// Digits only (no sign, no spaces); values that overflow 64 bits are malformed.
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Unix seconds, returned as milliseconds.
fn parse_seconds(text: &str) -> Option<i128> {
    parse_digits(text).map(|s| i128::from(s) * 1000)
}

/// Unix seconds, or milliseconds when the value is at least 10^12; returned as milliseconds.
fn parse_keel_timestamp(text: &str) -> Option<i128> {
    let value = parse_digits(text)?;
    Some(if value >= KEEL_MS_THRESHOLD { i128::from(value) } else { i128::from(value) * 1000 })
}

fn hex_tag(text: &str) -> Option<Tag> {
    let mut tag = [0u8; 32];
    hex::decode_to_slice(text, &mut tag).ok()?;
    Some(tag)
}

fn b64_tag(text: &str) -> Option<Tag> {
    // 64 chars decode to at most 48 bytes: the buffer always fits, and longer input is never a 32-byte tag.
    if text.len() > 64 {
        return None;
    }
    let mut buf = [0u8; 48];
    let n = B64.decode_slice(text, &mut buf).ok()?;
    buf.get(..n)?.try_into().ok()
}

/// Collects decodable entries; None when there are none or more than [`MAX_SIGNATURES`] entries.
fn collect<'a>(entries: impl Iterator<Item = &'a str>, decode: impl Fn(&'a str) -> Option<Tag>) -> Option<Candidates> {
    let mut out = Candidates::new();
    for (i, entry) in entries.enumerate() {
        if i >= MAX_SIGNATURES {
            return None;
        }
        if let Some(tag) = decode(entry) {
            out.push(tag);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Keel: hex tags, each optionally `sha256=`-prefixed, separated by commas and/or spaces.
fn parse_keel_signatures(value: &str) -> Option<Candidates> {
    let entries = value.split([',', ' ']).filter(|e| !e.is_empty());
    collect(entries, |entry| {
        let hex = match entry.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("sha256=") => entry.get(7..)?,
            _ => entry,
        };
        hex_tag(hex)
    })
}

/// Standard Webhooks: space-separated `v1,<base64>`; other versions (e.g. `v1a`) are ignored.
fn parse_standard_signatures(value: &str) -> Option<Candidates> {
    let entries = value.split(' ').filter(|e| !e.is_empty());
    collect(entries, |entry| match entry.split_once(',') {
        Some(("v1", sig)) => b64_tag(sig),
        _ => None,
    })
}

/// Stripe: `t=<secs>,v1=<hex>[,v1=...][,v0=...]`. Returns the exact `t` text and the v1 tags.
/// Exactly one `t` is required; a second one would make the signed timestamp ambiguous.
fn parse_stripe_signature(value: &str) -> Option<(&str, Candidates)> {
    let mut t = None;
    for item in value.split(',') {
        if let Some(("t", ts)) = item.trim_matches(' ').split_once('=') {
            if t.is_some() {
                return None;
            }
            t = Some(ts);
        }
    }
    let entries =
        value.split(',').map(|item| item.trim_matches(' ')).filter(|item| !item.is_empty() && !item.starts_with("t="));
    let sigs = collect(entries, |item| match item.split_once('=') {
        Some(("v1", sig)) => hex_tag(sig),
        _ => None,
    })?;
    Some((t?, sigs))
}

/// GitHub: `sha256=<hex>`.
fn parse_github_signature(value: &str) -> Option<Candidates> {
    value.strip_prefix("sha256=").and_then(hex_tag).map(Candidates::one)
}

/// Slack: `v0=<hex>`.
fn parse_slack_signature(value: &str) -> Option<Candidates> {
    value.strip_prefix("v0=").and_then(hex_tag).map(Candidates::one)
}

/// Shopify: base64 of the tag.
fn parse_shopify_signature(value: &str) -> Option<Candidates> {
    b64_tag(value).map(Candidates::one)
}

// ---- window and MAC ------------------------------------------------------------------------------------

/// Accepts |now - ts| <= TOLERANCE (boundaries included), at millisecond precision.
fn check_window(ts_ms: i128, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, VerifyError> {
    let now_ms = i128::from(now.timestamp_millis());
    let tolerance = i128::from(TOLERANCE.num_milliseconds());
    if now_ms - ts_ms > tolerance {
        return Err(VerifyError::TimestampTooOld);
    }
    if ts_ms - now_ms > tolerance {
        return Err(VerifyError::TimestampInFuture);
    }
    Ok(i64::try_from(ts_ms).ok().and_then(DateTime::from_timestamp_millis))
}

/// A MAC key derived from a secret; wiped on drop when it is a decoded copy.
enum Key<'a> {
    Borrowed(&'a [u8]),
    Decoded(Vec<u8>),
}

impl Key<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Key::Borrowed(b) => b,
            Key::Decoded(v) => v,
        }
    }
}

impl Drop for Key<'_> {
    fn drop(&mut self) {
        if let Key::Decoded(v) = self {
            wipe(std::mem::take(v));
        }
    }
}

/// The secret string's UTF-8 bytes (Keel, Stripe, GitHub, Slack, Shopify).
fn raw_key(secret: &Secret) -> Option<Key<'_>> {
    Some(Key::Borrowed(secret.as_bytes()))
}

/// Standard Webhooks: base64 after an optional `whsec_` prefix. Undecodable secrets are unusable.
fn standard_key(secret: &Secret) -> Option<Key<'_>> {
    let text = secret.0.trim();
    let b64 = text.strip_prefix("whsec_").unwrap_or(text);
    B64.decode(b64).ok().map(Key::Decoded)
}

/// Tries every usable secret against every candidate without early exit, so timing reveals neither
/// which secret nor which candidate matched. An empty key is unusable: anyone could compute that MAC.
fn check_mac<'s>(
    secrets: &'s [Secret],
    key_of: impl Fn(&'s Secret) -> Option<Key<'s>>,
    parts: &[&[u8]],
    sigs: &Candidates,
) -> Result<(), VerifyError> {
    let mut matched = Choice::from(0);
    let mut usable = false;
    for secret in secrets {
        let Some(key) = key_of(secret) else { continue };
        if key.bytes().is_empty() {
            continue;
        }
        let Ok(mut mac) = HmacSha256::new_from_slice(key.bytes()) else {
            continue;
        };
        usable = true;
        for part in parts {
            mac.update(part);
        }
        let tag: Tag = mac.finalize().into_bytes().into();
        matched |= sigs.contains(&tag);
    }
    if !usable {
        return Err(VerifyError::NoSecrets);
    }
    if bool::from(matched) { Ok(()) } else { Err(VerifyError::SignatureMismatch) }
}

// ---- body metadata -------------------------------------------------------------------------------------

/// Fields read from a verified JSON body. Each is `None` unless it is a string, so an odd field never
/// hides the others; unknown fields are skipped without building a DOM.
#[derive(Default, Deserialize)]
#[serde(default)]
struct BodyMeta {
    id: LooseStr,
    #[serde(rename = "type")]
    type_: LooseStr,
    action: LooseStr,
    event_id: LooseStr,
    event: EventType,
    challenge: LooseStr,
}

impl BodyMeta {
    /// None when the body is not a JSON object (form bodies, binary payloads).
    fn parse(body: &[u8]) -> Option<BodyMeta> {
        serde_json::from_slice(body).ok()
    }
}

/// A string value, or None for any other JSON value.
#[derive(Default)]
struct LooseStr(Option<String>);

impl<'de> Deserialize<'de> for LooseStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LooseStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LooseStr, E> {
                Ok(LooseStr(Some(v.to_owned())))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<LooseStr, E> {
                Ok(LooseStr(None))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<LooseStr, E> {
                Ok(LooseStr(None))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<LooseStr, E> {
                Ok(LooseStr(None))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<LooseStr, E> {
                Ok(LooseStr(None))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<LooseStr, E> {
                Ok(LooseStr(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, a: A) -> Result<LooseStr, A::Error> {
                serde::de::IgnoredAny.visit_seq(a).map(|_| LooseStr(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<LooseStr, A::Error> {
                serde::de::IgnoredAny.visit_map(a).map(|_| LooseStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Slack's `event.type`: the string `type` of an object, None for anything else.
#[derive(Default)]
struct EventType(Option<String>);

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key(bool);
        impl<'de> Deserialize<'de> for Key {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct KV;
                impl serde::de::Visitor<'_> for KV {
                    type Value = Key;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a key")
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
                        Ok(Key(v == "type"))
                    }
                }
                d.deserialize_str(KV)
            }
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EventType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<EventType, A::Error> {
                let mut found: Option<LooseStr> = None;
                while let Some(Key(is_type)) = a.next_key()? {
                    if !is_type {
                        a.next_value::<serde::de::IgnoredAny>()?;
                    } else if found.is_some() {
                        return Err(serde::de::Error::duplicate_field("type"));
                    } else {
                        found = Some(a.next_value()?);
                    }
                }
                Ok(EventType(found.and_then(|s| s.0)))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<EventType, E> {
                Ok(EventType(None))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<EventType, E> {
                Ok(EventType(None))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<EventType, E> {
                Ok(EventType(None))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<EventType, E> {
                Ok(EventType(None))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<EventType, E> {
                Ok(EventType(None))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<EventType, E> {
                Ok(EventType(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, a: A) -> Result<EventType, A::Error> {
                serde::de::IgnoredAny.visit_seq(a).map(|_| EventType(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A form-encoded slash-command body (`...&command=%2Ffoo&...`).
fn is_slash_command(body: &[u8]) -> bool {
    body.split(|b| *b == b'&').any(|field| field.starts_with(b"command="))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use http::{HeaderName, HeaderValue};
    use proptest::prelude::*;
    use serde_json::Value;
    use std::path::PathBuf;

    // ---- fixtures ----

    fn fixtures_dir() -> PathBuf {
        std::env::var_os("KEEL_FIXTURES_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"), PathBuf::from)
    }

    fn vector(scheme: &str) -> Value {
        let path = fixtures_dir().join("webhook-vectors.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "published webhook vectors not readable at {} ({e}); set KEEL_FIXTURES_DIR to the directory \
                 holding webhook-vectors.json",
                path.display()
            )
        });
        let all: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
        all["vectors"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["scheme"] == scheme))
            .cloned()
            .unwrap_or_else(|| panic!("no `{scheme}` vector in {}", path.display()))
    }

    fn field<'a>(v: &'a Value, key: &str) -> &'a str {
        v[key].as_str().unwrap_or_else(|| panic!("vector field `{key}` missing"))
    }

    /// "Name: value" as written in the vectors.
    fn split_header(line: &str) -> (&str, &str) {
        let (name, value) = line.split_once(": ").expect("`Name: value`");
        (name, value)
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("in range")
    }

    fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn secrets(values: &[&str]) -> Vec<Secret> {
        values.iter().map(|s| Secret::new((*s).to_owned())).collect()
    }

    // ---- reference signers, written from each scheme's documentation ----

    fn hmac(key: &[u8], msg: &[u8]) -> Tag {
        let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
        mac.update(msg);
        mac.finalize().into_bytes().into()
    }

    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    const TS: i64 = 1_700_000_000;
    const ID: &str = "evt_01HZX";
    const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const STD_OTHER: &str = "whsec_dGhpcyBpcyBhbm90aGVyIGtleSEhIQ==";

    fn secret_for(scheme: Scheme) -> &'static str {
        match scheme {
            Scheme::Standard => STD_SECRET,
            Scheme::Stripe => "whsec_stripe_test_0123456789",
            _ => "s3cr3t-for-tests",
        }
    }

    fn wrong_secret_for(scheme: Scheme) -> &'static str {
        match scheme {
            Scheme::Standard => STD_OTHER,
            _ => "not-the-secret",
        }
    }

    /// The MAC each scheme's documentation prescribes, computed independently of the code under test.
    fn reference_tag(scheme: Scheme, secret: &str, body: &[u8], ts: &str) -> Tag {
        match scheme {
            Scheme::Keel | Scheme::Stripe => hmac(secret.as_bytes(), &concat(&[ts.as_bytes(), b".", body])),
            Scheme::Standard => {
                let key = STANDARD.decode(secret.trim_start_matches("whsec_")).expect("b64 key");
                hmac(&key, &concat(&[ID.as_bytes(), b".", ts.as_bytes(), b".", body]))
            }
            Scheme::Github | Scheme::Shopify => hmac(secret.as_bytes(), body),
            Scheme::Slack => hmac(secret.as_bytes(), &concat(&[b"v0:", ts.as_bytes(), b":", body])),
        }
    }

    /// The headers a sender of `scheme` would send with `tag`.
    fn headers_with(scheme: Scheme, tag: &Tag, ts: &str) -> HeaderMap {
        let hex = hex::encode(tag);
        let b64 = STANDARD.encode(tag);
        match scheme {
            Scheme::Keel => {
                hdrs(&[("x-webhook-event-id", ID), ("x-webhook-timestamp", ts), ("x-webhook-signature", &hex)])
            }
            Scheme::Standard => {
                hdrs(&[("webhook-id", ID), ("webhook-timestamp", ts), ("webhook-signature", &format!("v1,{b64}"))])
            }
            Scheme::Stripe => hdrs(&[("Stripe-Signature", &format!("t={ts},v1={hex}"))]),
            Scheme::Github => hdrs(&[
                ("X-Hub-Signature-256", &format!("sha256={hex}")),
                ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
                ("X-GitHub-Event", "push"),
            ]),
            Scheme::Slack => hdrs(&[("X-Slack-Request-Timestamp", ts), ("X-Slack-Signature", &format!("v0={hex}"))]),
            Scheme::Shopify => hdrs(&[
                ("X-Shopify-Hmac-Sha256", &b64),
                ("X-Shopify-Topic", "orders/create"),
                ("X-Shopify-Event-Id", "98880550-7158-44d4-b7cd-2c97c8a091b5"),
            ]),
        }
    }

    fn signed(scheme: Scheme, secret: &str, body: &[u8], ts: i64) -> HeaderMap {
        let ts = ts.to_string();
        headers_with(scheme, &reference_tag(scheme, secret, body, &ts), &ts)
    }

    fn timestamped(scheme: Scheme) -> bool {
        !matches!(scheme, Scheme::Github | Scheme::Shopify)
    }

    fn required_headers(scheme: Scheme) -> &'static [&'static str] {
        match scheme {
            Scheme::Keel => &[KEEL_ID, KEEL_TS, KEEL_SIG],
            Scheme::Standard => &["webhook-id", "webhook-timestamp", "webhook-signature"],
            Scheme::Stripe => &[STRIPE_SIG],
            Scheme::Github => &[GITHUB_SIG],
            Scheme::Slack => &[SLACK_TS, SLACK_SIG],
            Scheme::Shopify => &[SHOPIFY_SIG],
        }
    }

    const BODY: &[u8] = br#"{"id":"evt_1","type":"invoice.paid","data":{"object":{}}}"#;

    // ---- published vectors ----

    #[test]
    fn standard_webhooks_published_vector() {
        let v = vector("standard-webhooks");
        let (id, ts) = (field(&v["headers"], "webhook-id"), field(&v["headers"], "webhook-timestamp"));
        let expected = field(&v, "expected_signature");
        let now = at(ts.parse().expect("ts"));
        let headers = hdrs(&[("webhook-id", id), ("webhook-timestamp", ts), ("webhook-signature", expected)]);
        let got =
            verify(Scheme::Standard, &secrets(&[field(&v, "secret")]), &headers, field(&v, "body").as_bytes(), now)
                .expect("published vector verifies");
        assert_eq!(got.event_id.as_deref(), Some(id));
        assert_eq!(got.timestamp, Some(now));
        assert_eq!(got.event_type, None);
    }

    #[test]
    fn standard_webhooks_decoy_multi_signature_header() {
        let v = vector("standard-webhooks");
        let (id, ts) = (field(&v["headers"], "webhook-id"), field(&v["headers"], "webhook-timestamp"));
        let expected = field(&v, "expected_signature");
        let decoy = field(&v, "decoy_signature_for_multi_signature_header");
        let now = at(ts.parse().expect("ts"));
        let body = field(&v, "body").as_bytes();
        let keys = secrets(&[field(&v, "secret")]);
        let run = |sig: &str| {
            let headers = hdrs(&[("webhook-id", id), ("webhook-timestamp", ts), ("webhook-signature", sig)]);
            verify(Scheme::Standard, &keys, &headers, body, now)
        };
        assert!(run(&format!("{decoy} {expected}")).is_ok());
        assert!(run(&format!("{expected} {decoy}")).is_ok());
        assert!(run(&format!("v1a,{} {decoy}  {expected}", "A".repeat(86))).is_ok());
        assert_eq!(run(decoy), Err(VerifyError::SignatureMismatch));
        // Svix header names carry the same scheme.
        let svix = hdrs(&[("svix-id", id), ("svix-timestamp", ts), ("svix-signature", &format!("{decoy} {expected}"))]);
        assert!(verify(Scheme::Standard, &keys, &svix, body, now).is_ok());
        // The spec says an unprefixed secret is base64 too.
        let bare = secrets(&[field(&v, "secret").trim_start_matches("whsec_")]);
        assert!(verify(Scheme::Standard, &bare, &svix, body, now).is_ok());
    }

    #[test]
    fn github_published_vector() {
        let v = vector("github");
        let (name, value) = split_header(field(&v, "expected_header"));
        let keys = secrets(&[field(&v, "secret")]);
        let body = field(&v, "body").as_bytes();
        let headers = hdrs(&[(name, value)]);
        let got = verify(Scheme::Github, &keys, &headers, body, at(0)).expect("verifies");
        assert_eq!(got, Verified::default());
        let headers = hdrs(&[(name, value), ("X-GitHub-Delivery", "d-1"), ("X-GitHub-Event", "ping")]);
        let got = verify(Scheme::Github, &keys, &headers, body, at(0)).expect("verifies");
        assert_eq!(got.event_id.as_deref(), Some("d-1"));
        assert_eq!(got.event_type.as_deref(), Some("ping"));
        assert_eq!(
            verify(Scheme::Github, &keys, &headers, b"Hello, World?", at(0)),
            Err(VerifyError::SignatureMismatch)
        );
    }

    #[test]
    fn slack_published_vector() {
        let v = vector("slack");
        let ts = field(&v["headers"], "X-Slack-Request-Timestamp");
        let (name, value) = split_header(field(&v, "expected_header"));
        let headers = hdrs(&[("X-Slack-Request-Timestamp", ts), (name, value)]);
        let now = at(ts.parse().expect("ts"));
        let got = verify(Scheme::Slack, &secrets(&[field(&v, "secret")]), &headers, field(&v, "body").as_bytes(), now)
            .expect("published vector verifies");
        assert_eq!(got.timestamp, Some(now));
        assert_eq!(got.event_id, None);
        assert_eq!(got.event_type.as_deref(), Some("command"));
    }

    // ---- Stripe and Shopify, per their documented algorithms ----

    #[test]
    fn stripe_documented_algorithm() {
        let secret = "whsec_test_secret_for_stripe";
        let t = "1700000000";
        let tag = hex::encode(hmac(secret.as_bytes(), &concat(&[t.as_bytes(), b".", BODY])));
        let other = hex::encode([7u8; 32]);
        let header = format!("t={t},v1={other},v1={tag},v0={other}");
        let headers = hdrs(&[("stripe-signature", &header)]);
        let got = verify(Scheme::Stripe, &secrets(&[secret]), &headers, BODY, at(TS)).expect("verifies");
        assert_eq!(got.event_id.as_deref(), Some("evt_1"));
        assert_eq!(got.event_type.as_deref(), Some("invoice.paid"));
        assert_eq!(got.timestamp, Some(at(TS)));
        // Only v1 is trusted: the right MAC under v0 is not enough.
        let v0_only = hdrs(&[("stripe-signature", &format!("t={t},v1={other},v0={tag}"))]);
        assert_eq!(
            verify(Scheme::Stripe, &secrets(&[secret]), &v0_only, BODY, at(TS)),
            Err(VerifyError::SignatureMismatch)
        );
        // A body that is not JSON still verifies, without an id.
        let raw = b"\xff\xfe not json";
        let tag = hex::encode(hmac(secret.as_bytes(), &concat(&[t.as_bytes(), b".", raw])));
        let headers = hdrs(&[("Stripe-Signature", &format!("t={t}, v1={tag}"))]);
        let got = verify(Scheme::Stripe, &secrets(&[secret]), &headers, raw, at(TS)).expect("verifies");
        assert_eq!((got.event_id, got.event_type), (None, None));
    }

    #[test]
    fn stripe_header_shape() {
        let tag = hex::encode([1u8; 32]);
        for bad in [
            format!("v1={tag}"),
            format!("t=1,t=2,v1={tag}"),
            "t=1700000000".to_owned(),
            "t=1700000000,v0=abc".to_owned(),
            format!("t=-5,v1={tag}"),
            format!("t=17e8,v1={tag}"),
            format!("t=,v1={tag}"),
        ] {
            let headers = hdrs(&[("stripe-signature", &bad)]);
            assert_eq!(
                verify(Scheme::Stripe, &secrets(&["k"]), &headers, BODY, at(TS)),
                Err(VerifyError::MalformedHeader(STRIPE_SIG)),
                "{bad}"
            );
        }
    }

    #[test]
    fn shopify_documented_algorithm() {
        let secret = "shpss_0123456789abcdef";
        let body = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;
        let b64 = STANDARD.encode(hmac(secret.as_bytes(), body));
        let headers = hdrs(&[
            ("X-Shopify-Hmac-Sha256", &b64),
            ("X-Shopify-Topic", "orders/create"),
            ("X-Shopify-Webhook-Id", "wh-1"),
        ]);
        let got = verify(Scheme::Shopify, &secrets(&[secret]), &headers, body, at(TS)).expect("verifies");
        assert_eq!(got.event_id.as_deref(), Some("wh-1"));
        assert_eq!(got.event_type.as_deref(), Some("orders/create"));
        assert_eq!(got.timestamp, None);
        let mut with_event_id = headers.clone();
        with_event_id.insert("x-shopify-event-id", HeaderValue::from_static("ev-9"));
        let got = verify(Scheme::Shopify, &secrets(&[secret]), &with_event_id, body, at(TS)).expect("verifies");
        assert_eq!(got.event_id.as_deref(), Some("ev-9"));
    }

    // ---- every scheme ----

    #[test]
    fn round_trip_rotation_wrong_secret_and_tampering() {
        for scheme in Scheme::ALL {
            let right = secret_for(scheme);
            let wrong = wrong_secret_for(scheme);
            let headers = signed(scheme, right, BODY, TS);
            let ok = |keys: &[&str], body: &[u8]| verify(scheme, &secrets(keys), &headers, body, at(TS));
            assert!(ok(&[right], BODY).is_ok(), "{scheme}");
            assert!(ok(&[wrong, right], BODY).is_ok(), "{scheme}: second secret verifies");
            assert!(ok(&[right, wrong], BODY).is_ok(), "{scheme}");
            assert_eq!(ok(&[wrong], BODY), Err(VerifyError::SignatureMismatch), "{scheme}");
            let mut tampered = BODY.to_vec();
            tampered[2] ^= 1;
            assert_eq!(ok(&[right], &tampered), Err(VerifyError::SignatureMismatch), "{scheme}");
            assert_eq!(ok(&[right], b""), Err(VerifyError::SignatureMismatch), "{scheme}");
            assert_eq!(ok(&[], BODY), Err(VerifyError::NoSecrets), "{scheme}");
        }
    }

    #[test]
    fn non_utf8_bodies_verify() {
        let body: &[u8] = b"\x00\xff\xfe\x80binary\xc3\x28";
        for scheme in Scheme::ALL {
            let headers = signed(scheme, secret_for(scheme), body, TS);
            let got = verify(scheme, &secrets(&[secret_for(scheme)]), &headers, body, at(TS));
            assert!(got.is_ok(), "{scheme}: {got:?}");
        }
    }

    #[test]
    fn missing_and_malformed_headers() {
        for scheme in Scheme::ALL {
            let keys = secrets(&[secret_for(scheme)]);
            let good = signed(scheme, secret_for(scheme), BODY, TS);
            for &name in required_headers(scheme) {
                let mut headers = good.clone();
                headers.remove(name);
                assert_eq!(
                    verify(scheme, &keys, &headers, BODY, at(TS)),
                    Err(VerifyError::MissingHeader(name)),
                    "{scheme} without {name}"
                );
                let original = good.get(name).expect("present").clone();
                let bad_values: [&[u8]; 5] = [b"", b"   ", b"\xff\xfe", b"abc\tdef", b"garbage!"];
                // Ids are free-form; only signatures and timestamps have a shape to get wrong.
                let shapeless = name.ends_with("-id");
                for bad in bad_values.into_iter().filter(|b| !(shapeless && *b == b"garbage!")) {
                    let mut headers = good.clone();
                    headers.insert(name, HeaderValue::from_bytes(bad).expect("valid header bytes"));
                    assert_eq!(
                        verify(scheme, &keys, &headers, BODY, at(TS)),
                        Err(VerifyError::MalformedHeader(name)),
                        "{scheme} {name}={bad:?}"
                    );
                }
                // Two values for one header are ambiguous.
                let mut headers = good.clone();
                headers.append(name, original);
                assert_eq!(
                    verify(scheme, &keys, &headers, BODY, at(TS)),
                    Err(VerifyError::MalformedHeader(name)),
                    "{scheme} duplicate {name}"
                );
            }
        }
    }

    #[test]
    fn non_ascii_optional_headers_are_malformed() {
        let body = BODY;
        for (scheme, name) in [
            (Scheme::Github, GITHUB_EVENT),
            (Scheme::Github, GITHUB_DELIVERY),
            (Scheme::Shopify, SHOPIFY_TOPIC),
            (Scheme::Shopify, SHOPIFY_EVENT_ID),
        ] {
            let mut headers = signed(scheme, secret_for(scheme), body, TS);
            headers.insert(name, HeaderValue::from_bytes(b"caf\xc3\xa9").expect("obs-text"));
            assert_eq!(
                verify(scheme, &secrets(&[secret_for(scheme)]), &headers, body, at(TS)),
                Err(VerifyError::MalformedHeader(name))
            );
        }
    }

    #[test]
    fn timestamps_that_are_not_integers_are_malformed() {
        for scheme in [Scheme::Keel, Scheme::Standard, Scheme::Slack] {
            let ts_name =
                required_headers(scheme).iter().copied().find(|n| n.contains("timestamp")).expect("timestamp header");
            for bad in ["-1", "+1700000000", "1700000000.5", "1e9", "0x10", "99999999999999999999", "17 00"] {
                let mut headers = signed(scheme, secret_for(scheme), BODY, TS);
                headers.insert(ts_name, HeaderValue::from_str(bad).expect("ascii"));
                assert_eq!(
                    verify(scheme, &secrets(&[secret_for(scheme)]), &headers, BODY, at(TS)),
                    Err(VerifyError::MalformedHeader(ts_name)),
                    "{scheme} {bad}"
                );
            }
        }
    }

    #[test]
    fn timestamp_window_is_five_minutes_each_way() {
        let five = TOLERANCE;
        let one = chrono::Duration::seconds(1);
        for scheme in Scheme::ALL.into_iter().filter(|s| timestamped(*s)) {
            let keys = secrets(&[secret_for(scheme)]);
            let headers = signed(scheme, secret_for(scheme), BODY, TS);
            let run = |now: DateTime<Utc>| verify(scheme, &keys, &headers, BODY, now);
            assert!(run(at(TS) + five).is_ok(), "{scheme}: +5 min accepted");
            assert!(run(at(TS) - five).is_ok(), "{scheme}: -5 min accepted");
            assert_eq!(run(at(TS) + five + one), Err(VerifyError::TimestampTooOld), "{scheme}");
            assert_eq!(run(at(TS) - five - one), Err(VerifyError::TimestampInFuture), "{scheme}");
            // Stale is reported as stale even when the signature is also wrong.
            let other = secrets(&[wrong_secret_for(scheme)]);
            assert_eq!(verify(scheme, &other, &headers, BODY, at(TS) + five + one), Err(VerifyError::TimestampTooOld));
        }
        // Schemes without a signed timestamp do not look at the clock.
        for scheme in [Scheme::Github, Scheme::Shopify] {
            let headers = signed(scheme, secret_for(scheme), BODY, TS);
            let got = verify(scheme, &secrets(&[secret_for(scheme)]), &headers, BODY, at(0));
            assert!(got.is_ok(), "{scheme}");
        }
    }

    #[test]
    fn header_shape_is_checked_before_the_window() {
        let mut headers = signed(Scheme::Slack, "k", BODY, TS);
        headers.insert(SLACK_SIG, HeaderValue::from_static("v1=zz"));
        assert_eq!(
            verify(Scheme::Slack, &secrets(&["k"]), &headers, BODY, at(TS + 3600)),
            Err(VerifyError::MalformedHeader(SLACK_SIG))
        );
    }

    #[test]
    fn keel_accepts_milliseconds_prefixes_case_and_lists() {
        let secret = secret_for(Scheme::Keel);
        let keys = secrets(&[secret]);
        let ms = "1700000000123";
        let tag = reference_tag(Scheme::Keel, secret, BODY, ms);
        let hex = hex::encode(tag);
        let now = DateTime::from_timestamp_millis(1_700_000_000_123).expect("range");
        let decoy = hex::encode([9u8; 32]);
        for sig in [
            hex.clone(),
            hex.to_uppercase(),
            format!("sha256={hex}"),
            format!("SHA256={}", hex.to_uppercase()),
            format!("{decoy},{hex}"),
            format!("sha256={decoy}, sha256={hex}"),
            format!("{decoy} {hex}"),
            format!("v9={decoy} {hex}"),
        ] {
            let headers = hdrs(&[(KEEL_ID, ID), (KEEL_TS, ms), (KEEL_SIG, &sig)]);
            let got = verify(Scheme::Keel, &keys, &headers, BODY, now).expect("verifies");
            assert_eq!(got.timestamp, Some(now));
            assert_eq!(got.event_id.as_deref(), Some(ID));
            assert_eq!(got.event_type.as_deref(), Some("invoice.paid"));
        }
        let headers = hdrs(&[(KEEL_ID, ID), (KEEL_TS, ms), (KEEL_SIG, &hex)]);
        let window = TOLERANCE;
        let ms1 = chrono::Duration::milliseconds(1);
        assert!(verify(Scheme::Keel, &keys, &headers, BODY, now + window).is_ok());
        assert!(verify(Scheme::Keel, &keys, &headers, BODY, now - window).is_ok());
        assert_eq!(verify(Scheme::Keel, &keys, &headers, BODY, now + window + ms1), Err(VerifyError::TimestampTooOld));
        assert_eq!(
            verify(Scheme::Keel, &keys, &headers, BODY, now - window - ms1),
            Err(VerifyError::TimestampInFuture)
        );
        // The signed text is the header's exact text: the same instant in seconds is a different message.
        let secs = hdrs(&[(KEEL_ID, ID), (KEEL_TS, "1700000000"), (KEEL_SIG, &hex)]);
        assert_eq!(verify(Scheme::Keel, &keys, &secs, BODY, now), Err(VerifyError::SignatureMismatch));
        assert_eq!(parse_keel_timestamp("999999999999"), Some(999_999_999_999_000));
        assert_eq!(parse_keel_timestamp("1000000000000"), Some(1_000_000_000_000));
    }

    #[test]
    fn signature_lists_are_capped() {
        let secret = secret_for(Scheme::Keel);
        let keys = secrets(&[secret]);
        let hex = hex::encode(reference_tag(Scheme::Keel, secret, BODY, "1700000000"));
        let decoy = hex::encode([3u8; 32]);
        let list = |n: usize| {
            let mut sigs = vec![decoy.as_str(); n - 1];
            sigs.push(&hex);
            sigs.join(",")
        };
        let run = |sig: &str| {
            let headers = hdrs(&[(KEEL_ID, ID), (KEEL_TS, "1700000000"), (KEEL_SIG, sig)]);
            verify(Scheme::Keel, &keys, &headers, BODY, at(TS))
        };
        assert!(run(&list(MAX_SIGNATURES)).is_ok());
        assert_eq!(run(&list(MAX_SIGNATURES + 1)), Err(VerifyError::MalformedHeader(KEEL_SIG)));
        let std_list = vec!["v1,AAAA"; MAX_SIGNATURES + 1].join(" ");
        assert_eq!(parse_standard_signatures(&std_list), None);
        let stripe_list = format!("t=1,{}", vec!["v1=00"; MAX_SIGNATURES + 1].join(","));
        assert_eq!(parse_stripe_signature(&stripe_list), None);
    }

    #[test]
    fn standard_entries_of_other_versions_are_ignored() {
        assert_eq!(parse_standard_signatures("v1a,AAAA v2,AAAA"), None);
        let tag = [5u8; 32];
        let got = parse_standard_signatures(&format!("v2,xyz v1,{}", STANDARD.encode(tag))).expect("one v1");
        assert_eq!(got.as_slice(), &[tag]);
        // Mixed header families: webhook-* wins and is incomplete.
        let headers = hdrs(&[("webhook-id", ID), ("svix-timestamp", "1700000000"), ("svix-signature", "v1,AAAA")]);
        assert_eq!(
            verify(Scheme::Standard, &secrets(&[STD_SECRET]), &headers, BODY, at(TS)),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
    }

    #[test]
    fn unusable_secrets() {
        // An empty key would let anyone sign; an undecodable Standard key cannot verify anything.
        let headers = signed(Scheme::Keel, "", BODY, TS);
        assert_eq!(verify(Scheme::Keel, &secrets(&[""]), &headers, BODY, at(TS)), Err(VerifyError::NoSecrets));
        let headers = signed(Scheme::Standard, STD_SECRET, BODY, TS);
        assert_eq!(
            verify(Scheme::Standard, &secrets(&["whsec_!!not base64!!"]), &headers, BODY, at(TS)),
            Err(VerifyError::NoSecrets)
        );
        assert!(verify(Scheme::Standard, &secrets(&["whsec_%%", STD_SECRET]), &headers, BODY, at(TS)).is_ok());
    }

    #[test]
    fn metadata_from_bodies() {
        // GitHub: event plus string action.
        let secret = secret_for(Scheme::Github);
        for (body, expected) in [
            (&br#"{"action":"opened","number":1}"#[..], "push.opened"),
            (br#"{"action":5}"#, "push"),
            (br#"[1,2]"#, "push"),
        ] {
            let headers = signed(Scheme::Github, secret, body, TS);
            let got = verify(Scheme::Github, &secrets(&[secret]), &headers, body, at(TS)).expect("ok");
            assert_eq!(got.event_type.as_deref(), Some(expected));
        }
        // Slack: event.type, else type; event_id.
        let secret = secret_for(Scheme::Slack);
        for (body, id, ty) in [
            (
                &br#"{"type":"event_callback","event_id":"Ev1","event":{"type":"app_mention","x":[1]}}"#[..],
                Some("Ev1"),
                Some("app_mention"),
            ),
            (br#"{"type":"event_callback","event":"odd"}"#, None, Some("event_callback")),
            (br#"{"type":"url_verification","challenge":"c"}"#, None, Some("url_verification")),
            (b"payload=%7B%7D", None, None),
        ] {
            let headers = signed(Scheme::Slack, secret, body, TS);
            let got = verify(Scheme::Slack, &secrets(&[secret]), &headers, body, at(TS)).expect("ok");
            assert_eq!(got.event_id.as_deref(), id);
            assert_eq!(got.event_type.as_deref(), ty);
        }
        // Keel and Standard: a non-string type is ignored, not fatal.
        for scheme in [Scheme::Keel, Scheme::Standard] {
            let body = br#"{"type":{"nested":true},"id":"x"}"#;
            let headers = signed(scheme, secret_for(scheme), body, TS);
            let got = verify(scheme, &secrets(&[secret_for(scheme)]), &headers, body, at(TS)).expect("ok");
            assert_eq!(got.event_type, None);
            assert_eq!(got.event_id.as_deref(), Some(ID));
        }
    }

    #[test]
    fn slack_url_verification_handshake() {
        let body = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
        assert_eq!(
            slack_url_verification_challenge(body).as_deref(),
            Some("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
        );
        assert_eq!(slack_url_verification_challenge(br#"{"type":"event_callback","challenge":"x"}"#), None);
        assert_eq!(slack_url_verification_challenge(br#"{"type":"url_verification","challenge":7}"#), None);
        assert_eq!(slack_url_verification_challenge(b"command=%2Fx"), None);
        assert_eq!(slack_url_verification_challenge(b"\xff"), None);
    }

    #[test]
    fn scheme_names() {
        assert_eq!("keel".parse(), Ok(Scheme::Keel));
        assert_eq!(" Stripe\n".parse(), Ok(Scheme::Stripe));
        for scheme in Scheme::ALL {
            assert_eq!(scheme.to_string().parse(), Ok(scheme));
        }
        for unknown in ["", "svix", "standard-webhooks", "hmac", "keel2", "git hub"] {
            assert_eq!(unknown.parse::<Scheme>(), Err(UnknownScheme), "{unknown}");
        }
    }

    #[test]
    fn secrets_and_signatures_never_printed() {
        let s = Secret::new("hunter2-very-secret".into());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "Secret(***)");
        assert_eq!(format!("{:?}", secrets(&["a", "b"])), "[Secret(***), Secret(***)]");
        let headers = signed(Scheme::Github, "hunter2-very-secret", BODY, TS);
        let sig = headers[GITHUB_SIG].to_str().expect("ascii").to_owned();
        let err = verify(Scheme::Github, &[s], &headers, b"other", at(TS)).expect_err("tampered");
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains("hunter2") && !text.contains(&sig[7..]), "{text}");
        }
    }

    #[test]
    fn error_status_and_codes() {
        let cases = [
            (VerifyError::MissingHeader("x"), 400, "missing_header"),
            (VerifyError::MalformedHeader("x"), 400, "malformed_header"),
            (VerifyError::TimestampTooOld, 401, "timestamp_too_old"),
            (VerifyError::TimestampInFuture, 401, "timestamp_in_future"),
            (VerifyError::SignatureMismatch, 401, "signature_mismatch"),
            (VerifyError::NoSecrets, 401, "no_secrets"),
        ];
        for (err, status, code) in cases {
            assert_eq!((err.status(), err.code()), (status, code));
        }
    }

    // ---- properties ----

    fn scheme_strategy() -> impl Strategy<Value = Scheme> {
        prop::sample::select(Scheme::ALL.to_vec())
    }

    fn all_header_names(scheme: Scheme) -> Vec<&'static str> {
        let mut names = required_headers(scheme).to_vec();
        match scheme {
            Scheme::Standard => names.extend(["svix-id", "svix-timestamp", "svix-signature"]),
            Scheme::Github => names.extend([GITHUB_DELIVERY, GITHUB_EVENT]),
            Scheme::Shopify => names.extend([SHOPIFY_EVENT_ID, SHOPIFY_WEBHOOK_ID, SHOPIFY_TOPIC]),
            _ => {}
        }
        names
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn parsers_never_panic(s in any::<String>(), shaped in "[tv01a=, sha256A-Za-z0-9+/]{0,200}") {
            for input in [s.as_str(), shaped.as_str()] {
                let _ = parse_seconds(input);
                let _ = parse_keel_timestamp(input);
                let _ = parse_keel_signatures(input);
                let _ = parse_standard_signatures(input);
                let _ = parse_stripe_signature(input);
                let _ = parse_github_signature(input);
                let _ = parse_slack_signature(input);
                let _ = parse_shopify_signature(input);
                let _ = slack_url_verification_challenge(input.as_bytes());
                let _ = BodyMeta::parse(input.as_bytes());
            }
        }

        #[test]
        fn parsers_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let lossy = String::from_utf8_lossy(&bytes);
            let _ = parse_keel_signatures(&lossy);
            let _ = parse_standard_signatures(&lossy);
            let _ = parse_stripe_signature(&lossy);
            let _ = parse_shopify_signature(&lossy);
            let _ = slack_url_verification_challenge(&bytes);
            prop_assert!(!is_slash_command(&bytes) || bytes.windows(8).any(|w| w == b"command="));
        }

        #[test]
        fn arbitrary_headers_are_never_accepted(
            scheme in scheme_strategy(),
            values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 8),
            body in prop::collection::vec(any::<u8>(), 0..256),
            now in 0i64..4_000_000_000,
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in all_header_names(scheme).into_iter().zip(&values) {
                if let Ok(value) = HeaderValue::from_bytes(value) {
                    headers.insert(name, value);
                }
            }
            let got = verify(scheme, &secrets(&[secret_for(scheme)]), &headers, &body, at(now));
            prop_assert!(got.is_err());
        }

        #[test]
        fn random_signatures_are_rejected(
            scheme in scheme_strategy(),
            tag in any::<[u8; 32]>(),
            body in prop::collection::vec(any::<u8>(), 0..256),
            skew in -300i64..=300,
        ) {
            let headers = headers_with(scheme, &tag, &TS.to_string());
            let keys = secrets(&[secret_for(scheme), wrong_secret_for(scheme)]);
            prop_assert_eq!(
                verify(scheme, &keys, &headers, &body, at(TS + skew)),
                Err(VerifyError::SignatureMismatch)
            );
        }

        #[test]
        fn correctly_signed_arbitrary_bodies_verify(
            scheme in scheme_strategy(),
            body in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let headers = signed(scheme, secret_for(scheme), &body, TS);
            let got = verify(scheme, &secrets(&[secret_for(scheme)]), &headers, &body, at(TS));
            prop_assert!(got.is_ok(), "{:?}", got);
        }
    }
}
