//! The providers' Batch APIs: OpenAI Batch (a JSONL file uploaded to `/files`, then
//! `/batches`) and Anthropic Message Batches (`/messages/batches`, requests in the body).
//!
//! Only the exchanges live here; what is submitted when, and what becomes of each result, is
//! the batch submitter's (`reasonrec_worker::batch`). No call is retried here: a create whose
//! answer was lost may have created the batch, so the caller reconciles with [`BatchClient::find`]
//! before it ever creates again.

use crate::client::TeacherClient;
use crate::error::TeacherError;
use chrono::{DateTime, TimeZone, Utc};
use reasonrec_core::ChatMessage;
use reasonrec_core::attempt::{AttemptRecord, ErrorClass};
use reasonrec_core::settings::{EndpointSettings, Protocol};
use serde::Deserialize;
use std::collections::HashSet;

/// The metadata key of an OpenAI batch that names our batch row.
pub const TAG_KEY: &str = "reasonrec_batch";
/// Responses of the batch API's small calls (batch objects, lists) are read up to this size.
const OBJECT_LIMIT: u64 = 16 * 1024 * 1024;
/// Result files are read up to this size (50,000 answers of ~2 KB are ~100 MB); they are read
/// as they come, a line at a time, never held whole.
const RESULTS_LIMIT: u64 = 2 * 1024 * 1024 * 1024;
/// A result line longer than this is refused (one answer is a few KB).
const RESULT_LINE_LIMIT: usize = 16 * 1024 * 1024;
/// The spool file is written and read in pieces of this size.
const SPOOL_BUFFER: usize = 256 * 1024;
/// Anthropic's create body around its requests.
const ANTHROPIC_OPEN: &[u8] = b"{\"requests\":[";
const ANTHROPIC_CLOSE: &[u8] = b"]}";
/// Uploads and result downloads (up to hundreds of MB) get this long, not the endpoint's
/// `timeout_secs`, which is sized for one answer.
const TRANSFER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1_800);

/// What the provider says of a batch, in the words both APIs share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPhase {
    /// Validating, running, finalizing or being cancelled: poll again later.
    Open,
    /// Results are ready (completed, expired, cancelled; Anthropic `ended`).
    Ended,
    /// The provider refused the batch as a whole (OpenAI `failed`: a bad file, the enqueued-token
    /// quota); no line ran.
    Failed,
}

/// A batch at the provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderBatch {
    pub id: String,
    /// The provider's own status word (`in_progress`, `finalizing`, `ended`, ...).
    pub status: String,
    pub phase: BatchPhase,
    pub created_at: DateTime<Utc>,
    /// Requests in the batch, where the provider says (Anthropic: the sum of its counts).
    pub requests: Option<u64>,
    /// Our batch id from the metadata (OpenAI only).
    pub tag: Option<String>,
    pub input_file_id: Option<String>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// The batch-level errors of a failed batch, as `code: message` lines.
    pub errors: Option<String>,
}

/// What became of one line.
#[derive(Debug, Clone, PartialEq)]
pub enum LineResult {
    /// An answer (not yet validated for content), with the HTTP status of the line.
    Answer(crate::ChatAnswer),
    /// The line failed at the provider, or its answer could not be used; `permanent` when
    /// sending it again cannot help (an invalid request). `billed`: what an answer we could not
    /// use cost ([`TeacherError::billed`]); None for a line that failed at the provider.
    Error {
        class: ErrorClass,
        http_status: Option<u16>,
        message: String,
        permanent: bool,
        billed: Option<reasonrec_core::settings::TokenUsage>,
    },
    /// The batch's window ended before the line ran (not billed).
    Expired,
    /// The batch was cancelled before the line ran (not billed).
    Canceled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResultLine {
    pub custom_id: String,
    pub result: LineResult,
}

/// The Batch API of one endpoint (`mode = "batch"`).
#[derive(Debug, Clone)]
pub struct BatchClient {
    client: TeacherClient,
    base: String,
}

impl BatchClient {
    pub fn new(endpoint: &EndpointSettings) -> Result<Self, TeacherError> {
        Ok(Self { client: TeacherClient::new(endpoint)?, base: endpoint.base_url.trim_end_matches('/').to_string() })
    }

    pub fn endpoint(&self) -> &EndpointSettings {
        self.client.endpoint()
    }

