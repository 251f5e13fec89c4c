//! Bind addresses in controller-runtime's flag syntax.

use std::fmt;
use std::io;
use std::str::FromStr;

use tokio::net::TcpListener;

/// A `--metrics-bind-address` / `--health-probe-bind-address` value.
///
/// `:8080` listens on every IPv4 interface (`0.0.0.0:8080`), `host:port` and
/// `[v6]:port` on that address, and `0` or the empty string disable the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindAddress {
    /// Do not start the server.
    Disabled,
    /// Listen on `host:port` (`host` may be a name, resolved when binding).
    Listen {
        /// IP address or host name, without IPv6 brackets.
        host: String,
        /// TCP port (0 picks a free one).
        port: u16,
    },
}

/// A bind address that is neither `0`, `:port` nor `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bind address {0:?}: expected \":port\", \"host:port\" or \"0\" to disable")]
pub struct InvalidBindAddress(String);

impl FromStr for BindAddress {
    type Err = InvalidBindAddress;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidBindAddress(s.to_owned());
        let trimmed = s.trim();
        if trimmed.is_empty() || trimmed == "0" {
            return Ok(BindAddress::Disabled);
        }
        let (host, port) = trimmed.rsplit_once(':').ok_or_else(invalid)?;
        let port: u16 = port.parse().map_err(|_| invalid())?;
        let host = if host.is_empty() {
            "0.0.0.0".to_owned()
        } else if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.to_owned()
        } else if host.contains(':') {
            // An unbracketed IPv6 address is ambiguous with the port separator.
            return Err(invalid());
        } else {
            host.to_owned()
        };
        Ok(BindAddress::Listen { host, port })
    }
}

impl fmt::Display for BindAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddress::Disabled => f.write_str("0"),
            BindAddress::Listen { host, port } if host.contains(':') => {
                write!(f, "[{host}]:{port}")
            }
            BindAddress::Listen { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl BindAddress {
    /// Binds the listener, or `None` when disabled.
    pub async fn bind(&self) -> io::Result<Option<TcpListener>> {
        match self {
            BindAddress::Disabled => Ok(None),
            BindAddress::Listen { host, port } => {
                TcpListener::bind((host.as_str(), *port)).await.map(Some)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(host: &str, port: u16) -> BindAddress {
        BindAddress::Listen {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn parses_controller_runtime_syntax() {
        assert_eq!(":8081".parse(), Ok(listen("0.0.0.0", 8081)));
        assert_eq!("127.0.0.1:8080".parse(), Ok(listen("127.0.0.1", 8080)));
        assert_eq!("localhost:0".parse(), Ok(listen("localhost", 0)));
        assert_eq!("[::1]:9090".parse(), Ok(listen("::1", 9090)));
        assert_eq!("0".parse(), Ok(BindAddress::Disabled));
        assert_eq!("".parse(), Ok(BindAddress::Disabled));
        for bad in ["8080", ":http", "::1:80", "host:99999"] {
            assert!(bad.parse::<BindAddress>().is_err(), "{bad}");
        }
        assert_eq!(listen("::1", 9090).to_string(), "[::1]:9090");
        assert_eq!(listen("0.0.0.0", 8081).to_string(), "0.0.0.0:8081");
    }

    #[tokio::test]
    async fn disabled_binds_nothing() {
        assert!(matches!(BindAddress::Disabled.bind().await, Ok(None)));
        let bound = "127.0.0.1:0"
            .parse::<BindAddress>()
            .expect("valid")
            .bind()
            .await
            .expect("bind loopback");
        assert!(bound.is_some());
    }
}
