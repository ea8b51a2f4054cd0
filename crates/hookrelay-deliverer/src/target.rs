//! Where an attempt may go: an http(s) URL without credentials whose host, unless private
//! targets are allowed, is a public address (`hookrelay_types::address`). IP literals are
//! checked here before any request (reqwest never asks a resolver about them); names by
//! [`Resolver`], which is reqwest's only resolver: it refuses a name if any of its
//! addresses is not public and hands reqwest exactly the addresses it vetted, so the
//! connection goes where the check looked (no second lookup, no DNS rebinding). Reads no
//! subjects or tables.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use hookrelay_types::address::{NonPublic, non_public};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// An address an endpoint may not reach; its text is the attempt's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Blocked {
    #[error("blocked: {ip} is {kind}")]
    Literal { ip: IpAddr, kind: NonPublic },
    #[error("blocked: {host} resolves to {ip}, {kind}")]
    Resolved { host: String, ip: IpAddr, kind: NonPublic },
}

/// A name that did not resolve; its text is the attempt's error.
#[derive(Debug, thiserror::Error)]
#[error("dns error: {0}")]
pub(crate) struct DnsError(pub(crate) String);

/// Why a URL cannot be attempted at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadTarget {
    #[error("invalid url: {0}")]
    Invalid(String),
    #[error("unsupported url scheme `{0}` (http or https)")]
    Scheme(String),
    #[error("invalid url: it carries a username or password")]
    Userinfo,
    #[error(transparent)]
    Blocked(#[from] Blocked),
}

