//! Signatures, receipts and withdrawal notices from outside: a `manifest.sig` as the ingest
//! server, `neoflix verify` and export read it, and a signed receipt or withdrawal notice as
//! neoflixd's uplink reads the server's answer. The input is the JSON, a NUL byte, then the
//! document the signature is checked over.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use neoflix_format::custody::Purpose;
use neoflix_format::{Signature, SignedReceipt, SignedWithdrawal, TrustAnchors};

fn anchors() -> &'static TrustAnchors {
    static ANCHORS: OnceLock<TrustAnchors> = OnceLock::new();
    ANCHORS.get_or_init(neoflix_fuzz::trust_anchors)
}

/// A signature that checks over `doc` for `purpose` checks over nothing else and for nothing
/// else; checking it against the CA must not panic, whatever it carries.
fn checked(sig: &Signature, purpose: Purpose, doc: &[u8]) {
    let Ok(signer) = sig.check(purpose, doc) else {
        return;
    };
    assert!(!signer.chain_checked);
    for other in [Purpose::Manifest, Purpose::Receipt, Purpose::Withdrawal] {
        assert!(
            other == purpose || sig.check(other, doc).is_err(),
            "a {purpose:?} signature passed as a {other:?} signature"
        );
    }
    let mut longer = doc.to_vec();
    longer.push(b'\n');
    assert!(
        sig.check(purpose, &longer).is_err(),
        "a signature held over a changed document"
    );
    let anchored = match purpose {
        Purpose::Manifest => anchors().check_device(sig, doc),
        Purpose::Receipt | Purpose::Withdrawal => match sig.signed_at() {
            Ok(at) => anchors().check_server(purpose, sig, doc, neoflix_fuzz::INGEST_SERVER, at),
            Err(e) => Err(e),
        },
    };
    if let Ok(s) = anchored {
        assert!(s.chain_checked);
        assert_eq!(s.name, signer.name);
    }
}

fuzz_target!(|data: &[u8]| {
    let (json, doc) = neoflix_fuzz::split_signature(data);
    if let Ok(sig) = Signature::from_json(json) {
        let again = Signature::from_json(&sig.to_json()).expect("a written signature parses");
        assert_eq!(again, sig);
        let _ = sig.chain();
        checked(&sig, Purpose::Manifest, doc);
    }
    if let Ok((signed, receipt)) = SignedReceipt::from_json(json) {
        let (again, receipt_again) =
            SignedReceipt::from_json(&signed.to_json()).expect("a written receipt parses");
        assert_eq!((again, receipt_again), (signed.clone(), receipt));
        checked(
            &signed.signature,
            Purpose::Receipt,
            signed.receipt.as_bytes(),
        );
    }
    if let Ok((signed, notice)) = SignedWithdrawal::from_json(json) {
        let (again, notice_again) =
            SignedWithdrawal::from_json(&signed.to_json()).expect("a written notice parses");
        assert_eq!((again, notice_again), (signed.clone(), notice));
        checked(
            &signed.signature,
            Purpose::Withdrawal,
            signed.withdrawal.as_bytes(),
        );
    }
});
