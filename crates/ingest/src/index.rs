//! Keeps the database's recordings index in step with the storage tree: a row when a
//! recording's first object lands (`uploading`), its manifest's fields when the manifest is
//! accepted (`complete`), and at start a scan that indexes what the database does not know (an
//! upgrade, a restored backup, an index write that failed). An index failure never fails an
//! upload: it is logged, and the next start repairs it.

use std::sync::Arc;

use crate::db::{Completed, Db};
use crate::storage::{Held, Storage};

/// Objects landed for `device`/`id`.
pub fn object_landed(db: &Db, store: &Storage, device: &str, id: &str) {
    match db.index_uploading(device, id) {
        // Only a new row can be one a withdrawal forgot: the notice is read once a recording,
        // not once a fragment.
        Ok(true) => unless_withdrawn(db, store, device, id),
        Ok(false) => {}
        Err(e) => {
            log::error!(device = crate::esc(device).as_str(), recording = crate::esc(id).as_str(), error = crate::esc(&e.to_string()).as_str(); "cannot index the recording (the upload is not affected; the next start indexes it)");
        }
    }
}

/// The manifest of `device`/`id` was accepted: its bytes and the receipt.
pub fn manifest_accepted(
    db: &Db,
    store: &Storage,
    device: &str,
    id: &str,
    manifest: &[u8],
    receipt: &[u8],
) {
    if let Err(e) = index_complete(db, device, id, manifest, Some(receipt)) {
        log::error!(device = crate::esc(device).as_str(), recording = crate::esc(id).as_str(), error = crate::esc(&e).as_str(); "cannot index the complete recording (the upload is not affected; the next start indexes it)");
    }
    unless_withdrawn(db, store, device, id);
}

/// An upload that passed storage's check just before a withdrawal's notice was written can
/// index its recording after the withdrawal made the index forget it: looked at after every
/// index write, the notice removes the row again (the withdrawal deletes what landed).
fn unless_withdrawn(db: &Db, store: &Storage, device: &str, id: &str) {
    let forget = match store.withdrawn(device, id) {
        Ok(Some(_)) => db.forget_recording(device, id).map(|_| ()),
        Ok(None) => Ok(()),
        Err(e) => {
            log::error!(device = crate::esc(device).as_str(), recording = crate::esc(id).as_str(), error = crate::esc(&e.to_string()).as_str(); "cannot read the withdrawal notices (the next start settles the index)");
            Ok(())
        }
    };
    if let Err(e) = forget {
        log::error!(device = crate::esc(device).as_str(), recording = crate::esc(id).as_str(), error = crate::esc(&e.to_string()).as_str(); "cannot remove a withdrawn recording from the index (the next start does)");
    }
}

fn index_complete(
    db: &Db,
    device: &str,
    id: &str,
    manifest: &[u8],
    receipt: Option<&[u8]>,
) -> Result<(), String> {
    let m = neoflix_format::verify::parse_manifest(manifest)?;
    let signer = receipt
        .and_then(|r| neoflix_format::SignedReceipt::from_json(r).ok())
        .map(|(_, r)| r.signed_by);
    db.index_complete(
        device,
        id,
        &Completed {
            manifest: &m,
            signer,
        },
    )
    .map_err(|e| e.to_string())
}

/// Indexes every recording of the storage the index lacks or still has as uploading although
/// its manifest is there. Returns how many rows it wrote. Blocking.
pub fn scan(db: &Db, store: &Storage) -> Result<usize, String> {
    let known: std::collections::HashMap<(String, String), bool> = db
        .indexed()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(d, i, c)| ((d, i), c))
        .collect();
    let mut written = 0;
    for held in store.recordings().map_err(|e| e.to_string())? {
        let Held {
            device,
            id,
            complete,
        } = held;
        let key = (device.clone(), id.clone());
        match (known.get(&key), complete) {
            (Some(true), _) | (Some(false), false) => continue,
            (_, true) => {
                // Gone since it was listed (withdrawn) is no error; unreadable is one recording's
                // problem, not the scan's.
                let manifest = match store.manifest(&device, &id) {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err(e) => {
                        log::warn!(device = crate::esc(&device).as_str(), recording = crate::esc(&id).as_str(), error = crate::esc(&e.to_string()).as_str(); "a stored manifest cannot be read: left out of the review list");
                        continue;
                    }
                };
                let receipt = store.receipt(&device, &id).ok().flatten();
                match index_complete(db, &device, &id, &manifest, receipt.as_deref()) {
                    Ok(()) => {
                        written += 1;
                        unless_withdrawn(db, store, &device, &id);
                    }
                    Err(e) => {
                        log::warn!(device = crate::esc(&device).as_str(), recording = crate::esc(&id).as_str(), error = crate::esc(&e).as_str(); "a stored manifest cannot be indexed: left out of the review list")
                    }
                }
            }
            (None, false) => {
                db.index_uploading(&device, &id)
                    .map_err(|e| e.to_string())?;
                written += 1;
                // A withdrawal since the listing: the notice takes the row out again.
                unless_withdrawn(db, store, &device, &id);
            }
        }
    }
    Ok(written)
}

