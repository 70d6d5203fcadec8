//! Assertions on a [`Reply`]. Each failure message names the request, the status and a body
//! excerpt, because a `FAIL` line is all the reader of a CI log gets.

use crate::http::Reply;
use anyhow::{anyhow, bail, ensure, Context as _, Result};
use berth_oci::Digest;
use serde_json::Value;

impl Reply {
    /// Fails unless the status is `want`.
    pub fn expect_status(&self, want: u16) -> Result<&Self> {
        self.expect_status_in(&[want])
    }

    /// Fails unless the status is one of `want`.
    pub fn expect_status_in(&self, want: &[u16]) -> Result<&Self> {
        if want.contains(&self.status.as_u16()) {
            return Ok(self);
        }
        let want: Vec<String> = want.iter().map(u16::to_string).collect();
        bail!(
            "{}: expected {}, got {}; body: {}",
            self.request_line(),
            want.join(" or "),
            self.status.as_u16(),
            self.excerpt()
        )
    }

    /// The header's value, or a failure saying it is missing.
    pub fn require_header(&self, name: &str) -> Result<&str> {
        self.header(name).ok_or_else(|| {
            anyhow!(
                "{}: {} response has no {name} header",
                self.request_line(),
                self.status.as_u16()
            )
        })
    }

    /// Fails unless the header is present and equal to `want`.
    pub fn expect_header(&self, name: &str, want: &str) -> Result<&Self> {
        let got = self.require_header(name)?;
        ensure!(
            got == want,
            "{}: {name} is {got:?}, expected {want:?}",
            self.request_line()
        );
        Ok(self)
    }

    /// Fails unless `Content-Type`'s media type (parameters ignored) is `want`.
    pub fn expect_media_type(&self, want: &str) -> Result<&Self> {
        let got = self.require_header("Content-Type")?;
        let media = got.split(';').next().unwrap_or("").trim();
        ensure!(
            media.eq_ignore_ascii_case(want),
            "{}: Content-Type is {got:?}, expected {want:?}",
            self.request_line()
        );
        Ok(self)
    }

    /// Fails unless `Docker-Content-Digest` is `want`.
    pub fn expect_digest(&self, want: &Digest) -> Result<&Self> {
        self.expect_header("Docker-Content-Digest", &want.to_string())
    }

    /// Fails unless `Content-Length` is `want`.
    pub fn expect_length(&self, want: usize) -> Result<&Self> {
        self.expect_header("Content-Length", &want.to_string())
    }

    /// Fails unless the body is exactly `want`; the message shows where they part.
    pub fn expect_body(&self, want: &[u8]) -> Result<&Self> {
        self.expect_readable_body()?;
        if self.body == want {
            return Ok(self);
        }
        let at = self
            .body
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(self.body.len().min(want.len()));
        bail!(
            "{}: body differs from what was pushed: {} bytes (sha256 {}) instead of {} \
             (sha256 {}), first difference at byte {at}",
            self.request_line(),
            self.body.len(),
            Digest::of(&self.body),
            want.len(),
            Digest::of(want)
        )
    }

    /// Fails unless a `Location` header is present; returns it resolved against the request.
    pub fn location(&self) -> Result<reqwest::Url> {
        let raw = self.require_header("Location")?;
        self.url
            .join(raw)
            .with_context(|| format!("{}: unusable Location {raw:?}", self.request_line()))
    }

    /// Fails if the body broke off.
    pub fn expect_readable_body(&self) -> Result<&Self> {
        match &self.body_error {
            Some(e) => bail!(
                "{}: {} response, but its body could not be read: {e}",
                self.request_line(),
                self.status.as_u16()
            ),
            None => Ok(self),
        }
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<Value> {
        self.expect_readable_body()?;
        serde_json::from_slice(&self.body)
            .with_context(|| format!("{}: body is not JSON: {}", self.request_line(), self.excerpt()))
    }

    /// Fails unless the status is `status` and the OCI error envelope's `errors` carries
    /// `code` (the spec allows several errors; the one asked for must be among them).
    pub fn expect_error(&self, status: u16, code: &str) -> Result<&Self> {
        self.expect_status(status)?;
        let codes = self.error_codes().with_context(|| {
            format!(
                "{}: {status} without an OCI error body (expected {code}): {}",
                self.request_line(),
                self.excerpt()
            )
        })?;
        ensure!(
            codes.iter().any(|c| c == code),
            "{}: error codes {codes:?}, expected {code}; body: {}",
            self.request_line(),
            self.excerpt()
        );
        Ok(self)
    }

    /// The `code` of each entry of `{"errors": [...]}`.
    fn error_codes(&self) -> Result<Vec<String>> {
        let json = self.json()?;
        let errors = json
            .get("errors")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("no errors array"))?;
        Ok(errors
            .iter()
            .filter_map(|e| e.get("code").and_then(Value::as_str))
            .map(str::to_owned)
            .collect())
    }

    /// The `<url>` of a `Link: <url>; rel="next"` header, resolved, if there is one.
    pub fn next_link(&self) -> Result<Option<reqwest::Url>> {
        for value in self.headers.get_all("Link") {
            let Ok(value) = value.to_str() else { continue };
            for link in value.split(',') {
                let (Some(open), Some(close)) = (link.find('<'), link.find('>')) else {
                    continue;
                };
                let params = &link[close + 1..];
                let is_next = params.split(';').any(|p| {
                    let p = p.trim().to_ascii_lowercase();
                    p == "rel=\"next\"" || p == "rel=next"
                });
                if is_next && open < close {
                    let target = &link[open + 1..close];
                    let url = self
                        .url
                        .join(target)
                        .with_context(|| format!("{}: unusable Link {value:?}", self.request_line()))?;
                    return Ok(Some(url));
                }
            }
        }
        Ok(None)
    }
}

/// A JSON value's string field, or a failure naming it.
pub fn str_field<'v>(value: &'v Value, field: &str) -> Result<&'v str> {
    value
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{field:?} missing or not a string in {value}"))
}

/// A JSON value's array field, or a failure naming it.
pub fn array_field<'v>(value: &'v Value, field: &str) -> Result<&'v Vec<Value>> {
    value
        .get(field)
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("{field:?} missing or not an array in {}", short(value)))
}

/// A JSON value as at most 300 characters, for messages.
pub fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 300 {
        let mut s: String = text.chars().take(300).collect();
        s.push('…');
        s
    } else {
        text
    }
}
