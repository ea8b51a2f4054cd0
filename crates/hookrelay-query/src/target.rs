//! Where an endpoint may point, checked when it is written: an http(s) URL with a host and
//! no credentials and, unless private targets are allowed, no IP-literal host that is not
//! public. Names are judged again by the deliverer when they resolve. Reads no tables or
//! subjects.

use std::net::IpAddr;

use hookrelay_types::address::is_public;

use hookrelay_types::Invalid;

pub(crate) const MAX_URL_LEN: usize = 2048;

fn bad(message: impl Into<String>) -> Invalid {
    Invalid::new("invalid_url", format!("url: {}", message.into()))
}

/// The URL as it will be stored (normalised by the `url` crate).
pub(crate) fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, Invalid> {
    check_target(raw, allow_private, &["http", "https"])
}

/// A NATS server's URL (`nats://host:port`), by the same rules as an HTTP target's.
pub(crate) fn check_nats_url(raw: &str, allow_private: bool) -> Result<url::Url, Invalid> {
    check_target(raw, allow_private, &["nats"])
}

fn check_target(raw: &str, allow_private: bool, schemes: &[&str]) -> Result<url::Url, Invalid> {
    if raw.len() > MAX_URL_LEN {
        return Err(bad(format!("is longer than {MAX_URL_LEN} characters")));
    }
    let url = url::Url::parse(raw).map_err(|e| bad(format!("`{raw}` is not a valid URL ({e})")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(bad(format!(
            "scheme `{}` is not allowed: use {}",
            url.scheme(),
            schemes.join(" or ")
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry a username or password"));
    }
    let ip = match url.host() {
        None => return Err(bad("needs a host")),
        Some(url::Host::Domain("")) => return Err(bad("needs a host")),
        Some(url::Host::Domain(_)) => None,
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
    };
    if let Some(ip) = ip.filter(|ip| !allow_private && !is_public(*ip)) {
        return Err(bad(format!("{ip} is not a public address")));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_and_no_credentials_pass() {
        assert!(check_url("https://example.com/hooks?x=1", false).is_ok());
        assert!(check_url("http://example.com:8080/", false).is_ok());
        for bad in [
            "not a url",
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://user:pw@example.com/",
            "https://user@example.com/",
            "mailto:a@example.com",
        ] {
            let e = check_url(bad, false).unwrap_err();
            assert_eq!(e.code, "invalid_url", "{bad}");
            assert!(e.message.starts_with("url: "), "{}", e.message);
        }
        assert!(check_url(&format!("https://example.com/{}", "a".repeat(MAX_URL_LEN)), false).is_err());
    }

    #[test]
    fn private_literals_are_refused_unless_allowed() {
        for private in [
            "http://127.0.0.1/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:10.0.0.1]/",
        ] {
            assert!(check_url(private, false).is_err(), "{private} accepted");
            assert!(check_url(private, true).is_ok(), "{private} refused when allowed");
        }
        assert!(check_url("http://8.8.8.8/", false).is_ok());
        assert!(check_url("http://[2606:4700::1111]/", false).is_ok());
    }
}
