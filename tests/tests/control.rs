//! The local control socket under abuse: idle clients, bytes that are not text. Real neoflixd.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use neoflix_e2e::{Lab, neoflix};

const CAPTURE_320: &str =
    "source = \"test\"\nwidth = 320\nheight = 240\nfps = 15\nfragment_secs = 1\nbitrate_kbps = 300";

#[test]
fn idle_clients_cannot_lock_out_neoflix_ctl() {
    let lab = Lab::new();
    lab.config(CAPTURE_320, 2, "");
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    // More idle connections than the daemon serves at once, each sending nothing (or half a line).
    let mut idle: Vec<UnixStream> = (0..12)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    for s in idle.iter_mut().step_by(2) {
        s.write_all(b"{\"cmd\":").unwrap();
    }
    // neoflix ctl still gets its answer: idle clients are closed after the idle timeout.
    let socket = d.socket.display().to_string();
    let out = neoflix(&["ctl", "--socket", &socket, "status"]);
    assert!(
        out.status.success(),
        "ctl status failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ready\": true"));
    // And the idle ones were closed by the daemon, not left open (the test's own timeout is a
    // cap, far above the daemon's idle timeout).
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty() || rest.ends_with(b"\n"), "{rest:?}"),
            // Closed with our half line unread: Linux reports that as a reset.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("not closed by the daemon: {e}"),
        }
    }
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_line_that_is_not_utf8_gets_an_error_reply() {
    let lab = Lab::new();
    lab.config(CAPTURE_320, 2, "");
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"{\"cmd\":\"st\xffatus\"}\n").unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(
        line.contains("\"ok\":false") && line.contains("UTF-8"),
        "{line:?}"
    );
    // The connection stays usable for the next request.
    s.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":true"), "{line:?}");
    assert_eq!(d.terminate(), 0);
}
