//! The gallery in cluster mode (PostgreSQL + MinIO): capture order, status, access by
//! admin token or viewer link, thumbnails made from the anonymized output only and
//! cached, never an original.

mod common;

use common::{ADMIN, Opts, TestApp};
use lapseguard_core::objects::ObjectStore;
use uuid::Uuid;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gallery_pages_links_and_thumbnails() {
    let app = TestApp::start(Opts::default()).await;
    let slug = format!("g{}", &Uuid::new_v4().simple().to_string()[..8]);
    app.create_project(&slug).await;
    let (_, token) = app.create_camera(&slug, "north").await;
    // Uploaded out of capture order.
    let mut ids = Vec::new();
    let originals: Vec<Vec<u8>> = (0..3).map(|i| common::png(i, 640, 480)).collect();
    for (i, at) in [
        (2usize, "2026-06-01T08:00:00Z"),
        (0, "2026-06-01T06:00:00Z"),
        (1, "2026-06-01T07:00:00Z"),
    ] {
        let r = app
            .upload(&token, originals[i].clone(), "image/png", Some(at))
            .await;
        assert_eq!(r.status(), 201);
        let v: serde_json::Value = r.json().await.unwrap();
        ids.push((i, v["id"].as_str().unwrap().to_string()));
    }
    ids.sort();
    let ids: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
    // Frames 0 and 1 anonymized (a different picture than their originals), 2 queued.
    let anonymized: Vec<Vec<u8>> = (10..12).map(|i| common::png(i, 640, 480)).collect();
    let out0 = app.record_done(&ids[0], anonymized[0].clone()).await;
    app.record_done(&ids[1], anonymized[1].clone()).await;

    let page_url = app.url(&format!("/projects/{slug}"));
    // Nobody gets in without a credential; a camera token is not one.
    let r = app.http.get(&page_url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .http
        .get(&page_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let r = app
        .http
        .get(&page_url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("3 images: "), "{html}");
    assert!(html.contains("2 anonymized"), "{html}");
    assert!(html.contains("1 in progress"), "{html}");
    let pos = |id: &str| {
        html.find(id)
            .unwrap_or_else(|| panic!("{id} not on the page"))
    };
    assert!(
        pos(&ids[0]) < pos(&ids[1]) && pos(&ids[1]) < pos(&ids[2]),
        "capture order"
    );
    assert!(html.contains(&format!("/projects/{slug}/thumbs/{}.jpg", ids[0])));
    assert!(
        !html.contains(&format!("/thumbs/{}.jpg", ids[2])),
        "no thumbnail for a frame not yet anonymized"
    );
    assert!(
        html.contains("class=\"pending\""),
        "placeholder for the queued frame"
    );
    assert!(html.contains("2 faces"));
    assert!(
        !html.contains("/original") && !html.contains("lg-"),
        "no bucket or original link"
    );

    // A viewer link: key → cookie → clean URL.
    let link: serde_json::Value = app
        .http
        .post(app.url(&format!("/v1/projects/{slug}/viewer-links")))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"hours": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = link["path"].as_str().unwrap();
    let http = no_redirects();
    let r = http.get(app.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], format!("/projects/{slug}"));
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(cookie.contains(&format!("Path=/projects/{slug}")));
    let cookie = cookie.split(';').next().unwrap().to_string();
    let r = http
        .get(&page_url)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Only admins make links; the key is for this project only.
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{slug}/viewer-links")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let other = format!("o{}", &Uuid::new_v4().simple().to_string()[..8]);
    app.create_project(&other).await;
    let r = http
        .get(app.url(&format!("/projects/{other}")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a viewer key opens one project only");

    // Thumbnail: from the anonymized output, small, cached beside it.
    let thumb_url = app.url(&format!("/projects/{slug}/thumbs/{}.jpg", ids[0]));
    let r = http
        .get(&thumb_url)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let thumb = r.bytes().await.unwrap();
    let decoded = image::load_from_memory(&thumb).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (320, 240));
    let cached = backend::gallery::thumbnail_key(&out0);
    assert_eq!(
        app.objects
            .get(&app.infra.output_bucket, &cached)
            .await
            .unwrap(),
        thumb,
        "made once and cached in the output bucket"
    );
    // The thumbnail shows the anonymized picture, not the original.
    let rgb = decoded.to_rgb8();
    let orig = image::load_from_memory(&originals[0])
        .unwrap()
        .thumbnail(320, 320)
        .to_rgb8();
    let anon = image::load_from_memory(&anonymized[0])
        .unwrap()
        .thumbnail(320, 320)
        .to_rgb8();
    let dist = |a: &image::RgbImage, b: &image::RgbImage| -> u64 {
        a.pixels()
            .zip(b.pixels())
            .map(|(p, q)| (0..3).map(|c| p[c].abs_diff(q[c]) as u64).sum::<u64>())
            .sum()
    };
    assert!(
        dist(&rgb, &anon) < dist(&rgb, &orig),
        "thumbnail of the output"
    );
    // Not for a queued frame, not without a credential.
    let r = http
        .get(app.url(&format!("/projects/{slug}/thumbs/{}.jpg", ids[2])))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(http.get(&thumb_url).send().await.unwrap().status(), 401);

    // The full-size link serves the anonymized bytes exactly.
    let r = http
        .get(app.url(&format!("/projects/{slug}/images/{}", ids[0])))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), anonymized[0]);
    // An image of another project is not reachable through this project's pages.
    let r = http
        .get(app.url(&format!("/projects/{other}/images/{}", ids[0])))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_names_are_escaped() {
    let app = TestApp::start(Opts::default()).await;
    let r = app
        .http
        .post(app.url("/v1/projects"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"slug": "esc", "name": "<script>alert(1)</script>"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let html = app
        .http
        .get(app.url("/projects/esc"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&lt;script&gt;"));
    app.stop().await;
}
