//! Tests of the auth module through its public API, with real signed tokens.

use std::borrow::Cow;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::test_keys::*;
use super::*;

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// The default configuration with [`SECRET`].
fn hs_cfg() -> AuthConfig {
    AuthConfig {
        secret: Some(SECRET.to_owned()),
        ..AuthConfig::default()
    }
}

fn verifier(cfg: &AuthConfig) -> Verifier {
    Verifier::new(cfg).unwrap_or_else(|e| panic!("config refused: {e}"))
}

fn hs_verifier() -> Verifier {
    verifier(&hs_cfg())
}

/// Signs `claims` (any JSON) with `key` for `alg`, with `kid` in the header when given.
fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("signing")
}

/// An HS256 token with [`SECRET`].
fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
        claims,
    )
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("RSA test key")
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("EC test key")
}

fn ec2_key() -> EncodingKey {
    EncodingKey::from_ec_pem(EC2_PRIVATE.as_bytes()).expect("EC test key")
}

fn ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("Ed25519 test key")
}

fn public_key(kid: Option<&str>, algorithm: &str, pem: &str) -> PublicKeyConfig {
    PublicKeyConfig {
        kid: kid.map(str::to_owned),
        algorithm: algorithm.to_owned(),
        pem: pem.to_owned(),
    }
}

/// A token with the given raw header and payload JSON and signature text (unsigned forgery).
fn forge(header: &str, payload: &str, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        signature
    )
}

fn err(v: &Verifier, token: &str) -> AuthError {
    match v.verify(token) {
        Ok(c) => panic!("token accepted: {c:?}"),
        Err(e) => e,
    }
}

