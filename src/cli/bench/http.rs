//! The load generator's HTTP/1.1 client: plain TCP, one request per connection, SSE
//! `data:` payloads handed over as they arrive.

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub(super) struct Target {
    pub(super) host: String,
    pub(super) port: u16,
}

pub(super) fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = url.strip_prefix("http://").context("the URL must start with http:// (TLS is not supported)")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().with_context(|| format!("bad port in {url}"))?),
        None => (hostport.to_string(), 80),
    };
    Ok(Target { host, port })
}

/// One HTTP/1.1 exchange; calls `on_data` with each SSE `data:` payload as it arrives.
pub(super) async fn post_stream(
    t: &Target,
    path: &str,
    body: &str,
    api_key: Option<&str>,
    mut on_data: impl FnMut(&str),
) -> anyhow::Result<(u16, Option<String>, String)> {
    let stream = TcpStream::connect((t.host.as_str(), t.port)).await?;
    stream.set_nodelay(true)?;
    let mut stream = BufReader::new(stream);
    let auth = api_key.map(|k| format!("authorization: Bearer {k}\r\n")).unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {}:{}\r\ncontent-type: application/json\r\naccept: text/event-stream\r\n{auth}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        t.host,
        t.port,
        body.len()
    );
    stream.get_mut().write_all(req.as_bytes()).await?;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).context("bad status line")?;
    let (mut chunked, mut retry_after, mut length) = (false, None, None);
    loop {
        line.clear();
        stream.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "retry-after" => retry_after = Some(v.to_string()),
                "content-length" => length = v.parse::<usize>().ok(),
                _ => {}
            }
        }
    }
    let mut pending = String::new();
    let mut all = String::new();
    let mut feed = |bytes: &[u8], pending: &mut String, all: &mut String| {
        let text = String::from_utf8_lossy(bytes);
        if status != 200 {
            all.push_str(&text);
            return;
        }
        pending.push_str(&text);
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            for l in event.lines() {
                if let Some(d) = l.strip_prefix("data:") {
                    on_data(d.trim());
                }
            }
        }
    };
    if chunked {
        loop {
            line.clear();
            stream.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).context("bad chunk size")?;
            if size == 0 {
                break;
            }
            let mut buf = vec![0u8; size + 2];
            stream.read_exact(&mut buf).await?;
            feed(&buf[..size], &mut pending, &mut all);
        }
    } else {
        let mut buf = Vec::new();
        match length {
            Some(n) => {
                buf.resize(n, 0);
                stream.read_exact(&mut buf).await?;
            }
            None => {
                stream.read_to_end(&mut buf).await?;
            }
        }
        feed(&buf, &mut pending, &mut all);
        feed(b"\n\n", &mut pending, &mut all);
    }
    Ok((status, retry_after, all))
}

pub(super) async fn get(t: &Target, path: &str) -> anyhow::Result<(u16, Option<String>, String)> {
    let mut stream = TcpStream::connect((t.host.as_str(), t.port)).await?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: {}:{}\r\nconnection: close\r\n\r\n", t.host, t.port);
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("bad response")?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).context("bad status line")?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Ok((status, None, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
