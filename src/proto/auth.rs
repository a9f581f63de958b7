//! Authentication (feature `stream-authentication`): the credential a request carries, its
//! check against the static `tokens` or as an HS256 JWT signed with `jwt_secret`, and the
//! topics it grants.
//!
//! A credential is `Authorization: Bearer <token>`, else `access_token=<token>` in the query
//! (browsers cannot set headers on `EventSource` or `WebSocket`), else the cookie
//! `mcp_stream_token`. Static tokens are compared in constant time, all of them every time; a
//! JWT's signature is checked by `ring` (constant time), then `exp` and `nbf` against the wall
//! clock the caller gives (this module reads no clock). A JWT may carry
//! `{"mcp_stream":{"subscribe":[...],"publish":[...]}}`: topic names, where a trailing `*`
//! matches the rest of a name; a list that is absent allows every topic.

use ring::hmac;
use serde_json::Value;

use super::http::{self, Request};

/// The cookie that may carry a credential.
pub const COOKIE: &str = "mcp_stream_token";
/// The longest credential looked at; a longer one is refused unread.
const MAX_CREDENTIAL: usize = 8 * 1024;

/// What a valid credential allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// Topic patterns it may subscribe to (SSE, rooms, MCP reads); `None`: all.
    pub subscribe: Option<Vec<Box<str>>>,
    /// Topic patterns it may publish on; `None`: all.
    pub publish: Option<Vec<Box<str>>>,
}

impl Grant {
    /// A grant of every topic (static tokens, JWTs without the claim, authentication off).
    pub fn all() -> Grant {
        Grant::default()
    }

    /// Whether it may subscribe to `topic`.
    pub fn may_subscribe(&self, topic: &str) -> bool {
        allows(&self.subscribe, topic)
    }

    /// Whether it may publish on `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        allows(&self.publish, topic)
    }

    /// Whether it may publish on every topic (a broadcast to every WebSocket names none).
    pub fn may_publish_everywhere(&self) -> bool {
        self.publish.is_none()
    }
}

fn allows(patterns: &Option<Vec<Box<str>>>, topic: &str) -> bool {
    let Some(patterns) = patterns else {
        return true;
    };
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => **p == *topic,
    })
}

/// Why a request is not authenticated: the reason of its `401`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unauthorized(pub &'static str);

/// Checks credentials against the configured static tokens and JWT secret.
pub struct Authenticator {
    /// The admin token's tag, compared like the static tokens'.
    admin: Option<hmac::Tag>,
    /// The static tokens' HMAC tags under [`TOKEN_KEY`]: a candidate is compared by tag, in
    /// constant time (`hmac::verify`), never byte by byte.
    tokens: Vec<hmac::Tag>,
    jwt_key: Option<hmac::Key>,
}

/// The key of the static tokens' tags: what makes the comparison constant-time is the tag
/// check, not this key's secrecy.
const TOKEN_KEY: &[u8] = b"mcp-stream static tokens";

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets themselves.
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .field("jwt", &self.jwt_key.is_some())
            .finish()
    }
}

impl Authenticator {
    /// An authenticator for `tokens` and, if set, HS256 JWTs signed with `jwt_secret` and the
    /// admin API's `admin_token`.
    pub fn new(
        tokens: &[String],
        jwt_secret: Option<&str>,
        admin_token: Option<&str>,
    ) -> Authenticator {
        Authenticator {
            admin: admin_token.map(|t| hmac::sign(&token_key(), t.as_bytes())),
            tokens: tokens
                .iter()
                .map(|t| hmac::sign(&token_key(), t.as_bytes()))
                .collect(),
            jwt_key: jwt_secret.map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes())),
        }
    }

    /// Whether an admin token is configured.
    pub fn has_admin_token(&self) -> bool {
        self.admin.is_some()
    }

    /// Whether `token` is the admin token (compared in constant time).
    pub fn is_admin_token(&self, token: &str) -> bool {
        self.admin
            .as_ref()
            .is_some_and(|tag| hmac::verify(&token_key(), token.as_bytes(), tag.as_ref()).is_ok())
    }

    /// Checks the credential `request` carries; `now_unix` is the wall clock in seconds
    /// (`None`: unknown, and a JWT with `exp` or `nbf` is refused).
    pub fn check(&self, request: &Request, now_unix: Option<u64>) -> Result<Grant, Unauthorized> {
        let Some(token) = credential(request) else {
            return Err(Unauthorized("missing credential"));
        };
        if token.len() > MAX_CREDENTIAL {
            return Err(Unauthorized("invalid credential"));
        }
        // Every static token is compared, whether one matched already or not.
        let key = token_key();
        let matched = self.tokens.iter().fold(false, |found, known| {
            hmac::verify(&key, token.as_bytes(), known.as_ref()).is_ok() | found
        });
        if matched {
            return Ok(Grant::all());
        }
        match &self.jwt_key {
            Some(key) if token.split('.').count() == 3 => {
                verify(&token, key, now_unix).map_err(Unauthorized)
            }
            _ => Err(Unauthorized("invalid credential")),
        }
    }
}