    /// The most lines the provider takes in one batch.
    pub fn max_lines(&self) -> u32 {
        reasonrec_core::batching::provider_max_lines(self.endpoint().protocol)
    }

    /// The most bytes of requests the provider takes in one batch (OpenAI's file limit;
    /// Anthropic's body limit, less room for the envelope).
    pub fn max_bytes(&self) -> u64 {
        match self.endpoint().protocol {
            Protocol::OpenAi => 200_000_000,
            Protocol::Anthropic => 255_000_000,
        }
    }

    /// One request of a batch, as the provider wants it in its file (OpenAI: a JSONL line) or its
    /// `requests` array (Anthropic), without separator. `custom_id` must match
    /// `^[a-zA-Z0-9_-]{1,64}$` (Anthropic's rule, which OpenAI accepts).
    pub fn encode_line(&self, custom_id: &str, messages: &[ChatMessage]) -> Vec<u8> {
        let body = self.client.body(messages, &self.endpoint().params);
        let line = match self.endpoint().protocol {
            Protocol::OpenAi => serde_json::json!({
                "custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body,
            }),
            Protocol::Anthropic => serde_json::json!({"custom_id": custom_id, "params": body}),
        };
        line.to_string().into_bytes()
    }

    /// A new, empty batch file for this endpoint's provider, holding at most `max_bytes` (and
    /// never more than [`Self::max_bytes`]).
    pub async fn spool(&self, max_bytes: u64) -> std::io::Result<BatchFile> {
        let file = tokio::task::spawn_blocking(tempfile::tempfile).await.map_err(std::io::Error::other)??;
        let envelope = match self.endpoint().protocol {
            Protocol::OpenAi => 0,
            Protocol::Anthropic => (ANTHROPIC_OPEN.len() + ANTHROPIC_CLOSE.len()) as u64,
        };
        Ok(BatchFile {
            writer: tokio::io::BufWriter::with_capacity(SPOOL_BUFFER, tokio::fs::File::from_std(file)),
            protocol: self.endpoint().protocol,
            lines: 0,
            bytes: envelope,
            max_bytes: max_bytes.min(self.max_bytes()),
        })
    }

    /// Creates a batch of the lines of `file` tagged `tag` (our batch id), streaming the file to
    /// the provider. Called once per batch row: an error may still have created it (a lost
    /// answer), so the caller records that it tried and reconciles with [`Self::find`] before
    /// trying again.
    pub async fn create(&self, tag: &str, file: BatchFile) -> Result<ProviderBatch, TeacherError> {
        match self.endpoint().protocol {
            Protocol::OpenAi => {
                let file_id = self.upload(tag, file).await?;
                let body = serde_json::json!({
                    "input_file_id": file_id,
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                    "metadata": {TAG_KEY: tag},
                });
                let req = self.client.http().post(format!("{}/batches", self.base)).json(&body);
                let (status, text) = self.client.exchange(self.client.authorized(req), OBJECT_LIMIT).await?;
                parse_openai_batch(status, &text)
            }
            Protocol::Anthropic => {
                let (body, len) = file.into_body(ANTHROPIC_OPEN.to_vec(), ANTHROPIC_CLOSE.to_vec()).await?;
                let req = self
                    .client
                    .http()
                    .post(format!("{}/messages/batches", self.base))
                    .timeout(TRANSFER_TIMEOUT)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(body);
                let (status, text) = self.client.exchange(self.client.authorized(req), OBJECT_LIMIT).await?;
                parse_anthropic_batch(status, &text)
            }
        }
    }

