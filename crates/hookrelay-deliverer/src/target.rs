//! Where an attempt may go. Unless private targets are allowed, an endpoint's host must be
//! a public address: IP literals are checked here before any request, names by
//! [`Resolver`] (reqwest never asks a resolver about an IP literal). Reads no subjects or
//! tables.

use std::net::{IpAddr, SocketAddr};

use hookrelay_types::address::is_public;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// An address an endpoint may not reach; its text is the attempt's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target address {0} is not public")]
pub(crate) struct NotPublic(pub(crate) IpAddr);

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
    #[error(transparent)]
    NotPublic(#[from] NotPublic),
}

/// Parses an endpoint URL and, unless `allow_private`, refuses an IP-literal host that is
/// not public (names are checked when they resolve).
pub(crate) fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, BadTarget> {
    let url = url::Url::parse(raw).map_err(|e| BadTarget::Invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BadTarget::Scheme(url.scheme().to_owned()));
    }
    let ip = match url.host() {
        None => return Err(BadTarget::Invalid("the url has no host".into())),
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        Some(url::Host::Domain(_)) => None,
    };
    if let Some(ip) = ip.filter(|ip| !allow_private && !is_public(*ip)) {
        return Err(NotPublic(ip).into());
    }
    Ok(url)
}

/// Resolves with the system resolver and, unless `allow_private`, refuses a name if any of
/// its addresses is not public, so a name cannot smuggle a request to an internal address.
/// Its failures are [`DnsError`] and [`NotPublic`], so an attempt can name them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Resolver {
    pub(crate) allow_private: bool,
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| DnsError(format!("{host}: {e}")))?
                .collect();
            if addrs.is_empty() {
                return Err(DnsError(format!("{host}: no addresses")).into());
            }
            if let Some(bad) = addrs.iter().find(|a| !allow_private && !is_public(a.ip())) {
                return Err(NotPublic(bad.ip()).into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn literal_hosts_are_checked_before_any_request() {
        assert_eq!(
            check_url("http://127.0.0.1:8080/hook", false).unwrap_err().to_string(),
            "target address 127.0.0.1 is not public"
        );
        assert_eq!(
            check_url("http://[::1]/hook", false).unwrap_err().to_string(),
            "target address ::1 is not public"
        );
        assert_eq!(
            check_url("http://10.0.0.1/", false).unwrap_err(),
            BadTarget::NotPublic(NotPublic(ip("10.0.0.1")))
        );
        assert!(check_url("http://127.0.0.1:8080/hook", true).is_ok());
        assert!(check_url("https://8.8.8.8/hook", false).is_ok());
        assert!(check_url("https://hooks.example.com/x", false).is_ok());
        assert!(matches!(
            check_url("ftp://example.com/", true),
            Err(BadTarget::Scheme(_))
        ));
        assert!(matches!(check_url("not a url", true), Err(BadTarget::Invalid(_))));
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused() {
        let strict = Resolver { allow_private: false };
        let error = match strict.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved through the public-only resolver"),
            Err(e) => e,
        };
        let refused = error.downcast_ref::<NotPublic>().expect("a NotPublic error");
        assert!(refused.0.is_loopback());
        let lax = Resolver { allow_private: true };
        assert!(lax.resolve("localhost".parse().unwrap()).await.is_ok());
    }

    #[tokio::test]
    async fn names_that_do_not_resolve_are_dns_errors() {
        let lax = Resolver { allow_private: true };
        let error = match lax.resolve("does-not-exist.invalid".parse().unwrap()).await {
            Ok(_) => panic!("a .invalid name resolved"),
            Err(e) => e,
        };
        let dns = error.downcast_ref::<DnsError>().expect("a DnsError");
        assert!(
            dns.to_string().starts_with("dns error: does-not-exist.invalid"),
            "{dns}"
        );
    }
}
