//! A stop that comes while the program is still starting: systemd sends SIGTERM as soon as it
//! wants, and a daemon that has not yet awaited its shutdown future must still stop cleanly
//! (finalizing what it holds), not die of the signal's default action.
//!
//! Its own test binary, so the signal it sends itself reaches no other test.

use std::time::Duration;

#[test]
fn a_sigterm_before_anyone_awaits_the_shutdown_future_is_kept_for_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let shutdown = neoflix_logging::shutdown_signal();
        // Still starting: nothing polls `shutdown` yet.
        // SAFETY: kill has no memory preconditions.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
        tokio::time::timeout(Duration::from_secs(10), shutdown)
            .await
            .expect("the SIGTERM sent before the future was awaited completes it");
    });
}