/// Runs [`scan`] off the runtime and logs what it did.
pub async fn scan_at_start(db: Arc<Db>, store: Arc<Storage>) {
    let r = tokio::task::spawn_blocking(move || scan(&db, &store)).await;
    match r {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => {
            log::info!(recordings = n; "recordings index: indexed what the storage tree holds and the index lacked")
        }
        Ok(Err(e)) => {
            log::error!(error = crate::esc(&e).as_str(); "recordings index: the start-up scan failed; the review list may lack recordings")
        }
        Err(e) => {
            log::error!(error = crate::esc(&e.to_string()).as_str(); "recordings index: the start-up scan panicked")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(device: &str, id: &str) -> Vec<u8> {
        let m = neoflix_format::Manifest {
            format: neoflix_format::manifest::FORMAT.into(),
            device_id: device.into(),
            recording_id: id.into(),
            renamed_from: None,
            status: neoflix_format::Status::Interrupted,
            trigger: "pedal".into(),
            stop_reason: "interrupted".into(),
            first_frame_utc: Some("2026-11-28T10:00:00.000Z".into()),
            trigger_utc: "2026-11-28T10:00:03.000Z".into(),
            stop_utc: "2026-11-28T10:01:00.000Z".into(),
            preroll_secs: 3.0,
            duration_secs: 60.0,
            recipient_key_id: "0123456789abcdef".into(),
            markers: vec![],
            clock_steps: vec![],
            init_segments: vec![],
            fragments: vec![],
            chain: String::new(),
        };
        serde_json::to_vec(&m).unwrap()
    }

    #[test]
    fn an_upload_indexed_after_its_withdrawal_leaves_no_row() {
        let d = tempfile::tempdir().unwrap();
        let store = Storage::open(&d.path().join("store"), 1 << 20).unwrap();
        let db = Db::open(&d.path().join("n.db")).unwrap();
        object_landed(&db, &store, "room-1", "rec-a");
        assert_eq!(db.indexed().unwrap().len(), 1, "an upload is indexed");
        store.withdraw("room-1", "rec-a", b"{}").unwrap();
        db.forget_recording("room-1", "rec-a").unwrap();
        // The racing upload's index write comes last.
        object_landed(&db, &store, "room-1", "rec-a");
        manifest_accepted(
            &db,
            &store,
            "room-1",
            "rec-a",
            &manifest("room-1", "rec-a"),
            b"{}",
        );
        assert!(db.indexed().unwrap().is_empty(), "{:?}", db.indexed());
    }

    #[test]
    fn the_start_up_scan_indexes_what_the_index_lacks_once() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("store");
        std::fs::create_dir_all(root.join("room-1/rec-a")).unwrap();
        std::fs::create_dir_all(root.join("room-1/rec-b")).unwrap();
        std::fs::create_dir_all(root.join("room-2/.tmp")).unwrap();
        std::fs::write(
            root.join("room-1/rec-b/manifest.json"),
            manifest("room-1", "rec-b"),
        )
        .unwrap();
        std::fs::write(root.join("stray-file"), b"x").unwrap();
        // One manifest that cannot be read (a symbolic link, which the server never makes)
        // costs its own recording only; it sorts first, so the scan must go on past it.
        std::fs::create_dir_all(root.join("room-0/rec-z")).unwrap();
        std::os::unix::fs::symlink(
            root.join("room-1/rec-b/manifest.json"),
            root.join("room-0/rec-z/manifest.json"),
        )
        .unwrap();
        let db = Db::open(&d.path().join("n.db")).unwrap();
        // An upload the index saw start; its manifest landed while the index was failing.
        db.index_uploading("room-1", "rec-b").unwrap();
        let store = Storage::open(&root, 1 << 20).unwrap();
        // Withdrawn, its deletion unfinished: the index must not bring it back (with its
        // consent reset to pending) before the next start finishes deleting it.
        store.withdraw("room-1", "rec-w", b"{}").unwrap();
        std::fs::create_dir_all(root.join("room-1/rec-w")).unwrap();
        std::fs::write(
            root.join("room-1/rec-w/manifest.json"),
            manifest("room-1", "rec-w"),
        )
        .unwrap();
        assert_eq!(scan(&db, &store).unwrap(), 2);
        let mut rows = db.indexed().unwrap();
        rows.sort();
        assert_eq!(
            rows,
            [
                ("room-1".into(), "rec-a".into(), false),
                ("room-1".into(), "rec-b".into(), true)
            ]
        );
        let s = &db.recordings_with_id("rec-b").unwrap()[0];
        assert_eq!(
            (s.status, s.duration_secs),
            (Some(neoflix_format::Status::Interrupted), Some(60.0))
        );
        assert_eq!(scan(&db, &store).unwrap(), 0, "nothing left to do");
        let empty = Storage::open(&d.path().join("absent"), 1 << 20).unwrap();
        assert_eq!(scan(&db, &empty).unwrap(), 0);
    }
}
