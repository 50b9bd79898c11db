//! Behaviour when a dependency fails, against the real servers behind a TCP proxy that
//! can cut every connection.

mod common;

use std::time::Duration;

use common::{Opts, TestApp, png};

async fn assert_503_with_retry_after(r: reqwest::Response) {
    assert_eq!(r.status(), 503);
    assert!(
        r.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some(),
        "503 without a numeric Retry-After"
    );
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_down_uploads_succeed_and_jobs_follow_when_it_is_back() {
    let app = TestApp::start(Opts {
        proxy_amqp: true,
        ..Opts::default()
    })
    .await;
    app.create_project("rmq").await;
    let (_, token) = app.create_camera("rmq", "c").await;
    // A first upload while everything is up, so the relay holds a live connection.
    assert_eq!(
        app.upload(&token, png(1, 8, 8), "image/png", None)
            .await
            .status(),
        201
    );
    app.expect_jobs(1).await;

    let proxy = app.amqp_proxy.as_ref().unwrap();
    proxy.set_down(true).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let r = app
            .upload(&token, png(10 + i, 8, 8), "image/png", None)
            .await;
        assert_eq!(r.status(), 201, "uploads must not depend on the broker");
        let v: serde_json::Value = r.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.outbox_rows().await, 10, "jobs wait in the outbox");
    assert!(app.drain_queue().await.is_empty());

    proxy.set_down(false).await;
    let jobs = app.expect_jobs(10).await;
    let mut got: Vec<String> = jobs.iter().map(|j| j.image_id.to_string()).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "every job relayed, none lost, none twice");
    assert_eq!(app.outbox_rows().await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_answers_503_and_records_nothing() {
    let app = TestApp::start(Opts {
        proxy_s3: true,
        ..Opts::default()
    })
    .await;
    app.create_project("s3").await;
    let (_, token) = app.create_camera("s3", "c").await;
    app.s3_proxy.as_ref().unwrap().set_down(true).await;
    let body = png(5, 8, 8);
    assert_503_with_retry_after(app.upload(&token, body.clone(), "image/png", None).await).await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready without the object store");
    assert_eq!(app.image_rows().await, 0);
    assert_eq!(app.outbox_rows().await, 0);

    app.s3_proxy.as_ref().unwrap().set_down(false).await;
    assert!(app.input_objects().await.is_empty());
    // The camera's retry succeeds.
    assert_eq!(
        app.upload(&token, body, "image/png", None).await.status(),
        201
    );
    app.expect_jobs(1).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_answers_503_and_leaves_no_object() {
    let app = TestApp::start(Opts {
        proxy_db: true,
        ..Opts::default()
    })
    .await;
    app.create_project("pg").await;
    let (_, token) = app.create_camera("pg", "c").await;
    app.db_proxy.as_ref().unwrap().set_down(true).await;
    let body = png(6, 8, 8);
    assert_503_with_retry_after(app.upload(&token, body.clone(), "image/png", None).await).await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(app.input_objects().await.is_empty());

    app.db_proxy.as_ref().unwrap().set_down(false).await;
    assert_eq!(
        app.upload(&token, body, "image/png", None).await.status(),
        201
    );
    assert_eq!(app.image_rows().await, 1);
    app.stop().await;
}

/// PostgreSQL dies after the original is stored but before the transaction commits:
/// the object written a moment earlier must be removed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dying_mid_transaction_leaves_no_orphan_object() {
    let app = TestApp::start(Opts {
        proxy_db: true,
        ..Opts::default()
    })
    .await;
    app.create_project("mid").await;
    let (_, token) = app.create_camera("mid", "c").await;

    // Hold a lock on the outbox: the upload's transaction inserts the image row, then
    // blocks on the outbox insert, after its object was written.
    let mut blocker = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let upload = tokio::spawn({
        let (http, url, token) = (app.http.clone(), app.url("/v1/images"), token.clone());
        async move {
            http.post(url)
                .bearer_auth(token)
                .header("content-type", "image/png")
                .body(png(77, 8, 8))
                .send()
                .await
                .unwrap()
        }
    });
    let db_name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let mut waited = false;
    for _ in 0..100 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(&db_name)
        .fetch_one(&app.db)
        .await
        .unwrap();
        if waiting > 0 {
            waited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waited, "the upload never reached the outbox insert");
    assert_eq!(
        app.input_objects().await.len(),
        1,
        "the original was stored first"
    );

    app.db_proxy.as_ref().unwrap().set_down(true).await;
    let r = upload.await.unwrap();
    assert_503_with_retry_after(r).await;
    blocker.rollback().await.unwrap();
    app.db_proxy.as_ref().unwrap().set_down(false).await;

    assert!(
        app.input_objects().await.is_empty(),
        "the unrecorded original must be removed"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.image_rows().await, 0, "the transaction never committed");
    assert_eq!(app.outbox_rows().await, 0);
    app.stop().await;
}
