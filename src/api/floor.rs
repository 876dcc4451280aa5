//! The HTTP floor of `p11kms bench`: a server with `serve`'s runtime and connection
//! settings that answers every request with a fixed KMS-shaped response, without SigV4, JSON
//! or the token. What it achieves under the same load generator is the most any p11kms
//! server can on that machine; the benchmark reports the real server against it.

use std::convert::Infallible;
use std::io::Write as _;

use super::response::{request_id, AMZ_JSON};
use super::server::http1_builder;
use crate::error::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// The size of a GenerateDataKeyWithoutPlaintext answer (a 114-byte blob, base64, and an ARN).
fn fixed_body() -> Bytes {
    let blob = "A".repeat(152);
    Bytes::from(format!(
        r#"{{"CiphertextBlob":"{blob}","KeyId":"arn:aws:kms:us-east-2:111122223333:key/00000000-0000-4000-8000-000000000000"}}"#
    ))
}

async fn answer(req: Request<Incoming>, body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    // The request body is read, as the real server must.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(AMZ_JSON));
    if let Ok(v) = HeaderValue::from_str(&request_id()) {
        resp.headers_mut().insert("x-amzn-requestid", v);
    }
    Ok(resp)
}

/// Serves the floor on `listen` until the process is killed; prints `listening on <addr>`.
pub fn serve_http_floor(listen: &str) -> Result<()> {
    super::server_runtime()?.block_on(async {
        let (listener, addr) = super::bind(listen).await?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {addr}");
        let _ = out.flush();
        drop(out);
        let body = fixed_body();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(req, body.clone()));
                let _ = http1_builder()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