    /// Uploads an OpenAI batch input file (multipart, purpose `batch`), streamed from `file`;
    /// returns its id.
    async fn upload(&self, tag: &str, file: BatchFile) -> Result<String, TeacherError> {
        let boundary = format!("reasonrec-{}", uuid::Uuid::new_v4().simple());
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"reasonrec-{tag}.jsonl\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let (body, len) = file.into_body(head.into_bytes(), tail.into_bytes()).await?;
        let req = self
            .client
            .http()
            .post(format!("{}/files", self.base))
            .timeout(TRANSFER_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
        let (status, text) = self.client.exchange(self.client.authorized(req), OBJECT_LIMIT).await?;
        #[derive(Deserialize)]
        struct FileObject {
            id: String,
        }
        let f: FileObject = serde_json::from_str(&text).map_err(|e| malformed(status, &e))?;
        Ok(f.id)
    }

    /// The batch as the provider has it now.
    pub async fn retrieve(&self, id: &str) -> Result<ProviderBatch, TeacherError> {
        let req = self.client.http().get(format!("{}/{}", self.batches_url(), id));
        let (status, text) = self.client.exchange(self.client.authorized(req), OBJECT_LIMIT).await?;
        self.parse_batch(status, &text)
    }

    /// Asks the provider to cancel; lines that finished meanwhile still come back with results.
    pub async fn cancel(&self, id: &str) -> Result<ProviderBatch, TeacherError> {
        let req = self.client.http().post(format!("{}/{}/cancel", self.batches_url(), id));
        let (status, text) = self.client.exchange(self.client.authorized(req), OBJECT_LIMIT).await?;
        self.parse_batch(status, &text)
    }

    /// The provider's batches of this endpoint's account that may be the one our batch row
    /// `tag` created before its answer was lost: created at or after `since`, newest first.
    /// OpenAI: the one whose metadata names `tag`. Anthropic (no metadata): those not in `known`
    /// (the provider ids our rows hold) with `requests` requests.
    pub async fn find(
        &self,
        tag: &str,
        since: DateTime<Utc>,
        requests: u64,
        known: &HashSet<String>,
    ) -> Result<Vec<ProviderBatch>, TeacherError> {
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) = self.list_page(after.as_deref()).await?;
            let older = page.iter().any(|b| b.created_at < since);
            after = page.last().map(|b| b.id.clone());
            found.extend(page.into_iter().filter(|b| {
                b.created_at >= since
                    && match self.endpoint().protocol {
                        Protocol::OpenAi => b.tag.as_deref() == Some(tag),
                        Protocol::Anthropic => !known.contains(&b.id) && b.requests == Some(requests),
                    }
            }));
            if older || !more || after.is_none() {
                return Ok(found);
            }
        }
    }

    /// One page of the provider's list (newest first) and whether more follow.
    async fn list_page(&self, after: Option<&str>) -> Result<(Vec<ProviderBatch>, bool), TeacherError> {
        let (limit_key, after_key, limit) = match self.endpoint().protocol {
            Protocol::OpenAi => ("limit", "after", "100"),
            Protocol::Anthropic => ("limit", "after_id", "1000"),
        };
        // Provider ids are `[A-Za-z0-9_-]`: nothing to escape.
        let mut url = format!("{}?{limit_key}={limit}", self.batches_url());
        if let Some(a) = after {
            url.push_str(&format!("&{after_key}={a}"));
        }
        let req = self.client.http().get(url);
        let (status, text) = self.client.exchange(self.client.authorized(req), OBJECT_LIMIT).await?;
        #[derive(Deserialize)]
        struct List {
            data: Vec<serde_json::Value>,
            #[serde(default)]
            has_more: bool,
        }
        let list: List = serde_json::from_str(&text).map_err(|e| malformed(status, &e))?;
        let batches =
            list.data.into_iter().map(|v| self.parse_batch(status, &v.to_string())).collect::<Result<Vec<_>, _>>()?;
        Ok((batches, list.has_more))
    }