fn token_key() -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, TOKEN_KEY)
}

/// The credential of `request`: a bearer token, else `access_token` in the query, else the
/// cookie [`COOKIE`].
pub fn credential(request: &Request) -> Option<String> {
    if let Some(value) = request.header("authorization") {
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    if let Some((_, token)) = http::query_pairs(&request.query).find(|(k, _)| k == "access_token") {
        return Some(token);
    }
    let cookies = request.header("cookie")?;
    cookies.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name.trim() == COOKIE).then(|| value.trim().to_string())
    })
}

/// An HS256 JWT of `claims` signed with `secret`: for hosts and tools that mint credentials
/// (and for tests).
pub fn sign_jwt(claims: &Value, secret: &[u8]) -> String {
    let signed = format!(
        "{}.{}",
        base64url_encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        base64url_encode(claims.to_string().as_bytes())
    );
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret),
        signed.as_bytes(),
    );
    format!("{signed}.{}", base64url_encode(tag.as_ref()))
}

/// Checks an HS256 JWT signed with `secret` at `now_unix`: its grant, or why it is refused.
pub fn verify_jwt(
    token: &str,
    secret: &[u8],
    now_unix: Option<u64>,
) -> Result<Grant, &'static str> {
    verify(token, &hmac::Key::new(hmac::HMAC_SHA256, secret), now_unix)
}

fn verify(token: &str, key: &hmac::Key, now_unix: Option<u64>) -> Result<Grant, &'static str> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("invalid token");
    };
    let header: Value = decode_json(header).ok_or("invalid token header")?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err("token algorithm must be HS256");
    }
    let signature = base64url(signature).ok_or("invalid token signature")?;
    let signed = &token[..header_and_payload_len(token)];
    hmac::verify(key, signed.as_bytes(), &signature).map_err(|_| "invalid token signature")?;
    let claims: Value = decode_json(payload).ok_or("invalid token payload")?;
    if !claims.is_object() {
        return Err("invalid token payload");
    }
    let time = |name: &str| -> Result<Option<u64>, &'static str> {
        match claims.get(name) {
            None => Ok(None),
            // Seconds, possibly with a fraction (RFC 7519 NumericDate).
            Some(v) => v
                .as_f64()
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(|t| Some(t as u64))
                .ok_or("invalid token time claim"),
        }
    };
    let (exp, nbf) = (time("exp")?, time("nbf")?);
    if exp.is_some() || nbf.is_some() {
        let now = now_unix.ok_or("no clock to check the token against")?;
        if exp.is_some_and(|exp| now >= exp) {
            return Err("token expired");
        }
        if nbf.is_some_and(|nbf| now < nbf) {
            return Err("token not yet valid");
        }
    }
    let Some(claim) = claims.get("mcp_stream") else {
        return Ok(Grant::all());
    };
    let list = |name: &str| -> Result<Option<Vec<Box<str>>>, &'static str> {
        match claim.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(Into::into).ok_or("invalid mcp_stream claim"))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err("invalid mcp_stream claim"),
        }
    };
    if !claim.is_object() {
        return Err("invalid mcp_stream claim");
    }
    Ok(Grant {
        subscribe: list("subscribe")?,
        publish: list("publish")?,
    })
}

/// The length of `header.payload` in a token of three parts.
fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

fn decode_json(part: &str) -> Option<Value> {
    serde_json::from_slice(&base64url(part)?).ok()
}

