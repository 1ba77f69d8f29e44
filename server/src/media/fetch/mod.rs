//! Media named by an http(s) URL, fetched without letting a request reach what it should not
//! (server-side request forgery).
//!
//! - Off unless [`UrlPolicy::enabled`]; only `http` and `https`; the host must be in the allowlist
//!   ([`UrlPolicy::allow_hosts`], syntax in `allowlist.rs`) before anything is resolved.
//! - Host names are resolved here, and only public addresses (or ones the allowlist names: the
//!   address, a range holding it, or the exact host name, never a wildcard) are handed to the
//!   connector, which connects to those without a second lookup. IP-literal URLs get the same
//!   address check. Classes of addresses: `address.rs`.
//! - Redirects are followed by hand, up to [`UrlPolicy::max_redirects`], each target checked as
//!   the first URL was; `https` → `http` is refused.
//! - Caps: [`UrlPolicy::max_bytes`] (the declared `Content-Length` first, then the bytes as they
//!   arrive), [`UrlPolicy::timeout`] for everything (every hop's connection, headers and the
//!   body) and [`UrlPolicy::connect_timeout`] per connection.
//!
//! Every failure is [`GitcapError::Media`] on the request field that named the URL, the time cap
//! included: the client chose a URL the server could not fetch within its limits, which is about
//! that field rather than the call's own deadline.
//!
//! TLS: rustls with the ring provider (as tonic's), certificates checked against the system's
//! trust store (`ca-certificates`). HTTP/1.1, no proxy (environment proxies would resolve names
//! out of our sight), no compression, no cookies.

mod address;
mod allowlist;
mod resolver;
mod sink;

#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{header, Response, StatusCode, Url};
use rustls::pki_types::CertificateDer;
use tempfile::NamedTempFile;

use crate::error::{GitcapError, Result};
use allowlist::AllowList;
use resolver::{Refusal, VettingResolver};
use sink::Sink;

// The settings that govern fetching, named in messages so whoever reads one knows what to change.
const SETTING_ENABLED: &str = "media.url.enabled";
const SETTING_ALLOW_HOSTS: &str = "media.url.allow_hosts";
const SETTING_MAX_BYTES: &str = "media.url.max_bytes";
const SETTING_TIMEOUT: &str = "media.url.timeout_secs";
const SETTING_CONNECT_TIMEOUT: &str = "media.url.connect_timeout_secs";
const SETTING_MAX_REDIRECTS: &str = "media.url.max_redirects";

/// URLs longer than this are shortened in messages.
const MAX_URL_CHARS_SHOWN: usize = 200;

/// What may be fetched, and within which limits; read straight from the settings' `[media.url]`
/// table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlPolicy {
    /// Whether media may be named by URL at all.
    pub enabled: bool,
    /// Hosts, wildcards (`*.example.com`), IP addresses and CIDR ranges a URL may name; `*`
    /// alone admits any host that resolves to public addresses. Non-public addresses are
    /// reached only when listed (address or range) or through a host name listed exactly.
    pub allow_hosts: Vec<String>,
    /// The most bytes one URL's body may have.
    pub max_bytes: u64,
    /// The most time for one fetch, redirects and body included.
    #[serde(rename = "timeout_secs", with = "crate::optional_setting::seconds")]
    pub timeout: Duration,
    /// The most time to open one connection (DNS, TCP and TLS).
    #[serde(rename = "connect_timeout_secs", with = "crate::optional_setting::seconds")]
    pub connect_timeout: Duration,
    /// How many redirects are followed; 0 refuses every redirect.
    pub max_redirects: usize,
}

impl Default for UrlPolicy {
    /// Off; when turned on: 256 MiB, 30 s in all, 10 s to connect, 5 redirects.
    fn default() -> Self {
        Self {
            enabled: false,
            allow_hosts: Vec::new(),
            max_bytes: 256 << 20,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_redirects: 5,
        }
    }
}

/// A fetched body, in a temporary file deleted when this is dropped.
#[derive(Debug)]
pub struct Fetched {
    /// The body; the file is positioned at its start.
    pub file: NamedTempFile,
    /// The body's length.
    pub bytes: u64,
    /// The response's `Content-Type`, when it had a readable one.
    pub content_type: Option<String>,
    /// The URL that answered, after redirects.
    pub final_url: String,
}