    /// The results of an ended batch, read a line at a time as they arrive ([`Results::next`]).
    pub fn results(&self, batch: &ProviderBatch) -> Results<'_> {
        let files = match self.endpoint().protocol {
            // Pitfall: an empty string is "no file" as much as null is.
            Protocol::OpenAi => [&batch.output_file_id, &batch.error_file_id]
                .into_iter()
                .flatten()
                .filter(|f| !f.is_empty())
                .map(|f| format!("{}/files/{f}/content", self.base))
                .collect(),
            Protocol::Anthropic => {
                std::iter::once(format!("{}/messages/batches/{}/results", self.base, batch.id)).collect()
            }
        };
        Results { client: self, files, body: None, read: 0, buf: Vec::new(), start: 0 }
    }

    /// One results line in the endpoint's protocol.
    fn result_line(&self, line: &str, estimate: &impl Fn(&str) -> u32) -> Result<ResultLine, TeacherError> {
        match self.endpoint().protocol {
            Protocol::OpenAi => self.openai_line(line, estimate),
            Protocol::Anthropic => self.anthropic_line(line, estimate),
        }
    }

    fn batches_url(&self) -> String {
        match self.endpoint().protocol {
            Protocol::OpenAi => format!("{}/batches", self.base),
            Protocol::Anthropic => format!("{}/messages/batches", self.base),
        }
    }

    fn parse_batch(&self, status: u16, text: &str) -> Result<ProviderBatch, TeacherError> {
        match self.endpoint().protocol {
            Protocol::OpenAi => parse_openai_batch(status, text),
            Protocol::Anthropic => parse_anthropic_batch(status, text),
        }
    }

    /// An OpenAI output or error file line. HTTP failures of a line sit in
    /// `response.status_code` with `error: null`; expired and cancelled lines in `error`.
    fn openai_line(&self, line: &str, estimate: &impl Fn(&str) -> u32) -> Result<ResultLine, TeacherError> {
        #[derive(Deserialize)]
        struct Line {
            custom_id: String,
            response: Option<Response>,
            error: Option<LineError>,
        }
        #[derive(Deserialize)]
        struct Response {
            status_code: u16,
            body: serde_json::Value,
        }
        #[derive(Deserialize)]
        struct LineError {
            code: Option<String>,
            message: Option<String>,
        }
        let l: Line = serde_json::from_str(line).map_err(|e| malformed(200, &e))?;
        let result = match (l.response, l.error) {
            (Some(r), None) if (200..300).contains(&r.status_code) => {
                match self.client.parse_answer(r.status_code, &r.body.to_string(), estimate(&l.custom_id)) {
                    Ok(a) => LineResult::Answer(a),
                    Err(e) => line_error(&e),
                }
            }
            (Some(r), None) => line_error(&self.client.refusal(r.status_code, None, &r.body.to_string())),
            (_, Some(e)) => match e.code.as_deref() {
                Some("batch_expired") => LineResult::Expired,
                Some("batch_cancelled") => LineResult::Canceled,
                code => LineResult::Error {
                    class: ErrorClass::Server,
                    http_status: None,
                    message: format!("{}: {}", code.unwrap_or("error"), e.message.unwrap_or_default()),
                    permanent: false,
                    billed: None,
                },
            },
            (None, None) => LineResult::Error {
                class: ErrorClass::Malformed,
                http_status: None,
                message: "result line without response or error".into(),
                permanent: false,
                billed: None,
            },
        };
        Ok(ResultLine { custom_id: l.custom_id, result })
    }

    /// An Anthropic results line: `succeeded` (a Message), `errored`, `canceled`, `expired`.
    fn anthropic_line(&self, line: &str, estimate: &impl Fn(&str) -> u32) -> Result<ResultLine, TeacherError> {
        #[derive(Deserialize)]
        struct Line {
            custom_id: String,
            result: Outcome,
        }
        #[derive(Deserialize)]
        struct Outcome {
            #[serde(rename = "type")]
            kind: String,
            message: Option<serde_json::Value>,
            error: Option<serde_json::Value>,
        }
        let l: Line = serde_json::from_str(line).map_err(|e| malformed(200, &e))?;
        let result = match (l.result.kind.as_str(), l.result.message) {
            ("succeeded", Some(m)) => match self.client.parse_answer(200, &m.to_string(), estimate(&l.custom_id)) {
                Ok(a) => LineResult::Answer(a),
                Err(e) => line_error(&e),
            },
            ("canceled", _) => LineResult::Canceled,
            ("expired", _) => LineResult::Expired,
            _ => {
                // `{type: "error", error: {type, message}}`; an invalid request fails again.
                let err = l.result.error.unwrap_or_default();
                let kind = err.pointer("/error/type").and_then(|v| v.as_str()).unwrap_or("error").to_string();
                let message = err.pointer("/error/message").and_then(|v| v.as_str()).unwrap_or("").to_string();
                let permanent = kind == "invalid_request_error";
                LineResult::Error {
                    class: if permanent { ErrorClass::BadRequest } else { ErrorClass::Server },
                    http_status: None,
                    message: format!("{kind}: {}", message.chars().take(300).collect::<String>()),
                    permanent,
                    billed: None,
                }
            }
        };
        Ok(ResultLine { custom_id: l.custom_id, result })
    }
}

/// A batch's requests spooled to an anonymous temporary file as they are rendered (deleted
/// when dropped), so that a batch of 200 MB is never held in memory: what is written is what
/// the provider receives, streamed from the file by [`BatchClient::create`].
#[derive(Debug)]
pub struct BatchFile {
    writer: tokio::io::BufWriter<tokio::fs::File>,
    protocol: Protocol,
    lines: u32,
    /// Bytes the provider receives (Anthropic's envelope included).
    bytes: u64,
    max_bytes: u64,
}