/// Encodes base64url without padding.
fn base64url_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes unpadded base64url, strictly: one text for one value (no padding, no stray bits),
/// so that a token has exactly one spelling.
fn base64url(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in text.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone sixth of a byte is no encoding of anything, and the bits left over must be zero.
    (bits < 6 && acc == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)], query: &str) -> Request {
        Request {
            method: "GET".into(),
            path: "/stream/sse".into(),
            query: query.into(),
            version: 1,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn base64url_round_trips_and_refuses_what_is_not() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base64url(&base64url_encode(&bytes)).unwrap(), bytes);
        }
        assert_eq!(base64url("aGk").unwrap(), b"hi");
        assert!(base64url("a").is_none() && base64url("a+b/").is_none());
        // One spelling only: no padding, no stray low bits.
        assert!(base64url("aGk=").is_none() && base64url("aGl").is_none());
    }

    #[test]
    fn credentials_come_from_the_header_the_query_or_the_cookie() {
        let bearer = request(&[("authorization", "Bearer abc")], "");
        assert_eq!(credential(&bearer).as_deref(), Some("abc"));
        let query = request(&[], "topic=t&access_token=q%2Bq");
        assert_eq!(credential(&query).as_deref(), Some("q+q"));
        let cookie = request(&[("cookie", "a=1; mcp_stream_token=c; b=2")], "");
        assert_eq!(credential(&cookie).as_deref(), Some("c"));
        assert_eq!(
            credential(&request(&[("authorization", "Basic x")], "")),
            None
        );
        assert_eq!(credential(&request(&[], "topic=t")), None);
    }

    #[test]
    fn static_tokens_and_jwts_are_checked() {
        let auth = Authenticator::new(&["s3cret".into()], Some("key"), None);
        let with = |token: &str| request(&[("authorization", &format!("Bearer {token}"))], "");
        assert_eq!(auth.check(&with("s3cret"), None), Ok(Grant::all()));
        assert_eq!(
            auth.check(&with("s3cre"), None),
            Err(Unauthorized("invalid credential"))
        );
        assert_eq!(
            auth.check(&request(&[], ""), None),
            Err(Unauthorized("missing credential"))
        );
        let now = 1_800_000_000;
        let claims = serde_json::json!({"exp": now + 60, "nbf": now - 60,
            "mcp_stream": {"subscribe": ["news", "alerts/*"], "publish": ["news"]}});
        let grant = auth
            .check(&with(&sign_jwt(&claims, b"key")), Some(now))
            .unwrap();
        assert!(grant.may_subscribe("news") && grant.may_subscribe("alerts/eu/1"));
        assert!(!grant.may_subscribe("alert") && !grant.may_subscribe("newsx"));
        assert!(grant.may_publish("news") && !grant.may_publish("alerts/x"));
        assert!(!grant.may_publish_everywhere());
        let refused = |claims: serde_json::Value, secret: &str, now: Option<u64>| {
            auth.check(&with(&sign_jwt(&claims, secret.as_bytes())), now)
                .unwrap_err()
                .0
        };
        assert_eq!(
            refused(claims.clone(), "other", Some(now)),
            "invalid token signature"
        );
        assert_eq!(
            refused(claims.clone(), "key", Some(now + 60)),
            "token expired"
        );
        assert_eq!(
            refused(claims.clone(), "key", Some(now - 61)),
            "token not yet valid"
        );
        assert_eq!(
            refused(claims, "key", None),
            "no clock to check the token against"
        );
        let bad_claim = serde_json::json!({"mcp_stream": {"publish": "news"}});
        assert_eq!(
            refused(bad_claim, "key", Some(now)),
            "invalid mcp_stream claim"
        );
        // No claim: every topic; an `alg` other than HS256 (none included) is refused.
        let open = auth
            .check(&with(&sign_jwt(&serde_json::json!({}), b"key")), None)
            .unwrap();
        assert_eq!(open, Grant::all());
        let unsigned = format!(
            "{}.{}.",
            base64url_encode(br#"{"alg":"none"}"#),
            base64url_encode(br#"{"sub":"x"}"#)
        );
        assert_eq!(
            auth.check(&with(&unsigned), None).unwrap_err().0,
            "token algorithm must be HS256"
        );
        // Without a secret, a JWT is just a wrong token.
        let tokens_only = Authenticator::new(&["s3cret".into()], None, None);
        let token = sign_jwt(&serde_json::json!({}), b"key");
        assert_eq!(
            tokens_only.check(&with(&token), None),
            Err(Unauthorized("invalid credential"))
        );
    }
}
