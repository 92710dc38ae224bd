//! A PUT body fed chunk by chunk from elsewhere (a blocking thread receiving an upload), with
//! a bounded number of chunks in flight: the store's pace holds the feeder back, and nothing is
//! gathered whole in memory.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;

/// The feeding end of a [`channel`] body.
#[derive(Debug)]
pub struct BodySender(mpsc::Sender<Result<Bytes, std::io::Error>>);

/// The request was given up (the store refused it, or it failed): the chunk was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl BodySender {
    /// Sends a chunk from a thread outside the runtime, waiting while `depth` are in flight.
    pub fn blocking_send(&self, chunk: Bytes) -> Result<(), Gone> {
        self.0.blocking_send(Ok(chunk)).map_err(|_| Gone)
    }

    /// Sends a chunk, waiting while `depth` are in flight.
    pub async fn send(&self, chunk: Bytes) -> Result<(), Gone> {
        self.0.send(Ok(chunk)).await.map_err(|_| Gone)
    }

    /// Ends the body with an error, so that the request fails rather than ending short (which
    /// a store that checks the signed digest refuses anyway, and one that does not might
    /// keep). Never waits: with the channel full, the sender's going away ends the body short
    /// of its announced length, which the HTTP client refuses to send as whole.
    pub fn abort(self, why: &str) {
        let _ = self.0.try_send(Err(std::io::Error::other(why.to_string())));
    }
}

/// A body for [`crate::Bucket::put`] and the sender that feeds it, at most `depth` chunks
/// ahead of the store. Dropping the sender ends the body.
pub fn channel(depth: usize) -> (BodySender, reqwest::Body) {
    let (tx, rx) = mpsc::channel(depth.max(1));
    (BodySender(tx), reqwest::Body::wrap(Fed(rx)))
}

struct Fed(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for Fed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map(http_body::Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn chunks_arrive_in_order_and_an_abort_is_an_error() {
        let (tx, rx) = mpsc::channel(3);
        let mut body = Fed(rx);
        let feeder = std::thread::spawn(move || {
            let tx = BodySender(tx);
            tx.blocking_send(Bytes::from_static(b"one ")).unwrap();
            tx.blocking_send(Bytes::from_static(b"two")).unwrap();
            tx.abort("digest mismatch");
        });
        let mut got = Vec::new();
        let mut failed = None;
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => got.extend_from_slice(&f.into_data().unwrap()),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        feeder.join().unwrap();
        assert_eq!(got, b"one two");
        assert_eq!(failed.as_deref(), Some("digest mismatch"));
    }

    #[test]
    fn an_abort_never_waits_on_a_full_channel() {
        let (tx, rx) = mpsc::channel(1);
        let tx = BodySender(tx);
        tx.blocking_send(Bytes::from_static(b"full")).unwrap();
        // Returns at once; the body then ends after what was sent, short of its length.
        tx.abort("digest mismatch");
        let mut rx = rx;
        assert!(matches!(rx.try_recv(), Ok(Ok(_))));
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_body_whose_request_is_gone_refuses_more() {
        let (tx, body) = channel(1);
        drop(body);
        assert_eq!(tx.send(Bytes::from_static(b"x")).await, Err(Gone));
    }
}
