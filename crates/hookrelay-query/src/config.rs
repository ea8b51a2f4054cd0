//! Query's settings, from `HOOKRELAY_*` variables (see the contract). Reads no tables or
//! subjects.

use hookrelay_runtime::config::Source;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: hookrelay_runtime::Config,
    /// `HOOKRELAY_ADMIN_TOKEN` (required): the operator's credential, every scope and tenant.
    pub admin_token: hookrelay_runtime::auth::AdminToken,
    /// `HOOKRELAY_ALLOW_PRIVATE_TARGETS` (false): endpoints may point at loopback and
    /// private addresses (local work and tests).
    pub allow_private_targets: bool,
    /// `HOOKRELAY_ENCRYPTION_KEY` (and `_PREVIOUS` during a rotation): seals endpoint
    /// secrets and custom header values in `endpoints`; unset = stored in clear.
    pub encryption: std::sync::Arc<hookrelay_runtime::vault::Keyring>,
}

impl Config {
    /// Query's HTTP address when `HOOKRELAY_HTTP_ADDR` is unset.
    pub const DEFAULT_HTTP_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 8081);

    pub fn from_source(src: &Source) -> anyhow::Result<Self> {
        Ok(Self {
            common: hookrelay_runtime::Config::from_source(src, Self::DEFAULT_HTTP_ADDR.into())?,
            admin_token: hookrelay_runtime::auth::AdminToken::new(src.required("HOOKRELAY_ADMIN_TOKEN")?),
            allow_private_targets: src.bool("HOOKRELAY_ALLOW_PRIVATE_TARGETS", false)?,
            encryption: std::sync::Arc::new(hookrelay_runtime::vault::Keyring::from_source(src)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_is_required_and_named() {
        let e = Config::from_source(&Source::from_pairs([])).unwrap_err().to_string();
        assert!(e.contains("HOOKRELAY_ADMIN_TOKEN"), "{e}");
    }

    #[test]
    fn defaults_follow_the_contract() {
        let cfg = Config::from_source(&Source::from_pairs([("HOOKRELAY_ADMIN_TOKEN", "t")])).unwrap();
        assert_eq!(cfg.common.http_addr.to_string(), "127.0.0.1:8081");
        assert!(!cfg.allow_private_targets);
        let e = Config::from_source(&Source::from_pairs([
            ("HOOKRELAY_ADMIN_TOKEN", "t"),
            ("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "maybe"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("HOOKRELAY_ALLOW_PRIVATE_TARGETS"), "{e}");
    }

    #[test]
    fn a_logged_config_does_not_show_the_admin_token() {
        let cfg = Config::from_source(&Source::from_pairs([("HOOKRELAY_ADMIN_TOKEN", "s3cret-token")])).unwrap();
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }
}
