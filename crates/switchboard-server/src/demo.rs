//! The demo chat page at `/`, and the development-only token endpoint it signs in with.
//!
//! Served in development mode and when `demo = true` is configured; off otherwise. The page,
//! its script and stylesheet and the built TypeScript SDK (`clients/js`, bundled into
//! `demo/switchboard.js` and checked in; `scripts/test` checks that it matches a fresh build)
//! are embedded in the binary, so `switchboard serve` needs no files beside it.
//!
//! `POST /dev/token` with `{"name": "alice"}` answers `{"token": <jwt>, "expires": <unix s>}`,
//! a token for that user signed with the development secret. It exists only in development
//! mode: a configured deployment with `demo = true` serves the page without it (the page then
//! asks for a token in its URL, `/?token=<jwt>`).

use std::time::Duration;

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    response::Response,
    routing::{get, post},
};
use http::{StatusCode, header};

use crate::{
    auth::{self, HmacAlgorithm, MintClaims},
    route::json_response,
};

/// How long a development token lives; the page asks for a new one before it expires.
pub const DEV_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The longest user name the token endpoint accepts (characters `A-Z a-z 0-9 _ - .`).
pub const MAX_NAME_LEN: usize = 32;
/// The largest request body of the token endpoint.
const MAX_BODY: usize = 1024;

const INDEX_HTML: &str = include_str!("demo/index.html");
const APP_JS: &str = include_str!("demo/app.js");
const STYLE_CSS: &str = include_str!("demo/style.css");
const SDK_JS: &str = include_str!("demo/switchboard.js");

/// The demo page's routes: `/` and its assets under `/demo/`, and, when `dev_secret` is given
/// (development mode only), `POST /dev/token` signing with it.
pub fn router(dev_secret: Option<String>) -> Router {
    let mut router = Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/demo/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/demo/switchboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SDK_JS) }),
        )
        .route(
            "/demo/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        );
    if let Some(secret) = dev_secret {
        router = router.route("/dev/token", post(dev_token).with_state(secret.into()));
    }
    router
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        // The assets change with the binary: always revalidate rather than run a stale SDK.
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-content-type-options", "nosniff")
        .header(
            "content-security-policy",
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:",
        )
        .body(Body::from(body))
        .expect("static response parts are valid")
}

fn bad_request(reason: &str) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({"error": "bad_request", "reason": reason}),
    )
}

/// Checks a user name for the token endpoint; the error is for people.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "field 'name' must be 1 to {MAX_NAME_LEN} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("field 'name' may only contain A-Z a-z 0-9 _ - .".into());
    }
    Ok(())
}

async fn dev_token(State(secret): State<std::sync::Arc<str>>, body: Bytes) -> Response<Body> {
    if body.len() > MAX_BODY {
        return bad_request("the body must be at most 1 KiB");
    }
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("invalid JSON: {e}")),
    };
    let Some(name) = value.get("name").and_then(|n| n.as_str()) else {
        return bad_request("field 'name' must be a string");
    };
    if let Err(reason) = validate_name(name) {
        return bad_request(&reason);
    }
    let mut info = serde_json::Map::new();
    info.insert("name".into(), name.into());
    let claims = MintClaims {
        sub: name.to_owned(),
        ttl: Some(DEV_TOKEN_TTL),
        rooms: Vec::new(),
        info: Some(info),
        room: None,
        audience: None,
        issuer: None,
    };
    let token = auth::mint(secret.as_bytes(), HmacAlgorithm::HS256, &claims);
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + DEV_TOKEN_TTL.as_secs();
    json_response(
        StatusCode::OK,
        &serde_json::json!({"token": token, "expires": expires}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, Verifier};
    use http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(router: Router, req: Request<Body>) -> (StatusCode, String, String) {
        let response = router.oneshot(req).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    fn token_request(body: &str) -> Request<Body> {
        Request::post("/dev/token")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    #[tokio::test]
    async fn serves_the_page_and_its_assets() {
        let (status, ct, body) =
            call(router(None), Request::get("/").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct, "text/html; charset=utf-8");
        assert!(body.contains("/demo/app.js"), "the page loads its script");
        for (path, ct) in [
            ("/demo/app.js", "text/javascript; charset=utf-8"),
            ("/demo/switchboard.js", "text/javascript; charset=utf-8"),
            ("/demo/style.css", "text/css; charset=utf-8"),
        ] {
            let (status, got, body) = call(
                router(None),
                Request::get(path).body(Body::empty()).unwrap(),
            )
            .await;
            assert_eq!((status, got.as_str()), (StatusCode::OK, ct), "{path}");
            assert!(!body.is_empty(), "{path}");
        }
    }

    #[tokio::test]
    async fn the_token_endpoint_exists_only_with_a_dev_secret() {
        let (status, _, _) = call(router(None), token_request(r#"{"name":"alice"}"#)).await;
        // Not routed here: the server's fallback answers 404 for it.
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn mints_a_token_the_server_accepts() {
        let secret = "a-development-secret";
        let (status, _, body) = call(
            router(Some(secret.into())),
            token_request(r#"{"name":"alice"}"#),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        let verifier = Verifier::new(&AuthConfig {
            secret: Some(secret.into()),
            ..AuthConfig::default()
        })
        .unwrap();
        let claims = verifier.verify(answer["token"].as_str().unwrap()).unwrap();
        assert_eq!(claims.sub, "alice");
        assert!(answer["expires"].as_u64().unwrap() > 0);
    }

    #[tokio::test]
    async fn refuses_bad_names_and_bodies() {
        let long = format!(r#"{{"name":"{}"}}"#, "a".repeat(MAX_NAME_LEN + 1));
        for (body, reason) in [
            (r#"{"name":""}"#, "1 to 32 characters"),
            (long.as_str(), "1 to 32 characters"),
            (r#"{"name":"a b"}"#, "may only contain"),
            (r#"{"name":"user:x"}"#, "may only contain"),
            (r#"{"name":7}"#, "must be a string"),
            ("{", "invalid JSON"),
        ] {
            let (status, _, answer) = call(router(Some("s".into())), token_request(body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert!(answer.contains(reason), "{body}: {answer}");
            assert!(answer.contains(r#""error":"bad_request""#), "{answer}");
        }
    }
}
