//! Update bundles at the hub: read with the edge's own code before they are kept (and signed by
//! the release key when the hub is given it), admins only; served to edges by hash without
//! credentials; named by the fleet's configuration only when they are here; signed when sent.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

fn key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

/// A bundle of one small program, signed with `key(seed)`.
fn bundle(seed: u8, version: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("tapwatch-edge");
    std::fs::write(&program, format!("#!/bin/sh\necho {version}\n")).unwrap();
    let mut out = Vec::new();
    edge_config::update::pack(
        &key(seed),
        version,
        "aarch64",
        1,
        &[("tapwatch-edge".into(), &program)],
        &mut out,
    )
    .unwrap();
    out
}

async fn up(hub: &Hub, who: &Who, parts: Vec<(&str, Vec<u8>)>) -> Reply {
    let refs: Vec<(&str, &[u8])> = parts.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    hub.multipart("/api/v1/updates", who, &refs).await
}

#[tokio::test]
async fn test_an_update_is_checked_kept_served_and_named_by_the_fleet() {
    let release = edge_config::fleet::public_key_text(&key(7));
    let hub = Hub::with(|c| c.fleet.update_public_key = release.clone()).await;
    let admin = hub.login("ada").await;
    let (_, analyst) = hub.token(&admin, "ann").await;
    let (_, viewer) = hub.token(&admin, "vic").await;
    let good = bundle(7, "0.2.0");

    // Admins only.
    assert_eq!(
        up(&hub, &Who::Nobody, vec![("bundle", good.clone())]).await.status,
        StatusCode::UNAUTHORIZED
    );
    for who in [&viewer, &analyst] {
        assert_eq!(
            up(&hub, who, vec![("bundle", good.clone())]).await.status,
            StatusCode::FORBIDDEN
        );
    }

    // What is not a bundle, or not signed by the release key, is refused with the reason.
    let mut cut = good.clone();
    cut.truncate(1200);
    let mut altered = good.clone();
    let at = altered.windows(4).position(|w| w == b"echo").unwrap();
    altered[at] = b'E';
    for (parts, field, says) in [
        (vec![("bundle", b"not a bundle".to_vec())], "bundle", "not a valid update bundle"),
        (vec![("bundle", cut)], "bundle", "not a valid update bundle"),
        (vec![("bundle", altered)], "bundle", "SHA-256"),
        (vec![("bundle", bundle(8, "0.2.0"))], "bundle", "not the release key's"),
        (vec![("comment", b"x".to_vec())], "bundle", "missing"),
        (vec![("bundle", good.clone()), ("extra", b"x".to_vec())], "multipart", "unknown part"),
    ] {
        let r = up(&hub, &admin, parts).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {}", r.json);
        assert_eq!(r.json["field"], field, "{}", r.json);
        assert!(r.json["detail"].as_str().unwrap().contains(says), "{says}: {}", r.json);
    }
    let huge = vec![0u8; tapwatch_hub::api::updates::MAX_UPLOAD_BYTES + 1];
    assert_eq!(
        up(&hub, &admin, vec![("bundle", huge)]).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert!(hub.get("/api/v1/updates", &viewer).await.as_array().unwrap().is_empty());

    // Kept, named by its hash; the same bundle again is the same update.
    let r = up(&hub, &admin, vec![("bundle", good.clone()), ("comment", b"first".to_vec())]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let sha = edge_model::sha256_hex(&good);
    assert_eq!(r.json["sha256"], sha);
    assert_eq!(r.json["version"], "0.2.0");
    assert_eq!(r.json["arch"], "aarch64");
    assert_eq!(r.json["size"], good.len());
    assert_eq!(r.json["manifest"]["files"][0]["name"], "tapwatch-edge");
    assert_eq!(up(&hub, &admin, vec![("bundle", good.clone())]).await.status, StatusCode::OK);
    assert_eq!(hub.get(&format!("/api/v1/updates/{sha}"), &viewer).await["author"], "ada");

    // Edges fetch it by hash, without credentials.
    let r = hub.call(Method::GET, &format!("/api/v1/updates/{sha}/file"), &Who::Nobody, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes, good);
    let none = "0".repeat(64);
    let r =
        hub.call(Method::GET, &format!("/api/v1/updates/{none}/file"), &Who::Nobody, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = hub.call(Method::GET, "/api/v1/updates/..%2F..%2Fetc/file", &Who::Nobody, None).await;
    assert!(r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::NOT_FOUND);

    // The fleet names only a bundle kept here.
    let put = |doc: Value| {
        let body = json!({"document": doc, "comment": "update"});
        hub.call(Method::PUT, "/api/v1/fleet/config/global", &admin, Some(body))
    };
    let r = put(json!({"update": none})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    assert!(r.json["detail"].as_str().unwrap().contains("no update bundle"), "{}", r.json);
    let r = put(json!({"update": sha})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);

    // Sent to a device with where to fetch it, signed with the hub's key.
    let (m, public) = hub.config_sent().await;
    let u = m.update.unwrap();
    assert_eq!(u.sha256, sha);
    assert_eq!(u.version, "0.2.0");
    assert_eq!(u.url, format!("http://hub.test:8080/api/v1/updates/{sha}/file"));
    edge_config::fleet::verify_update(&public, &u).unwrap();

    let log = hub.get("/api/v1/audit?limit=100", &admin).await;
    let n = log["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "update_upload");
    assert_eq!(n.count(), 1);
}
