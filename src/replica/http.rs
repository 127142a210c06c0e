//! A source published over HTTP(S) by any static web server or object store: the chain
//! directory's segment files at `BASE/segment-<first height>.chain` and the transparency log
//! at `BASE/tlog/` (or another URL), as docs/operations.md ("Replicas") publishes them. The
//! open segment is read with a range request from where the copy stands.

use super::{Source, SourceError, MAX_CHECKPOINT_BYTES};
use crate::chain::segment;
use std::io::Read;
use std::time::Duration;

/// How long a connection may take to open, and a read to wait for bytes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub struct HttpSource {
    /// The chain's URL, ending in '/'.
    base: String,
    /// The transparency log's URL, ending in '/'.
    tlog: String,
    http: Http,
}

/// An HTTP(S) client with the replica's rules: timeouts, no redirects followed, only the
/// statuses that are answers.
pub struct Http {
    agent: ureq::Agent,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout_read(READ_TIMEOUT)
                .redirects(0)
                .build(),
        }
    }
}

impl HttpSource {
    /// A source at `base` (`http://` or `https://`), its transparency log at `tlog` (default
    /// `BASE/tlog/`).
    pub fn new(base: &str, tlog: Option<&str>) -> Result<HttpSource, SourceError> {
        let slash = |url: &str| {
            if url.ends_with('/') {
                url.to_string()
            } else {
                format!("{url}/")
            }
        };
        let base = slash(base);
        for url in [Some(base.as_str()), tlog].into_iter().flatten() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(SourceError(format!(
                    "{url}: not an http:// or https:// URL"
                )));
            }
        }
        let tlog = tlog.map_or_else(|| format!("{base}tlog/"), slash);
        Ok(HttpSource {
            base,
            tlog,
            http: Http::default(),
        })
    }
}

impl Http {
    /// A signed note at `url` (a checkpoint), at most [`MAX_CHECKPOINT_BYTES`].
    pub fn note(&self, url: &str) -> Result<Vec<u8>, SourceError> {
        let response = self
            .get(url, 0)?
            .ok_or_else(|| SourceError(format!("{url}: not found (HTTP 404)")))?;
        let mut note = Vec::new();
        response
            .into_reader()
            .take(MAX_CHECKPOINT_BYTES + 1)
            .read_to_end(&mut note)
            .map_err(|err| SourceError(format!("{url}: {err}")))?;
        if note.len() as u64 > MAX_CHECKPOINT_BYTES {
            return Err(SourceError(format!(
                "{url}: larger than {MAX_CHECKPOINT_BYTES} bytes: not a checkpoint"
            )));
        }
        Ok(note)
    }

    fn get(&self, url: &str, range_from: u64) -> Result<Option<ureq::Response>, SourceError> {
        let mut request = self.agent.get(url);
        if range_from > 0 {
            request = request.set("Range", &format!("bytes={range_from}-"));
        }
        match request.call() {
            Ok(response) if response.status() == 200 || response.status() == 206 => {
                Ok(Some(response))
            }
            // ureq hands back what it does not follow (redirects are not followed: the
            // published URL is the operator's, a redirect is the server's choice).
            Ok(response) => Err(SourceError(format!(
                "{url}: HTTP {} {}{}",
                response.status(),
                response.status_text(),
                response
                    .header("Location")
                    .map_or(String::new(), |to| format!(" (to {to}; give that URL)"))
            ))),
            Err(ureq::Error::Status(404, _)) => Ok(None),
            Err(ureq::Error::Status(416, _)) => Ok(Some(empty_response()?)),
            Err(ureq::Error::Status(code, response)) => Err(SourceError(format!(
                "{url}: HTTP {code} {}",
                response.status_text()
            ))),
            // ureq's transport errors name the URL already.
            Err(err) => Err(SourceError(err.to_string())),
        }
    }
}

/// An empty body: a range starting at or past the end of the file.
fn empty_response() -> Result<ureq::Response, SourceError> {
    ureq::Response::new(200, "OK", "").map_err(|err| SourceError(err.to_string()))
}

impl Source for HttpSource {
    fn describe(&self) -> String {
        self.base.clone()
    }

    fn checkpoint(&self) -> Result<Vec<u8>, SourceError> {
        self.http.note(&format!("{}checkpoint", self.tlog))
    }

    fn segment(&self, first: u64, offset: u64) -> Result<Option<Box<dyn Read>>, SourceError> {
        let url = format!("{}{}", self.base, segment::file_name(first));
        let Some(response) = self.http.get(&url, offset)? else {
            return Ok(None);
        };
        let partial = response.status() == 206;
        if partial {
            // "bytes START-END/LEN": the part must start where it was asked to.
            let starts_at = response
                .header("Content-Range")
                .and_then(|range| range.strip_prefix("bytes "))
                .and_then(|range| range.split('-').next())
                .and_then(|start| start.parse::<u64>().ok());
            if starts_at != Some(offset) {
                return Err(SourceError(format!(
                    "{url}: asked for bytes from {offset}, the server sent Content-Range {:?}",
                    response.header("Content-Range").unwrap_or("")
                )));
            }
        }
        let mut body: Box<dyn Read> =
            Box::new(super::stream::ZeroRunLimit::new(response.into_reader()));
        if offset > 0 && !partial {
            // A server that ignores ranges sends the whole file: skip to the offset.
            let skipped = std::io::copy(&mut (&mut body).take(offset), &mut std::io::sink())
                .map_err(|err| SourceError(format!("{url}: {err}")))?;
            if skipped < offset {
                return Ok(Some(Box::new(std::io::empty())));
            }
        }
        Ok(Some(body))
    }
}
