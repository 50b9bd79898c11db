//! `backend migrate` is a separate step and safe to run concurrently.

use std::process::Command;

use reqwest::Url;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_migrate_runs_both_succeed() {
    lapseguard_core::install_crypto_provider();
    let base = std::env::var("LAPSEGUARD_DATABASE_URL")
        .expect("LAPSEGUARD_DATABASE_URL is not set: run scripts/test.sh");
    let name = format!("lg_mig_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let mut url = Url::parse(&base).unwrap();
    url.set_path(&format!("/{name}"));

    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_backend"))
            .arg("migrate")
            .env("LAPSEGUARD_DATABASE_URL", url.as_str())
            .env("LAPSEGUARD_LOG_FORMAT", "json")
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    // And once more on an up-to-date schema.
    assert!(spawn().wait().unwrap().success());

    let db = sqlx::PgPool::connect(url.as_str()).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    for t in ["camera_status", "cameras", "images", "outbox", "projects"] {
        assert!(tables.iter().any(|x| x == t), "{t} missing: {tables:?}");
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db)
        .await
        .unwrap();
    let expected = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../core/migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count();
    assert_eq!(applied as usize, expected, "every migration applied once");
}

#[test]
fn migrate_without_database_url_fails_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_backend"))
        .arg("migrate")
        .env_remove("LAPSEGUARD_DATABASE_URL")
        .env_remove("LAPSEGUARD_AMQP_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LAPSEGUARD_DATABASE_URL"), "{err}");
}
