//! `fetch_pinned` against a real HTTP server on 127.0.0.1.

mod support;

use bootstrap::digest::sha256_hex;
use bootstrap::download::{DownloadError, fetch_pinned, fetch_pinned_capped, part_path};
use bootstrap::progress::{Event, Silent};
use std::sync::Mutex;
use support::{HttpServer, Mode, content};

const SIZE: usize = 3 * 1024 * 1024 + 123;

#[test]
fn good_file_is_fetched_verified_and_then_left_alone() {
    let server = HttpServer::start();
    let body = content(SIZE, 1);
    let pin = sha256_hex(&body);
    server.put("/k3s-arm64", body.clone());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("cache/k3s-arm64");
    let events = Mutex::new(Vec::new());
    let sink = |e: Event| events.lock().unwrap().push(e);

    let got = fetch_pinned(&server.url("/k3s-arm64"), &pin, &dest, &sink).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(got.sha256, pin);
    assert_eq!(got.size, SIZE as u64);
    assert_eq!(got.transferred, SIZE as u64);
    assert!(!got.already_present && !got.resumed);
    assert!(!part_path(&dest).exists());
    let events = events.into_inner().unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::StepStarted { total: Some(t), .. } if *t == SIZE as u64)),
        "{events:?}"
    );
    assert!(
        matches!(
            events.last(),
            Some(Event::Bytes { .. } | Event::StepFinished { .. })
        ),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::StepFinished { .. }))
    );

    // Second call: the hash of the file in place matches, no request is made.
    let again = fetch_pinned(&server.url("/k3s-arm64"), &pin, &dest, &Silent).unwrap();
    assert!(again.already_present);
    assert_eq!(again.transferred, 0);
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn mismatch_deletes_the_partial_file_and_replaces_nothing() {
    let server = HttpServer::start();
    let served = content(SIZE, 2);
    let served_hash = sha256_hex(&served);
    server.put("/base.tar.gz", served);
    let pin = sha256_hex(b"what the pin was made from");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("base.tar.gz");
    std::fs::write(&dest, b"the previous, older file").unwrap();
    let url = server.url("/base.tar.gz");

    let err = fetch_pinned(&url, &pin, &dest, &Silent).unwrap_err();
    assert!(matches!(err, DownloadError::Mismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains(&served_hash), "{msg}");
    assert!(msg.contains(&pin), "{msg}");
    assert!(!msg.contains('\n'));
    assert!(!part_path(&dest).exists(), "partial file left behind");
    assert_eq!(std::fs::read(&dest).unwrap(), b"the previous, older file");
}

#[test]
fn cut_connection_is_resumed_with_a_range_request() {
    let server = HttpServer::start();
    let body = content(SIZE, 3);
    let pin = sha256_hex(&body);
    server.put("/k3s", body.clone());
    server.set_mode(Mode::CutFirstAfter(SIZE as u64 / 2));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("k3s");

    let got = fetch_pinned(&server.url("/k3s"), &pin, &dest, &Silent).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert!(got.resumed);
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    let range = seen[1]
        .range
        .as_deref()
        .expect("second request carries Range");
    let from: u64 = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    assert!(from > 0 && from <= SIZE as u64 / 2, "{range}");
    assert!(
        server.body_bytes_served() < 2 * SIZE as u64,
        "served {} bytes for a {SIZE}-byte file",
        server.body_bytes_served()
    );
    assert_eq!(got.transferred, server.body_bytes_served());
}

#[test]
fn a_run_that_gives_up_keeps_the_part_and_the_next_run_resumes() {
    let server = HttpServer::start();
    let body = content(SIZE, 4);
    let pin = sha256_hex(&body);
    server.put("/rootfs.tar.gz", body.clone());
    server.set_mode(Mode::AlwaysCutAfter(256 * 1024));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("rootfs.tar.gz");
    let url = server.url("/rootfs.tar.gz");

    let err = fetch_pinned(&url, &pin, &dest, &Silent).unwrap_err();
    assert!(matches!(err, DownloadError::Transfer { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");
    assert!(!dest.exists());
    let kept = std::fs::metadata(part_path(&dest)).unwrap().len();
    assert!(kept > 0 && kept < SIZE as u64, "{kept}");
    assert!(
        err.to_string().contains(&format!("{kept} bytes are kept")),
        "{err}"
    );

    server.set_mode(Mode::Normal);
    let before = server.seen().len();
    let got = fetch_pinned(&url, &pin, &dest, &Silent).unwrap();
    assert!(got.resumed);
    assert_eq!(got.transferred, SIZE as u64 - kept);
    assert_eq!(
        server.seen()[before].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert!(!part_path(&dest).exists());
}

#[test]
fn server_ignoring_range_still_gives_the_right_file() {
    let server = HttpServer::start();
    let body = content(SIZE, 5);
    let pin = sha256_hex(&body);
    server.put("/f", body.clone());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f");
    std::fs::write(part_path(&dest), &body[..1000]).unwrap();
    server.set_mode(Mode::IgnoreRange);
    let got = fetch_pinned(&server.url("/f"), &pin, &dest, &Silent).unwrap();
    assert!(!got.resumed);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
}

#[test]
fn stale_part_from_another_file_is_discarded() {
    let server = HttpServer::start();
    let body = content(SIZE, 6);
    let pin = sha256_hex(&body);
    server.put("/f", body.clone());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f");
    std::fs::write(part_path(&dest), content(5000, 99)).unwrap();
    let got = fetch_pinned(&server.url("/f"), &pin, &dest, &Silent).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(got.sha256, pin);
}

#[test]
fn http_errors_and_bad_pins_are_reported() {
    let server = HttpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("missing");
    let url = server.url("/missing");
    let err = fetch_pinned(&url, &"a".repeat(64), &dest, &Silent).unwrap_err();
    assert!(
        matches!(err, DownloadError::Status { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&url));
    assert!(!dest.exists() && !part_path(&dest).exists());

    let err = fetch_pinned(&url, "abc", &dest, &Silent).unwrap_err();
    assert!(matches!(err, DownloadError::BadPin { .. }), "{err}");
    let err = fetch_pinned("ftp://x/y", &"a".repeat(64), &dest, &Silent).unwrap_err();
    assert!(matches!(err, DownloadError::BadUrl { .. }), "{err}");
}

/// A mirror that announces or streams more than the cap is cut off and what it sent is deleted:
/// it cannot fill the disk before the hash check.
#[test]
fn a_mirror_sending_more_than_the_cap_is_cut_off_and_nothing_kept() {
    let server = HttpServer::start();
    let body = content(SIZE, 7);
    let pin = sha256_hex(&body);
    server.put("/k3s", body);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("k3s");
    let cap = 1 << 20;
    // Announced too large (Content-Length): refused before a byte is written.
    let err = fetch_pinned_capped(&server.url("/k3s"), &pin, &dest, cap, &Silent).unwrap_err();
    assert!(
        matches!(err, DownloadError::TooLarge { limit, .. } if limit == cap),
        "{err}"
    );
    assert!(err.to_string().contains("more than 1048576 bytes"), "{err}");
    assert!(!dest.exists() && !part_path(&dest).exists());
    // Endless stream without a length: stopped at the cap, the partial file deleted.
    server.set_mode(Mode::Endless);
    let err = fetch_pinned_capped(&server.url("/k3s"), &pin, &dest, cap, &Silent).unwrap_err();
    assert!(matches!(err, DownloadError::TooLarge { .. }), "{err}");
    assert!(!dest.exists() && !part_path(&dest).exists());
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count(),
        0
    );
}