impl BatchFile {
    /// Appends one request (from [`BatchClient::encode_line`]). False, and nothing written, when
    /// it would take the file past its size limit; the first line is always taken (a request
    /// too large alone is the provider's to refuse, line by line).
    pub async fn push(&mut self, line: &[u8]) -> std::io::Result<bool> {
        use tokio::io::AsyncWriteExt;
        // OpenAI: a JSONL line and its newline; Anthropic: a comma before every request but the
        // first. Encoded JSON holds no raw newline.
        let added = line.len() as u64 + 1;
        let added = if self.protocol == Protocol::Anthropic && self.lines == 0 { added - 1 } else { added };
        if self.lines > 0 && self.bytes + added > self.max_bytes {
            return Ok(false);
        }
        match self.protocol {
            Protocol::OpenAi => {
                self.writer.write_all(line).await?;
                self.writer.write_all(b"\n").await?;
            }
            Protocol::Anthropic => {
                if self.lines > 0 {
                    self.writer.write_all(b",").await?;
                }
                self.writer.write_all(line).await?;
            }
        }
        self.lines += 1;
        self.bytes += added;
        Ok(true)
    }

    /// Requests written.
    pub fn lines(&self) -> u32 {
        self.lines
    }

    /// Bytes the provider receives for them.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The file between `head` and `tail` as a streamed request body, and its length. A file
    /// that cannot be read back fails the create before anything is sent (a retryable error).
    async fn into_body(self, head: Vec<u8>, tail: Vec<u8>) -> Result<(reqwest::Body, u64), TeacherError> {
        self.stream_between(head, tail).await.map_err(|e| TeacherError::Connect(format!("reading the batch file: {e}")))
    }

    async fn stream_between(self, head: Vec<u8>, tail: Vec<u8>) -> std::io::Result<(reqwest::Body, u64)> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
        let mut writer = self.writer;
        writer.flush().await?;
        let mut file = writer.into_inner();
        let written = file.seek(std::io::SeekFrom::End(0)).await?;
        file.seek(std::io::SeekFrom::Start(0)).await?;
        let len = head.len() as u64 + written + tail.len() as u64;
        let reader = std::io::Cursor::new(head).chain(file).chain(std::io::Cursor::new(tail));
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, SPOOL_BUFFER);
        Ok((reqwest::Body::wrap_stream(stream), len))
    }
}

/// The results of an ended batch, read from the provider a line at a time: only the line being
/// parsed and the piece of the body that holds it are in memory.
pub struct Results<'a> {
    client: &'a BatchClient,
    /// Result files still to read (OpenAI: output then errors; Anthropic: one).
    files: std::collections::VecDeque<String>,
    body: Option<reqwest::Response>,
    /// Bytes read of the current file.
    read: u64,
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts.
    start: usize,
}

impl Results<'_> {
    /// The next result, `None` after the last. `estimate` gives a line's estimated prompt
    /// tokens (by custom id), against which a reported usage is checked as a live answer's is.
    /// An error (a cut connection, a broken line) ends the reading; reading the results again
    /// starts from the first line.
    pub async fn next(&mut self, estimate: &impl Fn(&str) -> u32) -> Result<Option<ResultLine>, TeacherError> {
        loop {
            if let Some(end) = self.buf[self.start..].iter().position(|&b| b == b'\n') {
                let line = &self.buf[self.start..self.start + end];
                self.start += end + 1;
                let text = String::from_utf8_lossy(line);
                if text.trim().is_empty() {
                    continue;
                }
                return self.client.result_line(&text, estimate).map(Some);
            }
            if self.buf.len() - self.start > RESULT_LINE_LIMIT {
                return Err(TeacherError::TooLarge {
                    status: 200,
                    what: "batch result line",
                    limit: RESULT_LINE_LIMIT as u64,
                    billed: None,
                });
            }
            match self.body.as_mut() {
                Some(resp) => match self.client.client.chunk(resp).await? {
                    Some(piece) => {
                        self.read += piece.len() as u64;
                        if self.read > RESULTS_LIMIT {
                            return Err(TeacherError::TooLarge {
                                status: 200,
                                what: "batch results",
                                limit: RESULTS_LIMIT,
                                billed: None,
                            });
                        }
                        self.buf.drain(..self.start);
                        self.start = 0;
                        self.buf.extend_from_slice(&piece);
                    }
                    None => {
                        // A last line without its newline.
                        self.body = None;
                        if self.buf.len() > self.start {
                            self.buf.push(b'\n');
                        }
                    }
                },
                None => {
                    let Some(url) = self.files.pop_front() else { return Ok(None) };
                    let req = self.client.client.http().get(url).timeout(TRANSFER_TIMEOUT);
                    self.body = Some(self.client.client.open(self.client.client.authorized(req), OBJECT_LIMIT).await?);
                    self.read = 0;
                }
            }
        }
    }
}