/// A fetched body held in memory (for small media such as images).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBytes {
    pub body: Vec<u8>,
    /// The response's `Content-Type`, when it had a readable one.
    pub content_type: Option<String>,
    /// The URL that answered, after redirects.
    pub final_url: String,
}

/// Fetches media by URL under a [`UrlPolicy`]. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct UrlFetcher {
    policy: Arc<UrlPolicy>,
    allow: Arc<AllowList>,
    /// `None` when fetching is off (no TLS roots are loaded then).
    client: Option<reqwest::Client>,
    /// Where [`UrlFetcher::fetch`] writes bodies; `None` = the system's temporary directory.
    spool_dir: Option<Arc<Path>>,
}

/// The response headers of the last hop, once a fetch has got past redirects and status checks.
struct Answer {
    response: Response,
    content_type: Option<String>,
    final_url: Url,
}

impl UrlFetcher {
    /// Checks the policy (the error names a bad allowlist entry) and, when fetching is on, builds
    /// the HTTP client with the system's trusted certificates.
    pub fn new(policy: UrlPolicy) -> Result<Self> {
        Self::build(policy, Vec::new())
    }

    fn build(policy: UrlPolicy, extra_roots: Vec<CertificateDer<'static>>) -> Result<Self> {
        let allow =
            AllowList::parse(&policy.allow_hosts).map_err(|why| GitcapError::invalid(SETTING_ALLOW_HOSTS, why))?;
        let allow = Arc::new(allow);
        let client = if policy.enabled {
            check_limits(&policy, &allow)?;
            Some(build_client(&policy, allow.clone(), extra_roots)?)
        } else {
            None
        };
        Ok(Self { policy: Arc::new(policy), allow, client, spool_dir: None })
    }

    /// Writes fetched bodies into `dir` (`media.spool_dir`) rather than the system's temporary
    /// directory; `None` keeps the latter.
    pub fn with_spool_dir(mut self, dir: Option<&Path>) -> Self {
        self.spool_dir = dir.map(Arc::from);
        self
    }

    /// The policy this fetcher enforces.
    pub fn policy(&self) -> &UrlPolicy {
        &self.policy
    }

    /// Fetches `url` into a temporary file. `field` is the request field that named the URL; every
    /// error is [`GitcapError::Media`] on it, with a message saying what to change.
    pub async fn fetch(&self, url: &str, field: &str) -> Result<Fetched> {
        let (answer, sink) = self.fetch_into(url, field, || Sink::temp_file(self.spool_dir.as_deref())).await?;
        let Sink::File(file) = sink else { unreachable!("fetch_into returns the sink it was given") };
        let file = file.finish().await.map_err(|e| temp_file_error(url, e))?;
        let bytes = file.as_file().metadata().map_err(|e| temp_file_error(url, e))?.len();
        Ok(Fetched { file, bytes, content_type: answer.content_type, final_url: answer.final_url.into() })
    }

    /// Fetches `url` into memory, under the same policy and byte cap as [`UrlFetcher::fetch`].
    pub async fn fetch_bytes(&self, url: &str, field: &str) -> Result<FetchedBytes> {
        let (answer, sink) = self.fetch_into(url, field, || Ok(Sink::Memory(Vec::new()))).await?;
        let Sink::Memory(body) = sink else { unreachable!("fetch_into returns the sink it was given") };
        Ok(FetchedBytes { body, content_type: answer.content_type, final_url: answer.final_url.into() })
    }

    async fn fetch_into(
        &self,
        url: &str,
        field: &str,
        new_sink: impl FnOnce() -> std::io::Result<Sink>,
    ) -> Result<(Answer, Sink)> {
        let shown = shorten(url);
        let Some(client) = &self.client else {
            return Err(GitcapError::media(
                field,
                format!(
                    "{shown}: this server does not fetch media by URL; send the bytes instead, or ask its \
                     operator to set {SETTING_ENABLED} = true and list the hosts in {SETTING_ALLOW_HOSTS}"
                ),
            ));
        };
        let work = async {
            let mut answer = self.follow(client, url).await.map_err(|why| GitcapError::media(field, why))?;
            let mut sink = new_sink().map_err(|e| temp_file_error(url, e))?;
            self.read_body(&mut answer.response, &mut sink, field).await?;
            Ok((answer, sink))
        };
        match tokio::time::timeout(self.policy.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(GitcapError::media(
                field,
                format!(
                    "{shown}: not fetched within {}, the limit for URL media ({SETTING_TIMEOUT})",
                    seconds(self.policy.timeout)
                ),
            )),
        }
    }

