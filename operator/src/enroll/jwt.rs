//! The few NATS JWTs the auth callout reads and writes (nats-server's
//! `ed25519-nkey` JWTs): the server's authorization request (read and
//! verified), and the authorization response with the user JWT inside it
//! (written, signed by the callout's issuer account key).
//!
//! Only the claims the callout uses are modelled; unknown claims are
//! ignored on the way in.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use harmony_protocol::permissions::Permissions;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("not a JWT (expected three dot-separated parts)")]
    Shape,
    #[error("bad base64 in the {0}")]
    Base64(&'static str),
    #[error("unsupported JWT header {0}")]
    Header(String),
    #[error("claims do not decode: {0}")]
    Claims(String),
    #[error("issuer {0:?} is not an nkey")]
    Issuer(String),
    #[error("signature does not verify against the issuer")]
    Signature,
    #[error("signing failed: {0}")]
    Sign(String),
}

/// What the server tells the callout about a connecting client.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthorizationRequest {
    /// The server that asks; the response's audience.
    pub server_id: ServerId,
    /// The key the server made for this connection; the user JWT's subject.
    pub user_nkey: String,
    #[serde(default)]
    pub client_info: ClientInfo,
    #[serde(default)]
    pub connect_opts: ConnectOpts,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerId {
    pub id: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClientInfo {
    #[serde(default)]
    pub host: String,
    /// The server's connection id (what a kick names).
    #[serde(default)]
    pub id: u64,
    /// The nonce the server sent the client; an nkey client signed it.
    #[serde(default)]
    pub nonce: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnectOpts {
    #[serde(default)]
    pub nkey: Option<String>,
    #[serde(default)]
    pub sig: Option<String>,
    #[serde(default)]
    pub auth_token: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RequestClaims {
    iss: String,
    /// When the server asked (Unix seconds).
    #[serde(default)]
    iat: u64,
    nats: AuthorizationRequest,
}

/// A verified request: what was asked, by which server key, and when.
#[derive(Debug, Clone)]
pub struct VerifiedRequest {
    pub request: AuthorizationRequest,
    pub issuer: String,
    pub issued_at: u64,
}

fn b64(part: &str, what: &'static str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).map_err(|_| JwtError::Base64(what))
}

/// Decodes the server's request and checks it is signed by its `iss`
/// (the server's own key).
pub fn decode_request(jwt: &str) -> Result<VerifiedRequest, JwtError> {
    let mut parts = jwt.trim().split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Shape);
    };
    let header: serde_json::Value =
        serde_json::from_slice(&b64(h, "header")?).map_err(|e| JwtError::Header(e.to_string()))?;
    let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or_default();
    if !alg.eq_ignore_ascii_case("ed25519-nkey") {
        return Err(JwtError::Header(header.to_string()));
    }
    let claims: RequestClaims =
        serde_json::from_slice(&b64(c, "claims")?).map_err(|e| JwtError::Claims(e.to_string()))?;
    let key = nkeys::KeyPair::from_public_key(&claims.iss).map_err(|_| JwtError::Issuer(claims.iss.clone()))?;
    let sig = b64(s, "signature")?;
    key.verify(format!("{h}.{c}").as_bytes(), &sig).map_err(|_| JwtError::Signature)?;
    Ok(VerifiedRequest { request: claims.nats, issuer: claims.iss, issued_at: claims.iat })
}

/// Whether `sig` (base64url, as a client sends it) is `nkey`'s signature
/// of `nonce`: proof the client holds the private key of the nkey it names.
pub fn nonce_signed_by(nkey: &str, nonce: &str, sig: &str) -> bool {
    let Ok(key) = nkeys::KeyPair::from_public_key(nkey) else { return false };
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig.trim_end_matches('=')) else { return false };
    key.verify(nonce.as_bytes(), &sig).is_ok()
}

