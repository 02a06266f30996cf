//! Models uploaded at the hub: checked with the edge's own code and the model's fixture before
//! they are kept, by role; served to edges by hash without credentials; named by the fleet's
//! configuration only when they are here and of their slot; signed when sent.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

fn shipped(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shipped").join(name);
    std::fs::read(p).unwrap()
}

async fn upload(hub: &Hub, who: &Who, parts: &[(&str, &[u8])]) -> Reply {
    hub.multipart("/api/v1/models", who, parts).await
}

#[tokio::test]
async fn test_a_model_is_checked_kept_served_and_named_by_the_fleet() {
    let hub = Hub::start(1000).await;
    let admin = hub.login("ada").await;
    let (_, analyst) = hub.token(&admin, "ann").await;
    let (_, viewer) = hub.token(&admin, "vic").await;
    let (clf, clf_fx) = (shipped("classifier.onnx"), shipped("fixtures/classifier.json"));
    let (ae, ae_fx) = (shipped("autoencoder.onnx"), shipped("fixtures/autoencoder.json"));
    let good: [(&str, &[u8]); 3] =
        [("model", &clf), ("fixture", &clf_fx), ("comment", b"the shipped classifier")];

    // Admins only.
    assert_eq!(upload(&hub, &Who::Nobody, &good).await.status, StatusCode::UNAUTHORIZED);
    for who in [&viewer, &analyst] {
        let r = upload(&hub, who, &good).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    }

    // What is not a model, or not this model's fixture, is refused with the reason.
    let mut changed: Value = serde_json::from_slice(&clf_fx).unwrap();
    changed["outputs"][3][2] = json!(changed["outputs"][3][2].as_f64().unwrap() + 0.05);
    let changed = serde_json::to_vec(&changed).unwrap();
    let mut truncated = clf.clone();
    truncated.truncate(clf.len() / 2);
    for (parts, field, says) in [
        (vec![("model", &b"not a model"[..]), ("fixture", &clf_fx[..])], "model", "ONNX"),
        (vec![("model", &truncated[..]), ("fixture", &clf_fx[..])], "model", "ONNX"),
        (vec![("model", &clf[..]), ("fixture", &b"{}"[..])], "fixture", "not a fixture"),
        (vec![("model", &clf[..]), ("fixture", &ae_fx[..])], "fixture", "the model gives"),
        (
            vec![("model", &clf[..]), ("fixture", &changed[..])],
            "fixture",
            "fixture row 3, output 2",
        ),
        (vec![("model", &clf[..])], "fixture", "missing"),
        (vec![("fixture", &clf_fx[..])], "model", "missing"),
        (
            vec![("model", &clf[..]), ("fixture", &clf_fx[..]), ("extra", &b"x"[..])],
            "multipart",
            "unknown part",
        ),
    ] {
        let r = upload(&hub, &admin, &parts).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {}", r.json);
        assert_eq!(r.json["field"], field, "{}", r.json);
        let detail = r.json["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{field}: {detail}");
    }
    // Past the size of an upload: 413, not read whole.
    let huge = vec![0u8; tapwatch_hub::api::models::MAX_UPLOAD_BYTES + 1];
    let r = upload(&hub, &admin, &[("model", &huge), ("fixture", &clf_fx)]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.json);
    assert!(hub.get("/api/v1/models", &viewer).await.as_array().unwrap().is_empty());

    // The shipped classifier: kept, named by its hash; the same file again is the same model.
    let r = upload(&hub, &admin, &good).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let sha = edge_model::sha256_hex(&clf);
    assert_eq!(r.json["sha256"], sha);
    assert_eq!(r.json["kind"], "classifier");
    assert_eq!(r.json["fixture_rows"], 64);
    assert_eq!(r.json["author"], "ada");
    assert_eq!(r.json["comment"], "the shipped classifier");
    assert_eq!(r.json["size"], clf.len());
    let again = upload(&hub, &admin, &good).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.json);
    assert_eq!(again.json["created_at"], r.json["created_at"]);
    let r = upload(&hub, &admin, &[("model", &ae), ("fixture", &ae_fx)]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let ae_sha = r.json["sha256"].as_str().unwrap().to_string();
    assert_eq!(r.json["kind"], "autoencoder");
    let list = hub.get("/api/v1/models", &viewer).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(hub.get(&format!("/api/v1/models/{sha}"), &viewer).await["kind"], "classifier");

    // Edges fetch the file and the fixture by hash, without credentials.
    let r = hub.call(Method::GET, &format!("/api/v1/models/{sha}/file"), &Who::Nobody, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes, clf);
    let r =
        hub.call(Method::GET, &format!("/api/v1/models/{sha}/fixture"), &Who::Nobody, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes, clf_fx);
    let none = "0".repeat(64);
    let r = hub.call(Method::GET, &format!("/api/v1/models/{none}/file"), &Who::Nobody, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    for bad in ["xyz", "../../etc/passwd", &sha.to_uppercase()] {
        let r =
            hub.call(Method::GET, &format!("/api/v1/models/{bad}/file"), &Who::Nobody, None).await;
        assert!(
            r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::NOT_FOUND,
            "{bad}: {}",
            r.status
        );
    }

    // The fleet names models that are here, in their own slot.
    let put = |doc: Value| {
        let body = json!({"document": doc, "comment": "models"});
        hub.call(Method::PUT, "/api/v1/fleet/config/global", &admin, Some(body))
    };
    let r = put(json!({"models": {"classifier": none}})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    assert!(r.json["detail"].as_str().unwrap().contains("no model"), "{}", r.json);
    let r = put(json!({"models": {"autoencoder": sha}})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    assert!(r.json["detail"].as_str().unwrap().contains("not a autoencoder"), "{}", r.json);
    // An analyst may change suppression rules, not models.
    let body = json!({"document": {"models": {"classifier": sha}}});
    let r = hub.call(Method::PUT, "/api/v1/fleet/config/global", &analyst, Some(body)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    let r = put(json!({"models": {"classifier": sha, "autoencoder": ae_sha}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);

    // Sent to a device with where to fetch each model, signed with the hub's key.
    let (m, public) = hub.config_sent().await;
    assert_eq!(m.models.len(), 2);
    let c = m.models.iter().find(|r| r.kind == "classifier").unwrap();
    assert_eq!(c.sha256, sha);
    assert_eq!(c.url, format!("http://hub.test:8080/api/v1/models/{sha}/file"));
    assert_eq!(c.fixture_url, format!("http://hub.test:8080/api/v1/models/{sha}/fixture"));
    assert_eq!(c.fixture_sha256, edge_model::sha256_hex(&clf_fx));
    edge_config::fleet::verify_model(&public, c).unwrap();
    let a = m.models.iter().find(|r| r.kind == "autoencoder").unwrap();
    edge_config::fleet::verify_model(&public, a).unwrap();
    let mut swapped = a.clone();
    swapped.kind = "classifier".into();
    assert!(edge_config::fleet::verify_model(&public, &swapped).is_err());

    // The upload is in the audit log (once).
    let log = hub.get("/api/v1/audit?limit=100", &admin).await;
    let uploads =
        log["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "model_upload").count();
    assert_eq!(uploads, 2);
}