    /// Requests `url`, following redirects, up to a successful answer's headers. Errors are
    /// messages that start with the URL (and the hop it failed at).
    async fn follow(&self, client: &reqwest::Client, url: &str) -> std::result::Result<Answer, String> {
        let shown = shorten(url);
        let mut current = Url::parse(url).map_err(|e| format!("{shown}: not a valid URL ({e})"))?;
        self.vet(&current).map_err(|why| format!("{shown}: {why}"))?;
        let mut redirects = 0;
        loop {
            let at = Hop { first: &shown, current: (redirects > 0).then_some(&current) };
            let response =
                client.get(current.clone()).send().await.map_err(|e| format!("{at}: {}", self.explain(e)))?;
            let status = response.status();
            if !status.is_redirection() {
                if !status.is_success() {
                    return Err(format!("{at}: the server answered {}", describe_status(status)));
                }
                let content_type = response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty());
                return Ok(Answer { response, content_type, final_url: current });
            }
            let next = redirect_target(&current, &response).map_err(|why| format!("{at}: {why}"))?;
            if redirects == self.policy.max_redirects {
                return Err(format!(
                    "{at}: more than {} redirects ({SETTING_MAX_REDIRECTS}); the next was to {}",
                    self.policy.max_redirects,
                    shorten(next.as_str())
                ));
            }
            self.vet(&next).map_err(|why| format!("{at}: redirected to {}, but {why}", shorten(next.as_str())))?;
            redirects += 1;
            current = next;
        }
    }

    /// The checks a URL passes before any connection: scheme, allowlist and, for an IP literal,
    /// the address (names are vetted by the resolver).
    fn vet(&self, url: &Url) -> std::result::Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("only http and https URLs are fetched, not {}:", url.scheme()));
        }
        let host = url.host().ok_or("the URL has no host")?;
        if !self.allow.admits_host(&host) {
            return Err(format!(
                "the host {host} is not allowed; the server's operator can add it to {SETTING_ALLOW_HOSTS}"
            ));
        }
        let ip = match host {
            url::Host::Domain(_) => return Ok(()),
            url::Host::Ipv4(ip) => ip.into(),
            url::Host::Ipv6(ip) => ip.into(),
        };
        self.allow
            .admits_address(ip, None)
            .map_err(|class| format!("{ip} is {}; add it to {SETTING_ALLOW_HOSTS} to allow it", class.describe()))
    }

    /// Streams the body into `sink`, stopping as soon as it passes the byte cap.
    async fn read_body(&self, response: &mut Response, sink: &mut Sink, field: &str) -> Result<()> {
        let limit = self.policy.max_bytes;
        let shown = shorten(response.url().as_str());
        let too_large = |size: String| {
            let why = format!(
                "{shown}: {size} is larger than the {} limit for URL media ({SETTING_MAX_BYTES})",
                human_bytes(limit)
            );
            GitcapError::media(field, why)
        };
        if let Some(declared) = response.content_length().filter(|&n| n > limit) {
            return Err(too_large(format!("the body ({} declared)", human_bytes(declared))));
        }
        if let (Sink::Memory(bytes), Some(declared)) = (&mut *sink, response.content_length()) {
            bytes.reserve_exact(declared as usize);
        }
        let mut received: u64 = 0;
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|e| GitcapError::media(field, format!("{shown}: the body broke off: {}", error_chain(&e))))?;
            let Some(chunk) = chunk else { return Ok(()) };
            received += chunk.len() as u64;
            if received > limit {
                return Err(too_large("the body".into()));
            }
            sink.write(&chunk).await.map_err(|e| temp_file_error(response.url().as_str(), e))?;
        }
    }

    /// A client error in words: the resolver's refusal when it gave one, else what failed.
    fn explain(&self, error: reqwest::Error) -> String {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if let Some(refusal) = e.downcast_ref::<Refusal>() {
                return refusal.to_string();
            }
            source = e.source();
        }
        if error.is_connect() && error.is_timeout() {
            format!("could not connect within {} ({SETTING_CONNECT_TIMEOUT})", seconds(self.policy.connect_timeout))
        } else if error.is_connect() {
            format!("could not connect: {}", root_cause(&error))
        } else {
            format!("the request failed: {}", root_cause(&error))
        }
    }
}