impl ResultLine {
    /// The line as a row of the cost ledger: an answer at the endpoint's (batch) price, one we
    /// could not use at what it was billed, a failed, expired or cancelled line at none. `id` must be the same each time the line is read, so
    /// that reading the results again records nothing twice.
    pub fn attempt(
        &self,
        endpoint: &EndpointSettings,
        id: uuid::Uuid,
        started_at: DateTime<Utc>,
        duration_ms: i32,
    ) -> AttemptRecord {
        let base = AttemptRecord {
            id,
            endpoint: endpoint.name.clone(),
            model: endpoint.model.clone(),
            started_at,
            duration_ms,
            http_status: None,
            error_class: None,
            error: None,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
        };
        let rec = match &self.result {
            LineResult::Answer(a) => AttemptRecord {
                http_status: Some(i32::from(a.http_status)),
                input_tokens: i32::try_from(a.input_tokens).unwrap_or(i32::MAX),
                output_tokens: i32::try_from(a.output_tokens).unwrap_or(i32::MAX),
                cost_usd: endpoint.cost_usd(&a.usage()),
                ..base
            },
            LineResult::Error { class, http_status, message, billed, .. } => AttemptRecord {
                http_status: http_status.map(i32::from),
                error_class: Some(*class),
                error: Some(message.clone()),
                input_tokens: billed.map_or(0, |u| i32::try_from(u.input).unwrap_or(i32::MAX)),
                output_tokens: billed.map_or(0, |u| i32::try_from(u.output).unwrap_or(i32::MAX)),
                cost_usd: billed.map_or(0.0, |u| endpoint.cost_usd(&u)),
                ..base
            },
            LineResult::Expired => AttemptRecord {
                error_class: Some(ErrorClass::Expired),
                error: Some("the batch's window ended before the line ran".into()),
                ..base
            },
            LineResult::Canceled => AttemptRecord {
                error_class: Some(ErrorClass::Cancelled),
                error: Some("the batch was cancelled before the line ran".into()),
                ..base
            },
        };
        reasonrec_core::metrics::metrics().attempt(&rec);
        rec
    }
}

fn malformed(status: u16, e: &serde_json::Error) -> TeacherError {
    TeacherError::Malformed { status, message: format!("batch API answer: {e}"), billed: None }
}

fn line_error(e: &TeacherError) -> LineResult {
    LineResult::Error {
        class: e.class(),
        http_status: e.http_status(),
        message: e.to_string(),
        permanent: !e.is_retryable(),
        billed: e.billed(),
    }
}

