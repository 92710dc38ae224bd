//! The logic of the `neoflix` command, as a library the binary is a thin shell over, so that it
//! is unit-tested without a terminal, a broker or a daemon.
//!
//! Layout: [`camera`] listing V4L2 cameras and trying their controls; [`fleet`] the fleet view: every room box's retained status read from the department
//! broker as the shared [`neoflix_control::Status`], shown as a table for people or as JSON for
//! scripts; [`review`] the department keys, and verify and export in the order custody demands
//! (the signature, then the files, then every chunk); [`reviewer`] enrolling a reviewer of the
//! review page.
//!
//! ```
//! use neoflix_cli::fleet::Fleet;
//! let mut fleet = Fleet::default();
//! fleet.update("room-1", br#"{"state":"offline"}"#);
//! let now = time::OffsetDateTime::now_utc();
//! assert!(fleet.table(now).contains("offline"));
//! ```
#![deny(missing_docs)]

pub mod camera;
pub mod fleet;
pub mod review;
pub mod reviewer;