#[derive(Serialize)]
struct Claims<'a, T: Serialize> {
    jti: String,
    iat: u64,
    iss: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    sub: &'a str,
    aud: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    nats: T,
}

#[derive(Serialize)]
struct UserNats<'a> {
    #[serde(rename = "pub")]
    publish: Allow<'a>,
    #[serde(rename = "sub")]
    subscribe: Allow<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resp: Option<Resp>,
    subs: i64,
    data: i64,
    payload: i64,
    #[serde(rename = "type")]
    kind: &'static str,
    version: u32,
}

#[derive(Serialize)]
struct Allow<'a> {
    allow: &'a [String],
}

/// Replies to requests the client received (the agent answering commands).
#[derive(Serialize)]
struct Resp {
    max: u32,
    /// Nanoseconds; how long after the request a reply may be sent.
    ttl: u64,
}

#[derive(Serialize)]
struct ResponseNats<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    jwt: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    version: u32,
}

fn sign<T: Serialize>(issuer: &nkeys::KeyPair, claims: &mut Claims<'_, T>) -> Result<String, JwtError> {
    // jti: a digest of the claims without it, as JWT ids go (unique per content).
    let unsigned = serde_json::to_vec(&*claims).map_err(|e| JwtError::Sign(e.to_string()))?;
    claims.jti = hex::encode_upper(&Sha256::digest(&unsigned)[..16]);
    let body = serde_json::to_vec(&*claims).map_err(|e| JwtError::Sign(e.to_string()))?;
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(HEADER), URL_SAFE_NO_PAD.encode(body));
    let sig = issuer.sign(signing_input.as_bytes()).map_err(|e| JwtError::Sign(e.to_string()))?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// What the callout grants one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Shown by the server as the connection's user name (the device id, or
    /// `enroll:<nkey>`).
    pub name: String,
    pub permissions: Permissions,
    /// May answer requests it receives (devices answer commands).
    pub allow_responses: bool,
    /// The server disconnects the client then; it must be admitted again.
    pub expires_at: u64,
}