fn parse_openai_batch(status: u16, text: &str) -> Result<ProviderBatch, TeacherError> {
    #[derive(Deserialize)]
    struct Batch {
        id: String,
        status: String,
        created_at: i64,
        input_file_id: Option<String>,
        output_file_id: Option<String>,
        error_file_id: Option<String>,
        request_counts: Option<Counts>,
        metadata: Option<std::collections::HashMap<String, String>>,
        errors: Option<Errors>,
    }
    #[derive(Deserialize)]
    struct Counts {
        total: u64,
    }
    #[derive(Deserialize)]
    struct Errors {
        #[serde(default)]
        data: Vec<BatchError>,
    }
    #[derive(Deserialize)]
    struct BatchError {
        code: Option<String>,
        message: Option<String>,
    }
    let b: Batch = serde_json::from_str(text).map_err(|e| malformed(status, &e))?;
    let phase = match b.status.as_str() {
        "completed" | "expired" | "cancelled" => BatchPhase::Ended,
        "failed" => BatchPhase::Failed,
        _ => BatchPhase::Open,
    };
    let errors = b.errors.filter(|e| !e.data.is_empty()).map(|e| {
        e.data
            .iter()
            .map(|d| format!("{}: {}", d.code.as_deref().unwrap_or("error"), d.message.as_deref().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("; ")
    });
    Ok(ProviderBatch {
        id: b.id,
        status: b.status,
        phase,
        created_at: Utc.timestamp_opt(b.created_at, 0).single().unwrap_or_default(),
        requests: b.request_counts.map(|c| c.total),
        tag: b.metadata.and_then(|m| m.get(TAG_KEY).cloned()),
        input_file_id: b.input_file_id,
        output_file_id: b.output_file_id.filter(|f| !f.is_empty()),
        error_file_id: b.error_file_id.filter(|f| !f.is_empty()),
        errors,
    })
}

fn parse_anthropic_batch(status: u16, text: &str) -> Result<ProviderBatch, TeacherError> {
    #[derive(Deserialize)]
    struct Batch {
        id: String,
        processing_status: String,
        created_at: DateTime<Utc>,
        request_counts: Counts,
    }
    #[derive(Deserialize)]
    struct Counts {
        processing: u64,
        succeeded: u64,
        errored: u64,
        canceled: u64,
        expired: u64,
    }
    let b: Batch = serde_json::from_str(text).map_err(|e| malformed(status, &e))?;
    let c = &b.request_counts;
    let phase = if b.processing_status == "ended" { BatchPhase::Ended } else { BatchPhase::Open };
    Ok(ProviderBatch {
        requests: Some(c.processing + c.succeeded + c.errored + c.canceled + c.expired),
        id: b.id,
        status: b.processing_status,
        phase,
        created_at: b.created_at,
        tag: None,
        input_file_id: None,
        output_file_id: None,
        error_file_id: None,
        errors: None,
    })
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn client(protocol: Protocol) -> BatchClient {
        let ep = EndpointSettings { protocol, ..EndpointSettings::default() };
        BatchClient::new(&ep).expect("client")
    }

    #[test]
    fn lines_carry_the_live_body_and_the_custom_id() {
        let msg = |role: &str, content: &str| ChatMessage { role: role.into(), content: content.into() };
        let msgs = vec![msg("system", "be brief"), msg("user", "why?")];
        let openai: serde_json::Value =
            serde_json::from_slice(&client(Protocol::OpenAi).encode_line("b_1", &msgs)).expect("json");
        assert_eq!(openai["custom_id"], "b_1");
        assert_eq!(openai["url"], "/v1/chat/completions");
        assert_eq!(openai["body"]["messages"][1]["content"], "why?");
        let anthropic: serde_json::Value =
            serde_json::from_slice(&client(Protocol::Anthropic).encode_line("b_1", &msgs)).expect("json");
        assert_eq!(anthropic["params"]["system"], "be brief");
        assert!(anthropic["params"]["max_tokens"].as_u64().is_some());
    }

    #[test]
    fn a_line_whose_answer_cannot_be_used_is_priced_as_billed_and_a_failed_one_at_nothing() {
        let ep = EndpointSettings {
            mode: reasonrec_core::settings::EndpointMode::Batch,
            price_input_per_mtok: 2.0,
            price_output_per_mtok: 8.0,
            ..EndpointSettings::default()
        };
        let c = BatchClient::new(&ep).expect("client");
        let line = |body: &str| c.result_line(body, &|_: &str| 40).expect("a result line");
        let unusable = line(
            r#"{"custom_id":"b_1","response":{"status_code":200,"body":{"choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":500}}}}"#,
        );
        let a = unusable.attempt(&ep, uuid::Uuid::nil(), Utc::now(), 0);
        assert_eq!((a.error_class, a.input_tokens, a.output_tokens), (Some(ErrorClass::Malformed), 1000, 500));
        assert!((a.cost_usd - (1000.0 * 2.0 + 500.0 * 8.0) / 1e6 * 0.5).abs() < 1e-12, "{a:?}");
        let failed = line(r#"{"custom_id":"b_2","error":{"code":"server_error","message":"boom"}}"#);
        let a = failed.attempt(&ep, uuid::Uuid::nil(), Utc::now(), 0);
        assert_eq!((a.input_tokens, a.cost_usd), (0, 0.0), "{a:?}");
    }

    #[tokio::test]
    async fn a_batch_file_counts_what_the_provider_receives_and_stops_at_its_limit() {
        // OpenAI: each line and its newline. Anthropic: `{"requests":[` + `]}` and a comma
        // between requests.
        for (protocol, sizes) in [(Protocol::OpenAi, [41, 82]), (Protocol::Anthropic, [55, 96])] {
            let c = client(protocol);
            let mut f = c.spool(100).await.expect("spool");
            assert!(f.push(&[b'x'; 40]).await.expect("push"));
            assert_eq!(f.bytes(), sizes[0], "{protocol:?}");
            assert!(f.push(&[b'x'; 40]).await.expect("push"));
            assert_eq!(f.bytes(), sizes[1], "{protocol:?}");
            assert!(!f.push(&[b'x'; 40]).await.expect("push"), "{protocol:?}: past the limit");
            assert_eq!((f.lines(), f.bytes()), (2, sizes[1]), "{protocol:?}: nothing written of a refused line");
            let mut alone = c.spool(10).await.expect("spool");
            assert!(alone.push(&[b'x'; 40]).await.expect("push"), "{protocol:?}: a first line is always taken");
        }
    }

    #[test]
    fn openai_lines_of_both_error_shapes_are_told_apart() {
        let c = client(Protocol::OpenAi);
        let est = |_: &str| 10;
        let http = r#"{"id":"r","custom_id":"a","response":{"status_code":500,"body":{"error":{"message":"boom"}}},"error":null}"#;
        assert!(matches!(c.openai_line(http, &est).expect("line").result, LineResult::Error { permanent: false, .. }));
        let expired = r#"{"id":"r","custom_id":"a","response":null,"error":{"code":"batch_expired","message":"x"}}"#;
        assert_eq!(c.openai_line(expired, &est).expect("line").result, LineResult::Expired);
        let bad = r#"{"id":"r","custom_id":"a","response":{"status_code":400,"body":{"error":{"message":"no"}}},"error":null}"#;
        assert!(matches!(c.openai_line(bad, &est).expect("line").result, LineResult::Error { permanent: true, .. }));
    }

    #[test]
    fn anthropic_results_of_every_type() {
        let c = client(Protocol::Anthropic);
        let est = |_: &str| 10;
        let ok = r#"{"custom_id":"a","result":{"type":"succeeded","message":{"id":"m","type":"message","role":"assistant","model":"x","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":1}}}}"#;
        assert!(
            matches!(c.anthropic_line(ok, &est).expect("line").result, LineResult::Answer(ref a) if a.text == "hi")
        );
        let invalid = r#"{"custom_id":"a","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens"}}}}"#;
        assert!(matches!(
            c.anthropic_line(invalid, &est).expect("line").result,
            LineResult::Error { permanent: true, .. }
        ));
        let api = r#"{"custom_id":"a","result":{"type":"errored","error":{"type":"error","error":{"type":"api_error","message":"x"}}}}"#;
        assert!(matches!(
            c.anthropic_line(api, &est).expect("line").result,
            LineResult::Error { permanent: false, .. }
        ));
        for (t, want) in [("canceled", LineResult::Canceled), ("expired", LineResult::Expired)] {
            let l = format!(r#"{{"custom_id":"a","result":{{"type":"{t}"}}}}"#);
            assert_eq!(c.anthropic_line(&l, &est).expect("line").result, want);
        }
    }

    #[test]
    fn batch_objects_of_both_providers() {
        let o = parse_openai_batch(
            200,
            r#"{"id":"batch_1","status":"failed","created_at":1700000000,"input_file_id":"file-1","output_file_id":"","error_file_id":null,"request_counts":{"total":3,"completed":0,"failed":0},"metadata":{"reasonrec_batch":"t"},"errors":{"object":"list","data":[{"code":"token_limit_exceeded","message":"Enqueued token limit reached","line":null}]}}"#,
        )
        .expect("batch");
        assert_eq!((o.phase, o.tag.as_deref(), o.output_file_id.as_deref()), (BatchPhase::Failed, Some("t"), None));
        assert!(o.errors.as_deref().is_some_and(|e| e.starts_with("token_limit_exceeded")));
        let a = parse_anthropic_batch(
            200,
            r#"{"id":"msgbatch_1","type":"message_batch","processing_status":"in_progress","created_at":"2026-12-06T10:00:00Z","request_counts":{"processing":7,"succeeded":0,"errored":0,"canceled":0,"expired":0}}"#,
        )
        .expect("batch");
        assert_eq!((a.phase, a.requests), (BatchPhase::Open, Some(7)));
    }
}
