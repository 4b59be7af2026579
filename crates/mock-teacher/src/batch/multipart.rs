//! A `multipart/form-data` body (RFC 7578), read by hand: the parts' names, file names and
//! bytes, borrowed from the body.

/// One part of a form.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Part<'a> {
    pub(super) name: String,
    pub(super) filename: Option<String>,
    pub(super) data: &'a [u8],
}

/// The boundary named by a `Content-Type: multipart/form-data; boundary=…` header.
pub(super) fn boundary(content_type: &str) -> Option<String> {
    let mut params = split_params(content_type).into_iter();
    let kind = params.next()?;
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|p| {
        let (key, value) = p.split_once('=')?;
        key.trim().eq_ignore_ascii_case("boundary").then(|| unquote(value.trim())).filter(|b| !b.is_empty())
    })
}

/// The parts of `body`, delimited by `boundary`; an error says what is wrong with the body.
pub(super) fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut at = find(body, delimiter, 0).ok_or("multipart body without its boundary")? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        if body[at..].starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding after a delimiter, then its CRLF.
        while matches!(body.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        if !body[at..].starts_with(b"\r\n") {
            return Err("multipart delimiter not followed by CRLF".into());
        }
        at += 2;
        let head_end = find(body, b"\r\n\r\n", at).ok_or("multipart part without the end of its headers")?;
        let head = std::str::from_utf8(&body[at..head_end]).map_err(|_| "multipart part headers are not UTF-8")?;
        let data_start = head_end + 4;
        let mut closing = b"\r\n".to_vec();
        closing.extend_from_slice(delimiter);
        let data_end = find(body, &closing, data_start).ok_or("multipart part without a closing boundary")?;
        let (name, filename) = disposition(head).ok_or("multipart part without Content-Disposition: form-data")?;
        parts.push(Part { name, filename, data: &body[data_start..data_end] });
        at = data_end + closing.len();
    }
}

/// `name` and `filename` of a part's `Content-Disposition: form-data; …` header.
fn disposition(head: &str) -> Option<(String, Option<String>)> {
    let value = head.split("\r\n").find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case("content-disposition").then_some(value)
    })?;
    let mut params = split_params(value).into_iter();
    if !params.next()?.eq_ignore_ascii_case("form-data") {
        return None;
    }
    let (mut name, mut filename) = (None, None);
    for p in params {
        let Some((key, value)) = p.split_once('=') else { continue };
        match key.trim().to_ascii_lowercase().as_str() {
            "name" => name = Some(unquote(value.trim())),
            "filename" => filename = Some(unquote(value.trim())),
            _ => {}
        }
    }
    Some((name?, filename))
}

/// A header value split at the `;` outside quotes, each piece trimmed.
fn split_params(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in value.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                current.push(c);
            }
            '\\' if quoted => {
                escaped = true;
                current.push(c);
            }
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ';' if !quoted => out.push(std::mem::take(&mut current).trim().to_string()),
            _ => current.push(c),
        }
    }
    out.push(current.trim().to_string());
    out
}

/// A parameter value without its quotes and escapes.
fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    _ => out.push(c),
                }
            }
            out
        }
        None => value.to_string(),
    }
}

/// The first position of `needle` in `haystack` from `from` on.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut at = from;
    while at + needle.len() <= haystack.len() {
        let next = haystack[at..=haystack.len() - needle.len()].iter().position(|&b| b == first)?;
        at += next;
        if &haystack[at..at + needle.len()] == needle {
            return Some(at);
        }
        at += 1;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_files() {
        let ct = "multipart/form-data; boundary=\"xYz\"";
        let b = boundary(ct).unwrap();
        assert_eq!(b, "xYz");
        let body = b"preamble\r\n--xYz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
--xYz  \r\ncontent-disposition: form-data; name=\"file\"; filename=\"a;b \\\"c\\\".jsonl\"\r\n\
Content-Type: application/jsonl\r\n\r\n{\"a\":1}\r\n--xY\r\n{\"b\":2}\n\r\n--xYz--\r\n";
        let parts = parse(body, &b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], Part { name: "purpose".into(), filename: None, data: b"batch" });
        assert_eq!(parts[1].name, "file");
        assert_eq!(parts[1].filename.as_deref(), Some("a;b \"c\".jsonl"));
        assert_eq!(parts[1].data, b"{\"a\":1}\r\n--xY\r\n{\"b\":2}\n");
    }

    #[test]
    fn refuses_what_is_not_a_form() {
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/form-data"), None);
        assert!(parse(b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nno end", "b").is_err());
        assert!(parse(b"nothing", "b").is_err());
        assert_eq!(parse(b"--b--\r\n", "b").unwrap(), vec![]);
    }
}
