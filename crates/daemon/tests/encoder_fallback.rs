//! A probed hardware encoder that fails, under the real launcher and real GStreamer pipelines:
//! an element registered as `v4l2h264enc` refuses to start (as a busy or misconfigured Pi
//! encoder does), supervision tries it three times and then records with x264.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use neoflix_capture::{CaptureSettings, Source};
use neoflix_daemon::capture::{
    ENCODER_ATTEMPTS, Facts, Gstreamer, Links, Report, Wanted, supervise,
};
use neoflix_daemon::storage::ToStorage;
use neoflix_daemon::systemd::Pulse;
use tokio::sync::{mpsc, watch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hardware_encoder_gives_way_to_x264_in_a_real_pipeline() {
    neoflix_capture::testing::register_failing_encoder("v4l2h264enc").unwrap();
    assert_eq!(
        neoflix_capture::probe_encoder(None).unwrap().factory(),
        "v4l2h264enc",
        "the failing encoder is what the probe finds"
    );
    let settings = CaptureSettings {
        source: Source::Test,
        width: 320,
        height: 240,
        fps: 10,
        bitrate_kbps: 300,
        ..Default::default()
    };
    let (storage_tx, mut storage) = mpsc::channel(64);
    let (wanted, wanted_rx) = watch::channel(Wanted::Running);
    let (reports_tx, mut reports) = mpsc::channel(16);
    let (facts_tx, mut facts) = watch::channel(Facts::default());
    let recording = Arc::new(AtomicBool::new(false));
    let links = Links {
        storage: storage_tx,
        wanted: wanted_rx,
        reports: reports_tx,
        facts: facts_tx,
        pulse: Pulse::default(),
        recording: {
            let r = recording.clone();
            Box::new(move || r.load(Ordering::Relaxed))
        },
    };
    let task = tokio::spawn(supervise(
        Gstreamer::new(settings, None, None),
        "room-1".into(),
        links,
    ));

    // Each refusal is reported, naming the encoder and what the driver said.
    for _ in 0..ENCODER_ATTEMPTS {
        let report = tokio::time::timeout(Duration::from_secs(30), reports.recv())
            .await
            .expect("a report")
            .expect("supervision runs");
        let Report::Failed { reason } = report else {
            panic!("{report:?}")
        };
        assert!(
            reason.contains("element 'encoder' failed")
                && reason.contains("Device or resource busy"),
            "{reason}"
        );
    }
    // Then x264, said in the facts, and video flows.
    let f = tokio::time::timeout(
        Duration::from_secs(30),
        facts.wait_for(|f| f.encoder == "x264enc" && f.encoder_fallback.is_some()),
    )
    .await
    .expect("x264 took over")
    .expect("facts")
    .clone();
    let why = f.encoder_fallback.unwrap();
    assert!(why.contains("3 times in a row"), "{why}");
    let mut fragments = 0;
    while fragments < 2 {
        match tokio::time::timeout(Duration::from_secs(20), storage.recv()).await {
            Ok(Some(ToStorage::Fragment { .. })) => fragments += 1,
            Ok(Some(_)) => {}
            other => panic!("no video from x264: {}", other.is_ok()),
        }
    }
    wanted.send(Wanted::Stopped).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("supervision stops")
        .unwrap();
}