/// The signed answer to `req`: the user JWT for `grant`, or the refusal.
pub fn encode_response(
    issuer: &nkeys::KeyPair,
    account: &str,
    req: &AuthorizationRequest,
    answer: Result<&Grant, &str>,
    now: u64,
) -> Result<String, JwtError> {
    let iss = issuer.public_key();
    let user_jwt = match answer {
        Ok(grant) => {
            let mut user = Claims {
                jti: String::new(),
                iat: now,
                iss: &iss,
                name: &grant.name,
                sub: &req.user_nkey,
                aud: account,
                exp: Some(grant.expires_at),
                nats: UserNats {
                    publish: Allow { allow: &grant.permissions.publish },
                    subscribe: Allow { allow: &grant.permissions.subscribe },
                    resp: grant.allow_responses.then_some(Resp { max: 1, ttl: 0 }),
                    subs: -1,
                    data: -1,
                    payload: -1,
                    kind: "user",
                    version: 2,
                },
            };
            sign(issuer, &mut user)?
        }
        Err(_) => String::new(),
    };
    let error = answer.err().unwrap_or_default();
    let mut response = Claims {
        jti: String::new(),
        iat: now,
        iss: &iss,
        name: "",
        sub: &req.user_nkey,
        aud: &req.server_id.id,
        exp: None,
        nats: ResponseNats { jwt: &user_jwt, error, kind: "authorization_response", version: 2 },
    };
    sign(issuer, &mut response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_jwt(server: &nkeys::KeyPair, claims: serde_json::Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(HEADER);
        let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        let sig = server.sign(format!("{h}.{c}").as_bytes()).unwrap();
        format!("{h}.{c}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn claims(server: &nkeys::KeyPair) -> serde_json::Value {
        serde_json::json!({
            "iss": server.public_key(), "sub": "x", "aud": "nats-authorization-request", "iat": 1_700_000_000u64,
            "nats": {
                "server_id": {"id": "NSERVER", "name": "n1"},
                "user_nkey": "UUSER",
                "client_info": {"host": "10.0.0.1", "id": 7, "nonce": "abc"},
                "connect_opts": {"nkey": "UDEV", "sig": "s", "auth_token": "t", "protocol": 1},
                "type": "authorization_request", "version": 2
            }
        })
    }

    #[test]
    fn request_decodes_and_a_tampered_one_does_not() {
        let server = nkeys::KeyPair::new_server();
        let jwt = request_jwt(&server, claims(&server));
        let v = decode_request(&jwt).unwrap();
        assert_eq!((v.issuer.as_str(), v.issued_at), (server.public_key().as_str(), 1_700_000_000));
        let req = v.request;
        assert_eq!((req.user_nkey.as_str(), req.client_info.id), ("UUSER", 7));
        assert_eq!(req.connect_opts.auth_token.as_deref(), Some("t"));

        let mut forged = claims(&server);
        forged["nats"]["connect_opts"]["nkey"] = "UOTHER".into();
        let other = request_jwt(&server, forged);
        let spliced = format!(
            "{}.{}.{}",
            jwt.split('.').next().unwrap(),
            other.split('.').nth(1).unwrap(),
            jwt.split('.').nth(2).unwrap()
        );
        assert_eq!(decode_request(&spliced).unwrap_err(), JwtError::Signature);
        assert_eq!(decode_request("a.b").unwrap_err(), JwtError::Shape);
        assert!(decode_request("!!.b.c").is_err());
    }

    #[test]
    fn nonce_signature_proves_the_private_key() {
        let device = nkeys::KeyPair::new_user();
        let sig = URL_SAFE_NO_PAD.encode(device.sign(b"nonce-1").unwrap());
        assert!(nonce_signed_by(&device.public_key(), "nonce-1", &sig));
        assert!(!nonce_signed_by(&device.public_key(), "nonce-2", &sig));
        assert!(!nonce_signed_by(&nkeys::KeyPair::new_user().public_key(), "nonce-1", &sig));
        assert!(!nonce_signed_by("not a key", "nonce-1", &sig));
    }

    #[test]
    fn response_carries_a_user_jwt_signed_by_the_issuer() {
        let server = nkeys::KeyPair::new_server();
        let issuer = nkeys::KeyPair::new_account();
        let req = decode_request(&request_jwt(&server, claims(&server))).unwrap().request;
        let grant = Grant {
            name: "pi-1".into(),
            permissions: Permissions { publish: vec!["a".into()], subscribe: vec!["b.>".into()] },
            allow_responses: true,
            expires_at: 2_000_000_000,
        };
        let jwt = encode_response(&issuer, "HARMONY", &req, Ok(&grant), 1_900_000_000).unwrap();
        let body = |jwt: &str| -> serde_json::Value {
            let parts: Vec<&str> = jwt.split('.').collect();
            issuer.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &b64(parts[2], "s").unwrap()).unwrap();
            serde_json::from_slice(&b64(parts[1], "c").unwrap()).unwrap()
        };
        let outer = body(&jwt);
        assert_eq!(outer["aud"], "NSERVER");
        assert_eq!(outer["sub"], "UUSER");
        assert_eq!(outer["nats"]["type"], "authorization_response");
        let user = body(outer["nats"]["jwt"].as_str().unwrap());
        assert_eq!(user["aud"], "HARMONY");
        assert_eq!(user["name"], "pi-1");
        assert_eq!(user["exp"], 2_000_000_000u64);
        assert_eq!(user["nats"]["pub"]["allow"][0], "a");
        assert_eq!(user["nats"]["resp"]["max"], 1);

        let refused = body(&encode_response(&issuer, "HARMONY", &req, Err("token expired"), 1).unwrap());
        assert_eq!(refused["nats"]["error"], "token expired");
        assert!(refused["nats"].get("jwt").is_none());
    }
}