fn config_err(cfg: &AuthConfig) -> String {
    match Verifier::new(cfg) {
        Ok(v) => panic!("config accepted: {v:?}"),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------- reasons and bodies

#[test]
fn reasons_are_the_wire_strings_of_2_1() {
    let reasons: Vec<&str> = AuthError::ALL.iter().map(|e| e.reason()).collect();
    assert_eq!(
        reasons,
        [
            "missing",
            "malformed",
            "bad_signature",
            "unknown_key",
            "algorithm_not_allowed",
            "expired",
            "not_yet_valid",
            "bad_audience",
            "bad_issuer"
        ]
    );
}

#[test]
fn unauthorized_body_is_the_401_json() {
    for e in AuthError::ALL {
        let body: Value = serde_json::from_str(&e.unauthorized_body()).unwrap();
        assert_eq!(body, json!({"error": "unauthorized", "reason": e.reason()}));
        assert_eq!(e.unauthorized_json(), body);
        assert_eq!(e.status(), http::StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        AuthError::Expired.unauthorized_body(),
        r#"{"error":"unauthorized","reason":"expired"}"#
    );
}

// ---------------------------------------------------------------- accepted tokens

#[test]
fn minted_token_verifies_with_all_claims() {
    let mut info = serde_json::Map::new();
    info.insert("name".into(), json!("Alice"));
    let token = mint(
        SECRET.as_bytes(),
        HmacAlgorithm::HS256,
        &MintClaims {
            sub: "alice".into(),
            ttl: Some(Duration::from_secs(3600)),
            rooms: vec!["news:global".into(), "chat:lobby".into()],
            info: Some(info),
            ..MintClaims::default()
        },
    );
    let claims = hs_verifier().verify(&token).unwrap();
    assert_eq!(claims.sub, "alice");
    let exp = claims.exp.unwrap();
    assert!((now() + 3598..=now() + 3600).contains(&exp), "exp {exp}");
    assert!(claims.iat.is_some());
    assert_eq!(claims.nbf, None);
    assert_eq!(claims.rooms, ["news:global", "chat:lobby"]);
    assert_eq!(claims.info.unwrap().get(), r#"{"name":"Alice"}"#);
    assert_eq!(claims.room, None);
}

#[test]
fn mint_with_other_hmac_algorithms() {
    let cfg = AuthConfig {
        algorithms: vec!["HS384".into(), "HS512".into()],
        ..hs_cfg()
    };
    let v = verifier(&cfg);
    for alg in [HmacAlgorithm::HS384, HmacAlgorithm::HS512] {
        let claims = MintClaims {
            sub: "bob".into(),
            ..MintClaims::default()
        };
        let token = mint(SECRET.as_bytes(), alg, &claims);
        assert_eq!(v.verify(&token).unwrap().sub, "bob");
        assert_eq!(
            err(&hs_verifier(), &token),
            AuthError::AlgorithmNotAllowed,
            "{alg} under HS256 only"
        );
    }
}

/// jsonwebtoken 11 requires `exp` by default (`required_spec_claims = {"exp"}`) and, once it
/// is no longer required, validates it only when present: a token without `exp` is accepted
/// and never expires.
#[test]
fn token_without_exp_is_accepted_and_never_expires() {
    let claims = hs_verifier().verify(&hs(&json!({"sub": "alice"}))).unwrap();
    assert_eq!(claims.exp, None);
    assert!(claims.rooms.is_empty());
    assert!(claims.info.is_none());

    let token = mint(
        SECRET.as_bytes(),
        HmacAlgorithm::HS256,
        &MintClaims {
            sub: "alice".into(),
            ttl: None,
            ..MintClaims::default()
        },
    );
    assert_eq!(hs_verifier().verify(&token).unwrap().exp, None);
}

/// The reason the verifier sets `required_spec_claims` to empty: jsonwebtoken's default
/// `Validation` refuses a token without `exp`. (Guards against a silent change upstream.)
#[test]
fn jsonwebtoken_default_requires_exp() {
    let token = hs(&json!({"sub": "alice"}));
    let e = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &jsonwebtoken::Validation::new(Algorithm::HS256),
    )
    .unwrap_err();
    assert_eq!(
        e.kind(),
        &jsonwebtoken::errors::ErrorKind::MissingRequiredClaim("exp".into())
    );
}

#[test]
fn fractional_dates_are_accepted() {
    let exp = now() as f64 + 100.4;
    let claims = hs_verifier()
        .verify(&hs(&json!({"sub": "a", "exp": exp, "iat": 1.5})))
        .unwrap();
    assert_eq!(claims.exp, Some(exp.round() as u64));
    assert_eq!(claims.iat, Some(2));
}

// ---------------------------------------------------------------- each reason from a real token

#[test]
fn empty_token_is_missing() {
    assert_eq!(err(&hs_verifier(), ""), AuthError::Missing);
}

#[test]
fn wrong_secret_is_bad_signature() {
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret, long enough to be real"),
        None,
        &json!({"sub": "alice"}),
    );
    assert_eq!(err(&hs_verifier(), &token), AuthError::BadSignature);
}

#[test]
fn tampered_payload_is_bad_signature() {
    let token = hs(&json!({"sub": "alice"}));
    let mut parts: Vec<&str> = token.split('.').collect();
    let evil = URL_SAFE_NO_PAD.encode(r#"{"sub":"admin"}"#);
    parts[1] = &evil;
    assert_eq!(
        err(&hs_verifier(), &parts.join(".")),
        AuthError::BadSignature
    );
}

#[test]
fn hs384_when_only_hs256_allowed_is_algorithm_not_allowed() {
    let token = sign(
        Algorithm::HS384,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
        &json!({"sub": "alice"}),
    );
    assert_eq!(err(&hs_verifier(), &token), AuthError::AlgorithmNotAllowed);
}

#[test]
fn alg_none_and_unknown_algs_are_not_allowed() {
    let v = hs_verifier();
    let none = forge(r#"{"alg":"none","typ":"JWT"}"#, r#"{"sub":"alice"}"#, "");
    assert_eq!(err(&v, &none), AuthError::AlgorithmNotAllowed);
    let odd = forge(r#"{"alg":"HS999"}"#, r#"{"sub":"alice"}"#, "c2ln");
    assert_eq!(err(&v, &odd), AuthError::AlgorithmNotAllowed);
    // RS256 is a known algorithm, but not configured.
    let rs = sign(Algorithm::RS256, &rsa_key(), None, &json!({"sub": "alice"}));
    assert_eq!(err(&v, &rs), AuthError::AlgorithmNotAllowed);
}

#[test]
fn expired_beyond_leeway() {
    let token = hs(&json!({"sub": "alice", "exp": now() - 60}));
    assert_eq!(err(&hs_verifier(), &token), AuthError::Expired);
}

#[test]
fn expired_within_leeway_is_accepted() {
    // Default leeway is 5 s; 2 s ago leaves 3 s of slack for a slow test.
    let token = hs(&json!({"sub": "alice", "exp": now() - 2}));
    assert!(hs_verifier().verify(&token).is_ok());
    // The same token with no leeway is expired.
    let strict = verifier(&AuthConfig {
        leeway: 0,
        ..hs_cfg()
    });
    assert_eq!(err(&strict, &token), AuthError::Expired);
}

#[test]
fn nbf_in_the_future_is_not_yet_valid() {
    let v = hs_verifier();
    let token = hs(&json!({"sub": "alice", "nbf": now() + 60}));
    assert_eq!(err(&v, &token), AuthError::NotYetValid);
    // Within the leeway, or in the past: fine.
    assert!(
        v.verify(&hs(&json!({"sub": "a", "nbf": now() + 2})))
            .is_ok()
    );
    let claims = v
        .verify(&hs(&json!({"sub": "a", "nbf": now() - 60})))
        .unwrap();
    assert!(claims.nbf.is_some());
}

#[test]
fn audience_is_checked_when_configured() {
    let v = verifier(&AuthConfig {
        audience: Some("switchboard".into()),
        ..hs_cfg()
    });
    let wrong = hs(&json!({"sub": "a", "aud": "other"}));
    assert_eq!(err(&v, &wrong), AuthError::BadAudience);
    let absent = hs(&json!({"sub": "a"}));
    assert_eq!(err(&v, &absent), AuthError::BadAudience);
    assert!(
        v.verify(&hs(&json!({"sub": "a", "aud": "switchboard"})))
            .is_ok()
    );
    assert!(
        v.verify(&hs(&json!({"sub": "a", "aud": ["x", "switchboard"]})))
            .is_ok()
    );
    // Not configured: `aud` is ignored.
    assert!(hs_verifier().verify(&wrong).is_ok());
}

#[test]
fn issuer_is_checked_when_configured() {
    let v = verifier(&AuthConfig {
        issuer: Some("https://app.example".into()),
        ..hs_cfg()
    });
    let wrong = hs(&json!({"sub": "a", "iss": "https://evil.example"}));
    assert_eq!(err(&v, &wrong), AuthError::BadIssuer);
    assert_eq!(err(&v, &hs(&json!({"sub": "a"}))), AuthError::BadIssuer);
    assert!(
        v.verify(&hs(&json!({"sub": "a", "iss": "https://app.example"})))
            .is_ok()
    );
    assert!(hs_verifier().verify(&wrong).is_ok());
}

#[test]
fn mint_sets_aud_and_iss() {
    let v = verifier(&AuthConfig {
        audience: Some("sb".into()),
        issuer: Some("app".into()),
        ..hs_cfg()
    });
    let token = mint(
        SECRET.as_bytes(),
        HmacAlgorithm::HS256,
        &MintClaims {
            sub: "alice".into(),
            audience: Some("sb".into()),
            issuer: Some("app".into()),
            ..MintClaims::default()
        },
    );
    assert!(v.verify(&token).is_ok());
}

fn rsa_cfg() -> AuthConfig {
    AuthConfig {
        algorithms: vec!["RS256".into(), "ES256".into()],
        public_keys: vec![
            public_key(Some("rsa-1"), "RS256", RSA_PUBLIC),
            public_key(Some("ec-1"), "ES256", EC_PUBLIC),
        ],
        ..AuthConfig::default()
    }
}

#[test]
fn unknown_kid_is_unknown_key() {
    let v = verifier(&rsa_cfg());
    let token = sign(
        Algorithm::RS256,
        &rsa_key(),
        Some("rsa-2"),
        &json!({"sub": "a"}),
    );
    assert_eq!(err(&v, &token), AuthError::UnknownKey);
}

#[test]
fn kid_of_a_key_for_another_algorithm_is_not_allowed() {
    let v = verifier(&rsa_cfg());
    let token = sign(
        Algorithm::ES256,
        &ec_key(),
        Some("rsa-1"),
        &json!({"sub": "a"}),
    );
    assert_eq!(err(&v, &token), AuthError::AlgorithmNotAllowed);
}

#[test]
fn garbage_is_malformed() {
    let v = hs_verifier();
    let good = hs(&json!({"sub": "alice"}));
    let (head, rest) = good.split_once('.').unwrap();
    for token in [
        "garbage",
        "a.b",
        "a.b.c.d",
        "!!!.e30.sig",
        &format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("not json")),
        &format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT"}"#)),
        &format!("{good}.extra"),
        &format!("{head}x.{rest}"),
    ] {
        assert_eq!(err(&v, token), AuthError::Malformed, "{token}");
    }
    // A correctly signed payload that is not JSON.
    let header = head;
    let payload = URL_SAFE_NO_PAD.encode("not json");
    let forged = {
        // Sign "header.payload" through jsonwebtoken's signing primitive.
        let message = format!("{header}.{payload}");
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{message}.{sig}")
    };
    assert_eq!(err(&v, &forged), AuthError::Malformed);
}

#[test]
fn oversized_token_is_malformed() {
    let big = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(err(&hs_verifier(), &big), AuthError::Malformed);
}

#[test]
fn sub_missing_empty_or_too_long_is_malformed() {
    let v = hs_verifier();
    let long = "x".repeat(MAX_SUB_BYTES + 1);
    for claims in [
        json!({}),
        json!({"sub": ""}),
        json!({"sub": long}),
        json!({"sub": null}),
        json!({"sub": 42}),
    ] {
        assert_eq!(err(&v, &hs(&claims)), AuthError::Malformed, "{claims}");
    }
    let max = "é".repeat(MAX_SUB_BYTES / 2); // 128 bytes, 64 characters
    assert_eq!(v.verify(&hs(&json!({"sub": max}))).unwrap().sub, max);
}

#[test]
fn info_not_an_object_or_too_large_is_malformed() {
    let v = hs_verifier();
    let big = "x".repeat(MAX_INFO_BYTES);
    for info in [
        json!([1, 2]),
        json!("alice"),
        json!(7),
        json!(true),
        json!({"name": big}),
    ] {
        let token = hs(&json!({"sub": "a", "info": info}));
        assert_eq!(err(&v, &token), AuthError::Malformed, "{info}");
    }
    // `null` is no info.
    let claims = v.verify(&hs(&json!({"sub": "a", "info": null}))).unwrap();
    assert!(claims.info.is_none());
    // Exactly 1 KiB is fine: {"n":"…"} is 8 bytes around the string.
    let fits = "y".repeat(MAX_INFO_BYTES - 8);
    let claims = v
        .verify(&hs(&json!({"sub": "a", "info": {"n": fits}})))
        .unwrap();
    assert_eq!(claims.info.unwrap().get().len(), MAX_INFO_BYTES);
}

#[test]
fn info_is_compacted_before_measuring_and_keeps_key_order() {
    let v = hs_verifier();
    // Hand-written payload with whitespace; 1 KiB of padding spaces must not count.
    let padding = " ".repeat(2000);
    let payload = format!(
        r#"{{"sub":"a","info":{{ "z" : 1,{padding}"a" : "two words",  "q":"say \"hi\" " }}}}"#
    );
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(&payload));
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    let claims = v.verify(&format!("{message}.{sig}")).unwrap();
    assert_eq!(
        claims.info.unwrap().get(),
        r#"{"z":1,"a":"two words","q":"say \"hi\" "}"#
    );
}

#[test]
fn wrongly_typed_claims_are_malformed() {
    let v = hs_verifier();
    for claims in [
        json!({"sub": "a", "rooms": "chat:lobby"}),
        json!({"sub": "a", "rooms": [1]}),
        json!({"sub": "a", "exp": "tomorrow"}),
        json!({"sub": "a", "exp": -5}),
        json!({"sub": "a", "nbf": {}}),
        json!({"sub": "a", "room": 3}),
    ] {
        assert_eq!(err(&v, &hs(&claims)), AuthError::Malformed, "{claims}");
    }
}

// ---------------------------------------------------------------- public keys

#[test]
fn rs256_with_pem_key() {
    let v = verifier(&rsa_cfg());
    let with_kid = sign(
        Algorithm::RS256,
        &rsa_key(),
        Some("rsa-1"),
        &json!({"sub": "alice", "exp": now() + 60}),
    );
    assert_eq!(v.verify(&with_kid).unwrap().sub, "alice");
    let without_kid = sign(Algorithm::RS256, &rsa_key(), None, &json!({"sub": "bob"}));
    assert_eq!(v.verify(&without_kid).unwrap().sub, "bob");
    // An RS256 token whose signature was made over other content.
    let other = sign(Algorithm::RS256, &rsa_key(), None, &json!({"sub": "eve"}));
    let forged = format!(
        "{}.{}",
        without_kid.rsplit_once('.').unwrap().0,
        other.rsplit_once('.').unwrap().1
    );
    assert_eq!(err(&v, &forged), AuthError::BadSignature);
    // Expiry is checked for public-key tokens too.
    let expired = sign(
        Algorithm::RS256,
        &rsa_key(),
        Some("rsa-1"),
        &json!({"sub": "a", "exp": now() - 600}),
    );
    assert_eq!(err(&v, &expired), AuthError::Expired);
}

#[test]
fn rs256_with_pkcs1_pem_and_indented_pem() {
    let indented: String = RSA_PUBLIC_PKCS1
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    for pem in [RSA_PUBLIC_PKCS1, indented.as_str()] {
        let v = verifier(&AuthConfig {
            algorithms: vec!["RS256".into()],
            public_keys: vec![public_key(None, "RS256", pem)],
            ..AuthConfig::default()
        });
        let token = sign(Algorithm::RS256, &rsa_key(), None, &json!({"sub": "a"}));
        assert!(v.verify(&token).is_ok());
    }
}

#[test]
fn es256_with_pem_key() {
    let v = verifier(&rsa_cfg());
    let token = sign(
        Algorithm::ES256,
        &ec_key(),
        Some("ec-1"),
        &json!({"sub": "carol"}),
    );
    assert_eq!(v.verify(&token).unwrap().sub, "carol");
    let no_kid = sign(Algorithm::ES256, &ec_key(), None, &json!({"sub": "carol"}));
    assert!(v.verify(&no_kid).is_ok());
    // Signed by another P-256 key.
    let wrong = sign(
        Algorithm::ES256,
        &ec2_key(),
        Some("ec-1"),
        &json!({"sub": "c"}),
    );
    assert_eq!(err(&v, &wrong), AuthError::BadSignature);
    let wrong = sign(Algorithm::ES256, &ec2_key(), None, &json!({"sub": "c"}));
    assert_eq!(err(&v, &wrong), AuthError::BadSignature);
}

#[test]
fn without_kid_every_key_of_the_algorithm_is_tried() {
    let v = verifier(&AuthConfig {
        algorithms: vec!["ES256".into()],
        public_keys: vec![
            public_key(Some("old"), "ES256", EC_PUBLIC),
            public_key(None, "ES256", EC2_PUBLIC),
        ],
        ..AuthConfig::default()
    });
    for key in [ec_key(), ec2_key()] {
        let token = sign(Algorithm::ES256, &key, None, &json!({"sub": "a"}));
        assert!(v.verify(&token).is_ok());
    }
    // With a kid, only that key.
    let token = sign(
        Algorithm::ES256,
        &ec2_key(),
        Some("old"),
        &json!({"sub": "a"}),
    );
    assert_eq!(err(&v, &token), AuthError::BadSignature);
}

#[test]
fn eddsa_with_pem_key() {
    let v = verifier(&AuthConfig {
        algorithms: vec!["EdDSA".into()],
        public_keys: vec![public_key(None, "EdDSA", ED_PUBLIC)],
        ..AuthConfig::default()
    });
    let token = sign(Algorithm::EdDSA, &ed_key(), None, &json!({"sub": "dave"}));
    assert_eq!(v.verify(&token).unwrap().sub, "dave");
}

#[test]
fn secret_and_public_keys_together() {
    // jsonwebtoken refuses a Validation mixing families; the verifier keeps one per algorithm.
    let v = verifier(&AuthConfig {
        secret: Some(SECRET.into()),
        algorithms: vec!["HS256".into(), "RS256".into(), "ES256".into()],
        ..rsa_cfg()
    });
    assert!(v.verify(&hs(&json!({"sub": "a"}))).is_ok());
    let rs = sign(Algorithm::RS256, &rsa_key(), None, &json!({"sub": "b"}));
    assert!(v.verify(&rs).is_ok());
    let es = sign(
        Algorithm::ES256,
        &ec_key(),
        Some("ec-1"),
        &json!({"sub": "c"}),
    );
    assert!(v.verify(&es).is_ok());
    // An HMAC token naming a kid that is not configured is refused, though its signature is
    // right (the contract: `unknown_key`).
    let hs_kid = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Some("whatever"),
        &json!({"sub": "a"}),
    );
    assert_eq!(v.verify(&hs_kid).unwrap_err(), AuthError::UnknownKey);
}

#[test]
fn hmac_token_may_name_only_the_secret_kid() {
    let secret = EncodingKey::from_secret(SECRET.as_bytes());
    let v = verifier(&AuthConfig {
        secret_kid: Some("hs-1".to_owned()),
        ..hs_cfg()
    });
    let named = sign(
        Algorithm::HS256,
        &secret,
        Some("hs-1"),
        &json!({"sub": "a"}),
    );
    assert_eq!(v.verify(&named).unwrap().sub, "a");
    let unnamed = sign(Algorithm::HS256, &secret, None, &json!({"sub": "a"}));
    assert_eq!(v.verify(&unnamed).unwrap().sub, "a");
    let other = sign(
        Algorithm::HS256,
        &secret,
        Some("hs-2"),
        &json!({"sub": "a"}),
    );
    assert_eq!(v.verify(&other).unwrap_err(), AuthError::UnknownKey);
    // Without the secret_kid setting, the same named token is unknown.
    assert_eq!(
        hs_verifier().verify(&named).unwrap_err(),
        AuthError::UnknownKey
    );
    let err = Verifier::new(&AuthConfig {
        secret_kid: Some(String::new()),
        ..hs_cfg()
    })
    .unwrap_err();
    assert!(err.to_string().contains("auth.secret_kid"), "{err}");
}

#[test]
fn a_crit_header_is_refused() {
    // RFC 7515 4.1.11: a recipient that does not understand a listed extension must reject the
    // token. None is understood here; the signature below is valid.
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp".to_owned()]);
    let token = jsonwebtoken::encode(
        &header,
        &json!({"sub": "a"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        hs_verifier().verify(&token).unwrap_err(),
        AuthError::Malformed
    );
}

#[test]
fn hmac_token_cannot_use_a_public_key_as_secret() {
    // The classic confusion attack: HS256 signed with the RSA public key's PEM text.
    let v = verifier(&rsa_cfg());
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        Some("rsa-1"),
        &json!({"sub": "admin"}),
    );
    assert_eq!(err(&v, &token), AuthError::AlgorithmNotAllowed);
}

// ---------------------------------------------------------------- configuration

#[test]
fn config_defaults_and_unknown_fields() {
    let cfg: AuthConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg.algorithms, ["HS256"]);
    assert_eq!(cfg.leeway, 5);
    assert_eq!(cfg.query_param, "token");
    assert!(!cfg.anonymous);
    assert!(cfg.secret.is_none() && cfg.public_keys.is_empty());
    assert!(cfg.token_cookie.is_none() && cfg.audience.is_none() && cfg.issuer.is_none());

    let e = serde_json::from_str::<AuthConfig>(r#"{"secert": "x"}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `secert`"), "{e}");
    let e = serde_json::from_str::<AuthConfig>(
        r#"{"public_keys": [{"algorithm": "RS256", "pem": "", "kind": "x"}]}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `kind`"), "{e}");

    let cfg: AuthConfig = serde_json::from_value(json!({
        "secret": "s",
        "public_keys": [{"kid": "k", "algorithm": "ES256", "pem": "P"}],
        "algorithms": ["HS256", "ES256"],
        "audience": "aud", "issuer": "iss", "leeway": 0, "anonymous": true,
        "token_cookie": "sb_token", "query_param": "jwt"
    }))
    .unwrap();
    assert_eq!(cfg.public_keys[0], public_key(Some("k"), "ES256", "P"));
    assert_eq!(cfg.token_cookie.as_deref(), Some("sb_token"));
}

#[test]
fn debug_output_never_shows_the_secret() {
    let cfg = hs_cfg();
    let text = format!("{cfg:?} {:?}", verifier(&cfg));
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("<redacted>"));
}

#[test]
fn config_errors_name_the_key() {
    let base = rsa_cfg();
    let with_key = |pk: PublicKeyConfig, algs: &[&str]| AuthConfig {
        algorithms: algs.iter().map(|s| s.to_string()).collect(),
        public_keys: vec![pk],
        ..AuthConfig::default()
    };
    let cases: Vec<(AuthConfig, &str)> = vec![
        (
            with_key(public_key(None, "RS256", "hello"), &["RS256"]),
            "auth.public_keys[0].pem: not a valid PEM key",
        ),
        (
            with_key(public_key(None, "RS256", RSA_PRIVATE), &["RS256"]),
            "auth.public_keys[0].pem: is a private key",
        ),
        (
            with_key(public_key(None, "RS256", EC_PUBLIC), &["RS256"]),
            "auth.public_keys[0].pem: not a valid RSA public key",
        ),
        (
            with_key(public_key(None, "ES256", RSA_PUBLIC), &["ES256"]),
            "auth.public_keys[0].pem: not a valid EC public key",
        ),
        (
            with_key(public_key(None, "ES256", EC384_PUBLIC), &["ES256"]),
            "auth.public_keys[0].pem: not a P-256 public key",
        ),
        (
            with_key(public_key(None, "EdDSA", EC_PUBLIC), &["EdDSA"]),
            "auth.public_keys[0].pem: not a valid Ed25519 public key",
        ),
        (
            AuthConfig {
                secret: Some(SECRET.into()),
                ..with_key(public_key(None, "HS256", RSA_PUBLIC), &["HS256"])
            },
            "auth.public_keys[0].algorithm: \"HS256\" is an HMAC algorithm",
        ),
        (
            with_key(public_key(None, "RS257", RSA_PUBLIC), &["RS256"]),
            "auth.public_keys[0].algorithm: unknown algorithm \"RS257\"",
        ),
        (
            with_key(public_key(None, "RS256", RSA_PUBLIC), &["ES256"]),
            "auth.public_keys[0].algorithm: \"RS256\" is not in auth.algorithms",
        ),
        (
            with_key(public_key(Some(""), "RS256", RSA_PUBLIC), &["RS256"]),
            "auth.public_keys[0].kid: must not be empty",
        ),
        (
            AuthConfig {
                public_keys: vec![
                    public_key(Some("k"), "RS256", RSA_PUBLIC),
                    public_key(Some("k"), "ES256", EC_PUBLIC),
                ],
                ..base.clone()
            },
            "auth.public_keys[1].kid: duplicate kid \"k\" (also auth.public_keys[0])",
        ),
        (
            AuthConfig {
                algorithms: vec!["RS256".into(), "ES256".into(), "PS256".into()],
                ..base.clone()
            },
            "auth.algorithms[2]: \"PS256\" has no key",
        ),
        (
            AuthConfig {
                algorithms: vec!["HS256".into(), "XS1".into()],
                ..hs_cfg()
            },
            "auth.algorithms[1]: unknown algorithm \"XS1\"",
        ),
        (
            AuthConfig {
                algorithms: vec![],
                ..hs_cfg()
            },
            "auth.algorithms: must list at least one algorithm",
        ),
        (
            AuthConfig {
                algorithms: vec!["RS256".into(), "HS512".into()],
                ..base.clone()
            },
            "auth.secret: required by \"HS512\" in auth.algorithms",
        ),
        (
            AuthConfig::default(),
            "auth.secret: no key configured: set auth.secret or auth.public_keys",
        ),
        (
            AuthConfig {
                secret: Some(String::new()),
                ..AuthConfig::default()
            },
            "auth.secret: must not be empty",
        ),
        (
            AuthConfig {
                leeway: 3601,
                ..hs_cfg()
            },
            "auth.leeway: at most 3600 seconds",
        ),
        (
            AuthConfig {
                query_param: String::new(),
                ..hs_cfg()
            },
            "auth.query_param: must not be empty",
        ),
        (
            AuthConfig {
                token_cookie: Some(String::new()),
                ..hs_cfg()
            },
            "auth.token_cookie: must not be empty",
        ),
        (
            AuthConfig {
                audience: Some(String::new()),
                ..hs_cfg()
            },
            "auth.audience: must not be empty",
        ),
        (
            AuthConfig {
                issuer: Some(String::new()),
                ..hs_cfg()
            },
            "auth.issuer: must not be empty",
        ),
    ];
    for (cfg, expected) in cases {
        let got = config_err(&cfg);
        assert!(
            got.starts_with(expected),
            "expected {expected:?}, got {got:?}"
        );
    }
    let e = Verifier::new(&AuthConfig::default()).unwrap_err();
    assert_eq!(e.key, "auth.secret");
}

#[test]
fn anonymous_only_configuration() {
    let v = verifier(&AuthConfig {
        anonymous: true,
        ..AuthConfig::default()
    });
    assert!(v.anonymous_allowed());
    assert!(matches!(v.authenticate(None), Ok(None)));
    let token = hs(&json!({"sub": "a"}));
    assert_eq!(err(&v, &token), AuthError::UnknownKey);
}

#[test]
fn authenticate_applies_the_anonymous_rule() {
    let closed = hs_verifier();
    let open = verifier(&AuthConfig {
        anonymous: true,
        ..hs_cfg()
    });
    assert!(!closed.anonymous_allowed());
    assert_eq!(closed.authenticate(None).unwrap_err(), AuthError::Missing);
    assert_eq!(
        closed.authenticate(Some("  ")).unwrap_err(),
        AuthError::Missing
    );
    assert!(matches!(open.authenticate(None), Ok(None)));
    assert!(matches!(open.authenticate(Some("")), Ok(None)));
    let good = hs(&json!({"sub": "alice"}));
    assert_eq!(
        open.authenticate(Some(&good)).unwrap().unwrap().sub,
        "alice"
    );
    assert_eq!(
        closed.authenticate(Some(&good)).unwrap().unwrap().sub,
        "alice"
    );
    // An invalid token is refused even when anonymous access is on.
    assert_eq!(
        open.authenticate(Some("garbage")).unwrap_err(),
        AuthError::Malformed
    );
}

// ---------------------------------------------------------------- subscription tokens

fn sub_token(sub: &str, room: Option<&str>, ttl: Option<u64>) -> String {
    mint(
        SECRET.as_bytes(),
        HmacAlgorithm::HS256,
        &MintClaims {
            sub: sub.into(),
            room: room.map(str::to_owned),
            ttl: ttl.map(Duration::from_secs),
            ..MintClaims::default()
        },
    )
}

#[test]
fn subscription_token_checks() {
    let v = hs_verifier();
    let ok = sub_token("alice", Some("secret:room"), Some(60));
    assert_eq!(
        v.verify_subscription_token(&ok, "alice", "secret:room"),
        Ok(())
    );
    assert_eq!(
        v.verify_subscription_token(&ok, "bob", "secret:room"),
        Err(AuthError::BadAudience)
    );
    assert_eq!(
        v.verify_subscription_token(&ok, "alice", "secret:other"),
        Err(AuthError::BadAudience)
    );
    let no_exp = sub_token("alice", Some("secret:room"), None);
    assert_eq!(
        v.verify_subscription_token(&no_exp, "alice", "secret:room"),
        Err(AuthError::Malformed)
    );
    let no_room = sub_token("alice", None, Some(60));
    assert_eq!(
        v.verify_subscription_token(&no_room, "alice", "secret:room"),
        Err(AuthError::Malformed)
    );
    let expired = hs(&json!({"sub": "alice", "room": "secret:room", "exp": now() - 600}));
    assert_eq!(
        v.verify_subscription_token(&expired, "alice", "secret:room"),
        Err(AuthError::Expired)
    );
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"not the secret at all, but long"),
        None,
        &json!({"sub": "alice", "room": "secret:room", "exp": now() + 60}),
    );
    assert_eq!(
        v.verify_subscription_token(&forged, "alice", "secret:room"),
        Err(AuthError::BadSignature)
    );
}

// ---------------------------------------------------------------- extraction

fn headers(pairs: &[(http::HeaderName, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(name.clone(), HeaderValue::from_str(value).unwrap());
    }
    map
}

fn cookie_cfg() -> AuthConfig {
    AuthConfig {
        token_cookie: Some("sb_token".into()),
        ..hs_cfg()
    }
}

#[test]
fn extraction_order_is_header_protocol_query_cookie() {
    let cfg = cookie_cfg();
    let all = headers(&[
        (AUTHORIZATION, "Bearer from-header"),
        (COOKIE, "a=1; sb_token=from-cookie"),
    ]);
    let cookie_only = headers(&[(COOKIE, "a=1; sb_token=from-cookie")]);
    let protocols = vec![
        "switchboard.v1".to_owned(),
        "bearer.from-protocol".to_owned(),
    ];
    let query = Some("room=x&token=from-query");

    let found = |h: &HeaderMap, q: Option<&str>, p: &[String]| {
        find_token(h, q, p, &cfg).map(Cow::into_owned)
    };
    assert_eq!(
        found(&all, query, &protocols).as_deref(),
        Some("from-header")
    );
    assert_eq!(
        found(&cookie_only, query, &protocols).as_deref(),
        Some("from-protocol")
    );
    assert_eq!(
        found(&cookie_only, query, &[]).as_deref(),
        Some("from-query")
    );
    assert_eq!(
        found(&cookie_only, None, &[]).as_deref(),
        Some("from-cookie")
    );
    assert_eq!(found(&HeaderMap::new(), None, &[]), None);
    // Cookies are read only when configured.
    assert_eq!(find_token(&cookie_only, None, &[], &hs_cfg()), None);
}

#[test]
fn authorization_header_forms() {
    let cfg = hs_cfg();
    for value in ["Bearer abc", "bearer abc", "BEARER   abc  ", "bEaReR\tabc"] {
        let h = headers(&[(AUTHORIZATION, value)]);
        assert_eq!(
            find_token(&h, None, &[], &cfg).as_deref(),
            Some("abc"),
            "{value}"
        );
    }
    // Other schemes and an empty bearer are skipped, and the search goes on.
    for value in [
        "Basic YWxpY2U6cHc=",
        "Bearer",
        "Bearer   ",
        "Bearerabc",
        "apikey k",
    ] {
        let h = headers(&[(AUTHORIZATION, value)]);
        assert_eq!(
            find_token(&h, Some("token=q"), &[], &cfg).as_deref(),
            Some("q"),
            "{value}"
        );
    }
    // A second Authorization header with Bearer is found.
    let h = headers(&[(AUTHORIZATION, "Basic x"), (AUTHORIZATION, "Bearer second")]);
    assert_eq!(find_token(&h, None, &[], &cfg).as_deref(), Some("second"));
}

#[test]
fn subprotocol_forms() {
    let cfg = hs_cfg();
    let none = HeaderMap::new();
    let listed = vec!["switchboard.v1, bearer.tok".to_owned()];
    assert_eq!(
        find_token(&none, None, &listed, &cfg).as_deref(),
        Some("tok")
    );
    let spaced = vec![" bearer.tok2 ".to_owned()];
    assert_eq!(
        find_token(&none, None, &spaced, &cfg).as_deref(),
        Some("tok2")
    );
    let empty = vec!["bearer.".to_owned()];
    assert_eq!(find_token(&none, None, &empty, &cfg), None);
    assert!(is_bearer_protocol("bearer.abc"));
    assert!(is_bearer_protocol(" bearer.abc"));
    assert!(!is_bearer_protocol("switchboard.v1"));
}

#[test]
fn query_parameter_forms() {
    let cfg = hs_cfg();
    let h = HeaderMap::new();
    let jwt = hs(&json!({"sub": "alice"}));
    // A JWT needs no decoding: borrowed.
    let q = format!("token={jwt}");
    let found = find_token(&h, Some(&q), &[], &cfg).unwrap();
    assert!(matches!(found, Cow::Borrowed(_)));
    assert_eq!(hs_verifier().verify(&found).unwrap().sub, "alice");
    // Percent-encoded (some clients escape the dots): decoded, and still verifies.
    let q = format!("a=b&token={}", jwt.replace('.', "%2E"));
    let found = find_token(&h, Some(&q), &[], &cfg).unwrap();
    assert!(matches!(found, Cow::Owned(_)));
    assert_eq!(found, jwt);
    // Leading `?`, encoded key, `+`, first non-empty value wins.
    assert_eq!(
        find_token(&h, Some("?token=x"), &[], &cfg).as_deref(),
        Some("x")
    );
    assert_eq!(
        find_token(&h, Some("%74oken=x"), &[], &cfg).as_deref(),
        Some("x")
    );
    assert_eq!(
        find_token(&h, Some("token=a+b"), &[], &cfg).as_deref(),
        Some("a b")
    );
    assert_eq!(
        find_token(&h, Some("token=&token=second"), &[], &cfg).as_deref(),
        Some("second")
    );
    assert_eq!(find_token(&h, Some("tokens=x&xtoken=y"), &[], &cfg), None);
    assert_eq!(find_token(&h, Some(""), &[], &cfg), None);
    // The configured parameter name.
    let jwt_cfg = AuthConfig {
        query_param: "jwt".into(),
        ..hs_cfg()
    };
    assert_eq!(
        find_token(&h, Some("token=x&jwt=y"), &[], &jwt_cfg).as_deref(),
        Some("y")
    );
}

#[test]
fn cookie_forms() {
    let cfg = cookie_cfg();
    let find = |cookies: &[&str]| {
        let pairs: Vec<(http::HeaderName, &str)> = cookies.iter().map(|c| (COOKIE, *c)).collect();
        find_token(&headers(&pairs), None, &[], &cfg).map(Cow::into_owned)
    };
    assert_eq!(find(&["sb_token=abc"]).as_deref(), Some("abc"));
    assert_eq!(
        find(&["x=1;sb_token=\"abc\" ; y=2"]).as_deref(),
        Some("abc")
    );
    assert_eq!(find(&["x=1", "sb_token=two"]).as_deref(), Some("two"));
    assert_eq!(find(&["sb_tokens=no; xsb_token=no"]), None);
    assert_eq!(
        find(&["sb_token=; sb_token=later"]).as_deref(),
        Some("later")
    );
}

// ---------------------------------------------------------------- dev secret

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "sb-auth-test-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn dev_secret_is_created_once_and_persists() {
    let tmp = TempDir::new();
    let path = tmp.0.join("nested/.switchboard/dev-secret");
    let first = load_or_create_dev_secret(&path).unwrap();
    assert_eq!(first.len(), 43);
    assert_eq!(URL_SAFE_NO_PAD.decode(&first).unwrap().len(), 32);
    let second = load_or_create_dev_secret(&path).unwrap();
    assert_eq!(first, second);
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), first);
    // No temporary file is left behind.
    let entries = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
    assert_eq!(entries, 1);

    // Another file gets another secret.
    let other = load_or_create_dev_secret(&tmp.0.join("other")).unwrap();
    assert_ne!(other, first);

    // The secret signs and verifies tokens as configured.
    let v = verifier(&AuthConfig {
        secret: Some(first.clone()),
        ..AuthConfig::default()
    });
    let token = mint(
        first.as_bytes(),
        HmacAlgorithm::HS256,
        &MintClaims {
            sub: "dev".into(),
            ..MintClaims::default()
        },
    );
    assert_eq!(v.verify(&token).unwrap().sub, "dev");
}

#[cfg(unix)]
#[test]
fn dev_secret_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new();
    let dir = tmp.0.join("state");
    let path = dir.join("dev-secret");
    load_or_create_dev_secret(&path).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir), 0o700);
}

#[test]
fn dev_secret_existing_file_is_read_trimmed() {
    let tmp = TempDir::new();
    let path = tmp.0.join("dev-secret");
    std::fs::write(&path, "  my-secret \n").unwrap();
    assert_eq!(load_or_create_dev_secret(&path).unwrap(), "my-secret");
    std::fs::write(&path, " \n").unwrap();
    let e = load_or_create_dev_secret(&path).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn hmac_algorithm_names() {
    assert_eq!("HS256".parse::<HmacAlgorithm>(), Ok(HmacAlgorithm::HS256));
    assert_eq!("hs384".parse::<HmacAlgorithm>(), Ok(HmacAlgorithm::HS384));
    assert_eq!("HS512".parse::<HmacAlgorithm>(), Ok(HmacAlgorithm::HS512));
    assert!("RS256".parse::<HmacAlgorithm>().is_err());
    assert_eq!(HmacAlgorithm::default().to_string(), "HS256");
}