fn check_limits(policy: &UrlPolicy, allow: &AllowList) -> Result<()> {
    let positive = |name: &str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(GitcapError::invalid(name, "must be greater than zero"))
        }
    };
    positive(SETTING_MAX_BYTES, policy.max_bytes > 0)?;
    positive(SETTING_TIMEOUT, !policy.timeout.is_zero())?;
    positive(SETTING_CONNECT_TIMEOUT, !policy.connect_timeout.is_zero())?;
    if allow.is_empty() {
        return Err(GitcapError::invalid(
            SETTING_ALLOW_HOSTS,
            format!("{SETTING_ENABLED} is true but no host is allowed; list hosts, or `*` for any public host"),
        ));
    }
    Ok(())
}

fn build_client(
    policy: &UrlPolicy,
    allow: Arc<AllowList>,
    extra_roots: Vec<CertificateDer<'static>>,
) -> Result<reqwest::Client> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone()).map_err(|e| {
            GitcapError::FailedPrecondition(format!(
                "{SETTING_ENABLED}: no trusted TLS certificates for https URLs ({e}); install the system's CA \
             certificates (the ca-certificates package)"
            ))
        })?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GitcapError::Internal(format!("TLS for URL media: {e}")))?
        .dangerous() // Only in name: the platform verifier checks certificates fully.
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .dns_resolver(VettingResolver::new(allow))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .http1_only()
        .connect_timeout(policy.connect_timeout)
        .referer(false)
        .user_agent(concat!("gitcap/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| GitcapError::Internal(format!("HTTP client for URL media: {}", error_chain(&e))))
}

/// Where a 3xx answer points; the caller vets it.
fn redirect_target(current: &Url, response: &Response) -> std::result::Result<Url, String> {
    let status = response.status();
    let followed = [
        StatusCode::MOVED_PERMANENTLY,
        StatusCode::FOUND,
        StatusCode::SEE_OTHER,
        StatusCode::TEMPORARY_REDIRECT,
        StatusCode::PERMANENT_REDIRECT,
    ];
    if !followed.contains(&status) {
        return Err(format!("the server answered {}, which is not a redirect to follow", describe_status(status)));
    }
    let location = response
        .headers()
        .get(header::LOCATION)
        .ok_or_else(|| format!("the server answered {} without a Location", describe_status(status)))?;
    let location = location.to_str().map_err(|_| "the redirect's Location is not readable text")?;
    next_hop(current, location)
}

/// `location` resolved against `current`; a step down from https to http is refused.
fn next_hop(current: &Url, location: &str) -> std::result::Result<Url, String> {
    let next = current.join(location).map_err(|e| format!("the redirect's Location is not a valid URL ({e})"))?;
    if current.scheme() == "https" && next.scheme() == "http" {
        return Err(format!("redirected from https to plain http ({}), which is refused", shorten(next.as_str())));
    }
    Ok(next)
}

/// Where a fetch is, for messages: the URL asked for, and the hop when a redirect led elsewhere.
struct Hop<'a> {
    first: &'a str,
    current: Option<&'a Url>,
}

impl std::fmt::Display for Hop<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.current {
            Some(current) => write!(f, "{} (redirected to {})", self.first, shorten(current.as_str())),
            None => f.write_str(self.first),
        }
    }
}

fn describe_status(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// An error and its causes, without repeats ("error sending request: client error (Connect):
/// tcp connect error: Connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// The innermost cause ("Connection refused (os error 111)", "invalid peer certificate:
/// UnknownIssuer"), which says more than the client's own wrapping of it.
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

/// A failure to store a body is the server's (a full or unwritable temporary directory).
fn temp_file_error(url: &str, error: std::io::Error) -> GitcapError {
    GitcapError::Internal(format!("storing the body of {} in a temporary file: {error}", shorten(url)))
}

fn shorten(url: &str) -> String {
    match url.char_indices().nth(MAX_URL_CHARS_SHOWN) {
        Some((cut, _)) => format!("{}…", &url[..cut]),
        None => url.to_string(),
    }
}

/// `bytes` for people: "900 bytes", "64 KiB", "1.5 MiB", "64 MiB".
fn human_bytes(bytes: u64) -> String {
    let (value, unit) = match bytes {
        0..1024 => return format!("{bytes} bytes"),
        1024..0x10_0000 => (bytes as f64 / 1024.0, "KiB"),
        _ => (bytes as f64 / 1048576.0, "MiB"),
    };
    if value >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

fn seconds(duration: Duration) -> String {
    format!("{} s", duration.as_secs_f64())
}
