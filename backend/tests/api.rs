//! Backend API against the real PostgreSQL, RabbitMQ and S3 server.

mod common;

use common::{ADMIN, Opts, TestApp, jpeg, png, testdata};
use lapseguard_core::catalog::{Catalog, JobResult, PgCatalog};
use lapseguard_core::objects::ObjectStore;
use sha2::{Digest, Sha256};

async fn problem(r: reqwest::Response, status: u16, kind: &str) {
    assert_eq!(r.status(), status);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["type"], format!("urn:lapseguard:problem:{kind}"), "{v}");
    assert_eq!(v["status"], status);
    assert!(!v["detail"].as_str().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_stores_records_and_queues_exactly_once() {
    let app = TestApp::start(Opts::default()).await;
    app.create_project("site-a").await;
    let (camera, token) = app.create_camera("site-a", "north").await;
    let body = testdata("astronaut.png");
    let r = app
        .upload(
            &token,
            body.clone(),
            "image/png",
            Some("2026-11-26T06:00:00Z"),
        )
        .await;
    assert_eq!(r.status(), 201);
    let img: serde_json::Value = r.json().await.unwrap();
    let id = img["id"].as_str().unwrap();
    let sha = hex::encode(Sha256::digest(&body));
    assert_eq!(img["project"], "site-a");
    assert_eq!(img["camera"], camera);
    assert_eq!(img["sha256"], sha);
    assert_eq!(img["bytes"], body.len());
    assert_eq!(img["status"], "queued");
    assert_eq!(img["captured_at"], "2026-11-26T06:00:00Z");
    assert_eq!(
        (img["width"].as_i64(), img["height"].as_i64()),
        (Some(512), Some(512))
    );

    // The object in the input bucket is the upload, at the deterministic key.
    let keys = app.input_objects().await;
    let expected_key = format!(
        "site-a/{camera}/2026/11/26/20261126T060000.000Z_{}.png",
        &sha[..16]
    );
    assert_eq!(keys, vec![expected_key.clone()]);
    let stored = app
        .objects
        .get(&app.infra.input_bucket, &expected_key)
        .await
        .unwrap();
    assert_eq!(stored.as_ref(), body.as_slice());

    // The row is there and readable by id, for the camera and the admin.
    assert_eq!(app.image_rows().await, 1);
    for t in [token.as_str(), ADMIN] {
        let got: serde_json::Value = app
            .http
            .get(app.url(&format!("/v1/images/{id}")))
            .bearer_auth(t)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["id"], id);
        assert_eq!(got["status"], "queued");
        assert!(got["faces"].is_null() && got["error"].is_null());
    }

    // Exactly one job, with the right payload; outbox emptied after the confirm.
    let jobs = app.expect_jobs(1).await;
    let job = &jobs[0];
    assert_eq!(job.image_id.to_string(), id);
    assert_eq!(job.project, "site-a");
    assert_eq!(job.camera.to_string(), camera);
    assert_eq!(job.input_bucket, app.infra.input_bucket);
    assert_eq!(job.input_key, expected_key);
    assert_eq!(job.sha256, sha);
    assert_eq!(job.content_type, "image/png");
    assert_eq!(app.outbox_rows().await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_bytes_again_returns_existing_image_and_stores_nothing_twice() {
    let app = TestApp::start(Opts::default()).await;
    app.create_project("p").await;
    let (_, cam1) = app.create_camera("p", "one").await;
    let (_, cam2) = app.create_camera("p", "two").await;
    let body = jpeg(1, 64, 48);
    let first = app.upload(&cam1, body.clone(), "image/jpeg", None).await;
    assert_eq!(first.status(), 201);
    let first: serde_json::Value = first.json().await.unwrap();
    // Same camera, other capture time; and another camera of the same project.
    for (tok, at) in [(&cam1, Some("2026-01-01T00:00:00Z")), (&cam2, None)] {
        let again = app.upload(tok, body.clone(), "image/jpeg", at).await;
        assert_eq!(again.status(), 200);
        let again: serde_json::Value = again.json().await.unwrap();
        assert_eq!(again["id"], first["id"]);
    }
    assert_eq!(app.input_objects().await.len(), 1);
    assert_eq!(app.image_rows().await, 1);
    app.expect_jobs(1).await;

    // The same bytes in another project are another image.
    app.create_project("q").await;
    let (_, other) = app.create_camera("q", "x").await;
    assert_eq!(
        app.upload(&other, body, "image/jpeg", None).await.status(),
        201
    );
    assert_eq!(app.image_rows().await, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_upload_is_refused_clearly_and_leaves_nothing() {
    let app = TestApp::start(Opts {
        max_upload_bytes: Some(200_000),
        ..Opts::default()
    })
    .await;
    app.create_project("v").await;
    let (cam_id, token) = app.create_camera("v", "c").await;

    // Over the limit with Content-Length: refused before the body is read.
    problem(
        app.upload(&token, vec![0xFF; 300_000], "image/jpeg", None)
            .await,
        413,
        "payload-too-large",
    )
    .await;
    // Over the limit without Content-Length (chunked): cut at the limit. The backend
    // answers 413 and closes the connection without reading the rest of the body; a client
    // still writing may see the connection reset before it reads that answer (there is no
    // lingering close), so a transport error is retried: what must come back, within a few
    // tries, is the 413 problem.
    let mut answer = None;
    for _ in 0..5 {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..40).map(|_| Ok(vec![0xAB; 10_000])).collect();
        match app
            .http
            .post(app.url("/v1/images"))
            .bearer_auth(&token)
            .header("content-type", "image/jpeg")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
        {
            Ok(r) => {
                answer = Some(r);
                break;
            }
            Err(e) => eprintln!("chunked oversized upload: transport error, retrying: {e}"),
        }
    }
    let r = answer.expect("no answer to an oversized chunked upload in 5 tries");
    problem(r, 413, "payload-too-large").await;

    let small_png = png(7, 16, 16);
    // Wrong type, unknown magic, type/magic disagreement.
    problem(
        app.upload(&token, small_png.clone(), "text/plain", None)
            .await,
        415,
        "unsupported-media-type",
    )
    .await;
    problem(
        app.upload(
            &token,
            b"GIF89a not an image we take".to_vec(),
            "image/png",
            None,
        )
        .await,
        415,
        "unsupported-media-type",
    )
    .await;
    problem(
        app.upload(&token, small_png.clone(), "image/jpeg", None)
            .await,
        415,
        "unsupported-media-type",
    )
    .await;
    // JPEG magic with an undecodable header.
    problem(
        app.upload(
            &token,
            vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J'],
            "image/jpeg",
            None,
        )
        .await,
        422,
        "invalid-image",
    )
    .await;
    // A decompression bomb: a valid header announcing 100000 x 100000 pixels.
    let mut bomb = small_png.clone();
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    problem(
        app.upload(&token, bomb, "image/png", None).await,
        422,
        "image-too-large",
    )
    .await;
    // Bad capture time.
    problem(
        app.upload(&token, small_png.clone(), "image/png", Some("last tuesday"))
            .await,
        400,
        "invalid-request",
    )
    .await;
    // Tokens: missing, unknown, revoked.
    let r = app
        .http
        .post(app.url("/v1/images"))
        .header("content-type", "image/png")
        .body(small_png.clone())
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("www-authenticate"));
    problem(r, 401, "unauthorized").await;
    problem(
        app.upload("lgc_not-a-real-token", small_png.clone(), "image/png", None)
            .await,
        401,
        "unauthorized",
    )
    .await;
    let r = app
        .http
        .delete(app.url(&format!("/v1/projects/v/cameras/{cam_id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    problem(
        app.upload(&token, small_png, "image/png", None).await,
        401,
        "unauthorized",
    )
    .await;

    // Nothing of any of that was stored, recorded or queued.
    assert!(app.input_objects().await.is_empty());
    assert_eq!(app.image_rows().await, 0);
    assert_eq!(app.outbox_rows().await, 0);
    assert!(app.drain_queue().await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_cameras_and_access_rules() {
    let app = TestApp::start(Opts::default()).await;
    let p = app.create_project("alpha").await;
    assert_eq!(p["slug"], "alpha");
    let dup = app
        .http
        .post(app.url("/v1/projects"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"slug": "alpha", "name": "again"}))
        .send()
        .await
        .unwrap();
    problem(dup, 409, "conflict").await;
    let bad = app
        .http
        .post(app.url("/v1/projects"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{\"slug\": 5")
        .send()
        .await
        .unwrap();
    problem(bad, 400, "invalid-request").await;
    let bad_slug = app
        .http
        .post(app.url("/v1/projects"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"slug": "Not OK", "name": "x"}))
        .send()
        .await
        .unwrap();
    problem(bad_slug, 400, "invalid-request").await;
    let unknown = app
        .http
        .post(app.url("/v1/projects/nope/cameras"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    problem(unknown, 404, "not-found").await;

    app.create_project("beta").await;
    let (_, a) = app.create_camera("alpha", "a").await;
    let (_, b) = app.create_camera("beta", "b").await;
    // A camera may not create projects or cameras.
    let r = app
        .http
        .post(app.url("/v1/projects"))
        .bearer_auth(&a)
        .json(&serde_json::json!({"slug": "gamma", "name": "g"}))
        .send()
        .await
        .unwrap();
    problem(r, 403, "forbidden").await;
    // The admin token cannot upload (an upload needs a camera identity).
    problem(
        app.upload(ADMIN, png(1, 8, 8), "image/png", None).await,
        403,
        "forbidden",
    )
    .await;

    let img: serde_json::Value = app
        .upload(&a, png(2, 8, 8), "image/png", None)
        .await
        .json()
        .await
        .unwrap();
    let id = img["id"].as_str().unwrap();
    // Camera b (other project) sees neither the image nor alpha's listing.
    let r = app
        .http
        .get(app.url(&format!("/v1/images/{id}")))
        .bearer_auth(&b)
        .send()
        .await
        .unwrap();
    problem(r, 404, "not-found").await;
    let r = app
        .http
        .get(app.url("/v1/projects/alpha/images"))
        .bearer_auth(&b)
        .send()
        .await
        .unwrap();
    problem(r, 403, "forbidden").await;
    for t in [&a, &ADMIN.to_string()] {
        let page: serde_json::Value = app
            .http
            .get(app.url("/v1/projects/alpha/images"))
            .bearer_auth(t)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["items"].as_array().unwrap().len(), 1);
    }
    // Not a UUID, unknown route.
    let r = app
        .http
        .get(app.url("/v1/images/not-a-uuid"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    problem(r, 404, "not-found").await;
    let r = app.http.get(app.url("/v2/nothing")).send().await.unwrap();
    problem(r, 404, "not-found").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_is_newest_capture_first_with_keyset_pages_and_status_filter() {
    let app = TestApp::start(Opts::default()).await;
    app.create_project("list").await;
    let (_, token) = app.create_camera("list", "c").await;
    let mut ids = Vec::new();
    for i in 0..5u32 {
        let at = format!("2026-05-0{}T12:00:00Z", i + 1);
        let v: serde_json::Value = app
            .upload(&token, png(100 + i, 8, 8), "image/png", Some(&at))
            .await
            .json()
            .await
            .unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    ids.reverse(); // newest capture first
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = app.url("/v1/projects/list/images?limit=2");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value = app
            .http
            .get(url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        for it in page["items"].as_array().unwrap() {
            seen.push(it["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    // Mark one done through the catalog (as the worker does) and filter by status.
    let catalog = PgCatalog::connect_lazy(&app.infra).unwrap();
    let done_id = uuid::Uuid::parse_str(&ids[1]).unwrap();
    catalog
        .complete_job(
            done_id,
            &JobResult {
                faces: 2,
                boxes: serde_json::json!([]),
                model: "test".into(),
                duration_ms: 1,
                output_key: "x".into(),
            },
        )
        .await
        .unwrap();
    let page: serde_json::Value = app
        .http
        .get(app.url("/v1/projects/list/images?status=done"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], ids[1]);
    assert_eq!(items[0]["faces"], 2);
    for bad in ["status=weird", "limit=0", "limit=100000", "cursor=garbage"] {
        let r = app
            .http
            .get(app.url(&format!("/v1/projects/list/images?{bad}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        problem(r, 400, "invalid-request").await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymized_is_served_only_when_done_and_never_the_original() {
    let app = TestApp::start(Opts::default()).await;
    app.create_project("anon").await;
    let (_, token) = app.create_camera("anon", "c").await;
    let original = jpeg(9, 32, 32);
    let v: serde_json::Value = app
        .upload(&token, original.clone(), "image/jpeg", None)
        .await
        .json()
        .await
        .unwrap();
    let id = v["id"].as_str().unwrap();
    let r = app
        .http
        .get(app.url(&format!("/v1/images/{id}/anonymized")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    problem(r, 409, "not-ready").await;

    // What the worker does: write the output, then record it.
    let blurred = jpeg(10, 32, 32);
    app.objects
        .put(
            &app.infra.output_bucket,
            "anon/out.jpg",
            blurred.clone().into(),
            "image/jpeg",
        )
        .await
        .unwrap();
    let catalog = PgCatalog::connect_lazy(&app.infra).unwrap();
    catalog
        .complete_job(
            uuid::Uuid::parse_str(id).unwrap(),
            &JobResult {
                faces: 0,
                boxes: serde_json::json!([]),
                model: "test".into(),
                duration_ms: 1,
                output_key: "anon/out.jpg".into(),
            },
        )
        .await
        .unwrap();
    let r = app
        .http
        .get(app.url(&format!("/v1/images/{id}/anonymized")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let got = r.bytes().await.unwrap();
    assert_eq!(got.as_ref(), blurred.as_slice());
    assert_ne!(got.as_ref(), original.as_slice());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route_and_health_endpoints_mean_something() {
    let app = TestApp::start(Opts::default()).await;
    let spec: serde_json::Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = spec["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/projects", "post"),
        ("/v1/projects/{slug}/cameras", "post"),
        ("/v1/projects/{slug}/cameras", "get"),
        ("/v1/projects/{slug}/cameras/{id}", "delete"),
        ("/v1/images", "post"),
        ("/v1/images/{id}", "get"),
        ("/v1/projects/{slug}/images", "get"),
        ("/v1/images/{id}/anonymized", "get"),
        ("/livez", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    assert_eq!(
        app.http
            .get(app.url("/livez"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["checks"].as_array().unwrap().len(), 4);

    // A request id is generated (or propagated) on every answer.
    let r = app
        .http
        .get(app.url("/livez"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");

    app.create_project("m").await;
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("lapseguard_http_requests_total"),
        "{metrics}"
    );

    // A missing bucket makes the backend not ready.
    aws_bucket_delete(&app).await;
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(
        r.status(),
        503,
        "readiness must fail without the output bucket"
    );
    app.stop().await;
}

/// Deletes this test's (empty) output bucket with a raw S3 call.
async fn aws_bucket_delete(app: &TestApp) {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_s3::config::Region::new(app.infra.s3_region.clone()))
        .endpoint_url(app.infra.s3_endpoint.clone())
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            app.infra.s3_access_key_id.clone(),
            app.infra.s3_secret_access_key.clone(),
            None,
            None,
            "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
        .delete_bucket()
        .bucket(&app.infra.output_bucket)
        .send()
        .await
        .unwrap();
}
