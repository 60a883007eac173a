//! Omneo: the typed client of the tenant's Admin and ID APIs, and its models (omneo.md).

mod client;
pub mod models;

pub use client::OmneoClient;

use url::{Host, Url};

/// A base URL the Omneo client refuses to send a tenant's token to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the Omneo API URL must be https (http only for a loopback address, as in local runs and tests)"
)]
pub struct InsecureUrl;

/// The outbound HTTP policy for a tenant's Omneo base URL: `https`, or `http` to a loopback
/// address (`localhost`, `127.0.0.0/8`, `::1`) for the local stack and the tests.
pub fn check_base_url(url: &Url) -> Result<(), InsecureUrl> {
    let loopback = match url.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(InsecureUrl),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omneo_urls_must_be_https_unless_loopback() {
        for good in [
            "https://api.acme.getomneo.com",
            "http://127.0.0.1:9000/acme",
            "http://localhost:8082",
            "http://[::1]:80",
        ] {
            assert_eq!(check_base_url(&good.parse().unwrap()), Ok(()), "{good}");
        }
        for bad in [
            "http://api.acme.getomneo.com",
            "http://10.0.0.8",
            "http://localhost.evil.example",
            "ftp://127.0.0.1",
        ] {
            assert_eq!(
                check_base_url(&bad.parse().unwrap()),
                Err(InsecureUrl),
                "{bad}"
            );
        }
    }
}
