//! AWS Signature Version 4 for S3, header-signed: the canonical request, the string to sign and
//! the signature, as pure functions of the request and the time, so the published examples test
//! them exactly.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The SHA-256 of an empty body, hex: what a GET, HEAD or DELETE signs as its payload.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What is signed of one request. Header names are given lower-case; every header the request
/// carries that the store should check is listed, `host` and `x-amz-date` included.
pub struct Request<'a> {
    /// `GET`, `PUT`, ...
    pub method: &'a str,
    /// The path as sent, already encoded by [`encode_path`].
    pub path: &'a str,
    /// Query parameters, not yet encoded.
    pub query: &'a [(&'a str, &'a str)],
    /// Name and value of every header signed.
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body (the `x-amz-content-sha256` header's value).
    pub payload_sha256: &'a str,
}

/// The scope a signature is valid in.
pub struct Scope<'a> {
    /// `YYYYMMDDTHHMMSSZ`, the `x-amz-date` header.
    pub timestamp: &'a str,
    /// The region the store signs for.
    pub region: &'a str,
}

/// Encodes a query value or key as SigV4 wants: every byte but `A-Za-z0-9-_.~` as `%XX`.
pub fn encode(s: &str) -> String {
    encode_keeping(s, false)
}

/// Encodes an object path: as [`encode`], but `/` stays.
pub fn encode_path(s: &str) -> String {
    encode_keeping(s, true)
}

fn encode_keeping(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The encoded query string, sorted as the canonical request has it (the order the request may
/// send it in too).
pub fn query_string(query: &[(&str, &str)]) -> String {
    let mut q: Vec<(String, String)> = query.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    q.sort();
    q.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn signed_headers(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            // Inner runs of spaces fold to one, as the specification has it.
            let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
            (k.to_ascii_lowercase(), v)
        })
        .collect();
    h.sort();
    h
}

/// The canonical request.
pub fn canonical_request(r: &Request) -> String {
    let h = signed_headers(r.headers);
    let mut out = format!("{}\n{}\n{}\n", r.method, r.path, query_string(r.query));
    for (k, v) in &h {
        out.push_str(&format!("{k}:{v}\n"));
    }
    let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
    out.push_str(&format!("\n{}\n{}", names.join(";"), r.payload_sha256));
    out
}

fn credential_scope(s: &Scope) -> String {
    let date = s.timestamp.get(..8).unwrap_or(s.timestamp);
    format!("{date}/{}/s3/aws4_request", s.region)
}

/// The string to sign.
pub fn string_to_sign(r: &Request, s: &Scope) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        s.timestamp,
        credential_scope(s),
        hex::encode(Sha256::digest(canonical_request(r).as_bytes()))
    )
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The hex signature.
pub fn signature(r: &Request, s: &Scope, secret: &str) -> String {
    let date = s.timestamp.get(..8).unwrap_or(s.timestamp);
    let mut k = zeroize::Zeroizing::new(format!("AWS4{secret}").into_bytes());
    let mut key = hmac(&k, date.as_bytes());
    k.clear();
    for part in [s.region, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let sig = hmac(&key, string_to_sign(r, s).as_bytes());
    zeroize::Zeroize::zeroize(&mut key);
    hex::encode(sig)
}

/// The `Authorization` header's value.
pub fn authorization(r: &Request, s: &Scope, access_key_id: &str, secret: &str) -> String {
    let names: Vec<String> = signed_headers(r.headers)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{},SignedHeaders={},Signature={}",
        credential_scope(s),
        names.join(";"),
        signature(r, s, secret)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // The examples of the S3 API reference ("Signature Calculations for the Authorization
    // Header: Transferring Payload in a Single Chunk"), with its example key.
    const KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const HOST: &str = "examplebucket.s3.amazonaws.com";
    const SCOPE: Scope = Scope {
        timestamp: "20130524T000000Z",
        region: "us-east-1",
    };

    #[test]
    fn the_get_object_example_signs_as_published() {
        let r = Request {
            method: "GET",
            path: &encode_path("/test.txt"),
            query: &[],
            headers: &[
                ("Host", HOST),
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
            ],
            payload_sha256: EMPTY_SHA256,
        };
        assert_eq!(
            hex::encode(Sha256::digest(canonical_request(&r).as_bytes())),
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        assert_eq!(
            authorization(&r, &SCOPE, KEY_ID, SECRET),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn the_put_object_example_signs_as_published() {
        let body = "Welcome to Amazon S3.";
        let sha = hex::encode(Sha256::digest(body));
        let path = encode_path("/test$file.text");
        assert_eq!(path, "/test%24file.text");
        let r = Request {
            method: "PUT",
            path: &path,
            query: &[],
            headers: &[
                ("Host", HOST),
                ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("x-amz-date", "20130524T000000Z"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                ("x-amz-content-sha256", &sha),
            ],
            payload_sha256: &sha,
        };
        assert_eq!(
            signature(&r, &SCOPE, SECRET),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    #[test]
    fn the_list_objects_example_signs_as_published() {
        let r = Request {
            method: "GET",
            path: "/",
            query: &[("prefix", "J"), ("max-keys", "2")],
            headers: &[
                ("Host", HOST),
                ("x-amz-date", "20130524T000000Z"),
                ("x-amz-content-sha256", EMPTY_SHA256),
            ],
            payload_sha256: EMPTY_SHA256,
        };
        assert!(canonical_request(&r).starts_with("GET\n/\nmax-keys=2&prefix=J\n"));
        assert_eq!(
            signature(&r, &SCOPE, SECRET),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn values_are_encoded_byte_by_byte_and_paths_keep_their_slashes() {
        assert_eq!(encode("a b/c~d*é"), "a%20b%2Fc~d%2A%C3%A9");
        assert_eq!(encode_path("/p/room 1/x+y"), "/p/room%201/x%2By");
        assert_eq!(
            query_string(&[
                ("prefix", "a/b"),
                ("list-type", "2"),
                ("continuation-token", "x=")
            ]),
            "continuation-token=x%3D&list-type=2&prefix=a%2Fb"
        );
    }
}
