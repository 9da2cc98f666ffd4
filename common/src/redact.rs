//! Secrets out of what otter shows: URLs in job records, status, logs and error messages lose their userinfo
//! (`user:password@`) and their query string (pre-signed links carry their signature and credential there), and
//! keep scheme, host, port and path, which is what an operator needs to tell one download from another.

/// What replaces a removed part.
pub const REDACTED: &str = "REDACTED";

/// `url` without userinfo and with its query string replaced: `https://u:p@h/x?sig=1#f` becomes
/// `https://REDACTED@h/x?REDACTED`. Text that is not an absolute URL (a path, `-`) comes back unchanged.
pub fn url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_owned() };
    let scheme = &url[..scheme_end];
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
        return url.to_owned();
    }
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rfind('@') {
        Some(at) => format!("{REDACTED}@{}", &authority[at + 1..]),
        None => authority.to_owned(),
    };
    let tail = tail.split('#').next().unwrap_or_default();
    let tail = match tail.split_once('?') {
        Some((path, _)) => format!("{path}?{REDACTED}"),
        None => tail.to_owned(),
    };
    format!("{scheme}://{host}{tail}")
}

/// `text` (an error message, a log line) with every URL in it redacted as [`url`] does. A URL runs from its
/// scheme to the next whitespace, quote or closing bracket, without trailing `:`, `,`, `.` or `;`.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        // The scheme: the letters right before "://".
        let start = rest[..pos].rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c))).map_or(0, |i| i + 1);
        let end =
            rest[pos..].find(|c: char| c.is_whitespace() || "\"'<>)]}`".contains(c)).map_or(rest.len(), |e| pos + e);
        // Punctuation that ends a sentence or introduces a cause ("url: error") is not part of the URL.
        let end = pos + rest[pos..end].trim_end_matches([':', ',', '.', ';']).len().max(3);
        out.push_str(&rest[..start]);
        out.push_str(&url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_query_go_scheme_host_path_stay() {
        assert_eq!(
            url("https://u:p@h.example:8443/a/b.otter?X-Sig=abc&exp=1#frag"),
            "https://REDACTED@h.example:8443/a/b.otter?REDACTED"
        );
        assert_eq!(url("http://h/a"), "http://h/a");
        assert_eq!(url("http://h?token=1"), "http://h?REDACTED");
        assert_eq!(url("/var/lib/x.otter"), "/var/lib/x.otter");
        assert_eq!(url("-"), "-");
    }

    #[test]
    fn every_url_in_a_message() {
        let m = "cannot read https://tok@s/d/1?sig=zz: connection reset; retried \"http://h/x?k=v\" (twice)";
        assert_eq!(
            text(m),
            "cannot read https://REDACTED@s/d/1?REDACTED: connection reset; retried \"http://h/x?REDACTED\" (twice)"
        );
        assert_eq!(text("no url here"), "no url here");
    }
}