/// An endpoint URL as logs and traces show it: without credentials, query or fragment,
/// where receivers often put tokens.
pub(crate) fn redacted(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            // Setting them can only fail for URLs that cannot have them: nothing to hide.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// Parses an endpoint URL and, unless `allow_private`, refuses an IP-literal host that is
/// not public (names are checked when they resolve).
pub(crate) fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, BadTarget> {
    let url = url::Url::parse(raw).map_err(|e| BadTarget::Invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BadTarget::Scheme(url.scheme().to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(BadTarget::Userinfo);
    }
    let ip = match url.host() {
        None | Some(url::Host::Domain("")) => return Err(BadTarget::Invalid("the url has no host".into())),
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(url::Host::Domain(_)) => return Ok(url),
    };
    match non_public(ip) {
        Some(kind) if !allow_private => Err(Blocked::Literal { ip, kind }.into()),
        _ => Ok(url),
    }
}

/// Fixed answers for names, consulted before the system resolver: how tests point a name at
/// an address without DNS (`Config::dns_overrides`). Empty in production.
pub type DnsOverrides = HashMap<String, Vec<IpAddr>>;

/// reqwest's resolver: looks a name up (in the overrides, else the system resolver) and,
/// unless `allow_private`, refuses it if any answer is not public. Its failures are
/// [`DnsError`] and [`Blocked`], so an attempt can name them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Resolver {
    pub(crate) allow_private: bool,
    pub(crate) overrides: Arc<DnsOverrides>,
}

impl Resolver {
    async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, DnsError> {
        if let Some(ips) = self.overrides.get(&host.to_ascii_lowercase()) {
            return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect());
        }
        let found = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| DnsError(format!("{host}: {e}")))?;
        Ok(found.collect())
    }

    /// The addresses to connect to: all of them vetted, or an error.
    pub(crate) async fn vetted(&self, host: &str) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let addrs = self.lookup(host).await?;
        if addrs.is_empty() {
            return Err(DnsError(format!("{host}: no addresses")).into());
        }
        if !self.allow_private {
            // One bad answer refuses the name: a resolver could hand out either.
            if let Some((ip, kind)) = addrs.iter().find_map(|a| non_public(a.ip()).map(|k| (a.ip(), k))) {
                return Err(Blocked::Resolved {
                    host: host.to_owned(),
                    ip,
                    kind,
                }
                .into());
            }
        }
        Ok(addrs)
    }
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.vetted(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_logs_lose_credentials_query_and_fragment() {
        assert_eq!(
            redacted("https://user:pw@hooks.example.com:8443/in?token=s3cret#x"),
            "https://hooks.example.com:8443/in"
        );
        assert_eq!(redacted("http://127.0.0.1:9/ok"), "http://127.0.0.1:9/ok");
        assert_eq!(redacted("not a url"), "(not a URL)");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn resolver(allow_private: bool, entries: &[(&str, &[&str])]) -> Resolver {
        let overrides = entries
            .iter()
            .map(|(name, ips)| ((*name).to_owned(), ips.iter().map(|s| ip(s)).collect()))
            .collect();
        Resolver {
            allow_private,
            overrides: Arc::new(overrides),
        }
    }

    #[test]
    fn literal_hosts_are_checked_before_any_request() {
        assert_eq!(
            check_url("http://127.0.0.1:8080/hook", false).unwrap_err().to_string(),
            "blocked: 127.0.0.1 is a loopback address"
        );
        assert_eq!(
            check_url("http://[::1]/hook", false).unwrap_err().to_string(),
            "blocked: ::1 is a loopback address"
        );
        assert_eq!(
            check_url("http://169.254.169.254/latest/meta-data", false)
                .unwrap_err()
                .to_string(),
            "blocked: 169.254.169.254 is a link-local address"
        );
        assert_eq!(
            check_url("http://10.0.0.1/", false).unwrap_err(),
            BadTarget::Blocked(Blocked::Literal {
                ip: ip("10.0.0.1"),
                kind: NonPublic::Private
            })
        );
        // Other spellings of an address are parsed to it first, then judged.
        for (url, ip) in [
            ("http://2130706433/", "127.0.0.1"),
            ("http://0x7f.1/", "127.0.0.1"),
            ("http://0177.0.0.1/", "127.0.0.1"),
            ("http://[::ffff:a9fe:a9fe]/", "::ffff:169.254.169.254"),
            ("http://[0:0:0:0:0:0:0:1]/", "::1"),
        ] {
            let error = check_url(url, false).unwrap_err().to_string();
            assert!(error.starts_with(&format!("blocked: {ip} is a ")), "{url}: {error}");
        }
        assert!(check_url("http://127.0.0.1:8080/hook", true).is_ok());
        assert!(check_url("https://8.8.8.8/hook", false).is_ok());
        assert!(check_url("https://hooks.example.com/x", false).is_ok());
    }

    #[test]
    fn only_http_and_https_without_credentials() {
        for (url, want) in [
            ("ftp://example.com/", "unsupported url scheme `ftp` (http or https)"),
            ("file:///etc/passwd", "unsupported url scheme `file` (http or https)"),
            (
                "https://user:pw@example.com/",
                "invalid url: it carries a username or password",
            ),
            (
                "https://user@example.com/",
                "invalid url: it carries a username or password",
            ),
            (
                "https://:pw@example.com/",
                "invalid url: it carries a username or password",
            ),
        ] {
            assert_eq!(check_url(url, true).unwrap_err().to_string(), want, "{url}");
        }
        assert!(matches!(check_url("not a url", true), Err(BadTarget::Invalid(_))));
    }

    #[tokio::test]
    async fn a_name_with_any_non_public_answer_is_refused() {
        let r = resolver(
            false,
            &[
                ("example.test", &["93.184.216.34", "10.0.0.1"]),
                ("public.test", &["93.184.216.34", "2606:4700::1111"]),
            ],
        );
        let e = r.vetted("example.test").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "blocked: example.test resolves to 10.0.0.1, a private address"
        );
        assert!(e.downcast_ref::<Blocked>().is_some());
        let ok = r.vetted("public.test").await.unwrap();
        assert_eq!(ok.len(), 2, "every vetted answer is handed on");
        assert_eq!(
            r.vetted("EXAMPLE.test").await.unwrap_err().to_string(),
            "blocked: EXAMPLE.test resolves to 10.0.0.1, a private address",
            "names are case-insensitive"
        );
    }

    #[tokio::test]
    async fn allowing_private_targets_hands_on_private_answers() {
        let r = resolver(true, &[("receiver.test", &["127.0.0.1"])]);
        let got = r.vetted("receiver.test").await.unwrap();
        assert_eq!(got, [SocketAddr::new(ip("127.0.0.1"), 0)]);
    }

    #[tokio::test]
    async fn the_system_resolver_is_vetted_too() {
        let strict = Resolver::default();
        let error = strict.vetted("localhost").await.unwrap_err();
        assert!(
            matches!(
                error.downcast_ref::<Blocked>(),
                Some(Blocked::Resolved {
                    kind: NonPublic::Loopback,
                    ..
                })
            ),
            "{error}"
        );
        let lax = Resolver {
            allow_private: true,
            ..Resolver::default()
        };
        assert!(lax.vetted("localhost").await.is_ok());
    }

    #[tokio::test]
    async fn names_that_do_not_resolve_are_dns_errors() {
        let lax = Resolver {
            allow_private: true,
            ..Resolver::default()
        };
        let error = lax.vetted("does-not-exist.invalid").await.unwrap_err();
        let dns = error.downcast_ref::<DnsError>().expect("a DnsError");
        assert!(
            dns.to_string().starts_with("dns error: does-not-exist.invalid"),
            "{dns}"
        );
        let empty = resolver(true, &[("empty.test", &[])]);
        assert_eq!(
            empty.vetted("empty.test").await.unwrap_err().to_string(),
            "dns error: empty.test: no addresses"
        );
    }
}
