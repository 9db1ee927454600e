//! The client's address, for the limits that key on it (logins, OAuth2 token requests).
//!
//! Rules it keeps:
//! - **the peer is the client** unless the peer is a configured trusted proxy;
//! - **`X-Forwarded-For` is believed only from trusted proxies**, and only as far as it was
//!   written by them: the list is read from the right (the hop nearest to us) and the first
//!   address that is not itself a trusted proxy is the client. Entries to the left of it were
//!   written by the client and are never used, so a client cannot choose its own bucket;
//! - a malformed entry stops the walk at the last address a trusted proxy vouched for.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The header reverse proxies append the address they received a request from to.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The client address of a request that arrived from `peer`.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(&ip));
    let mut client = peer.to_canonical();
    if !is_trusted(client) {
        return client;
    }
    // Several header lines are one list, in order.
    let lines: Vec<&str> = match headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .map(|v| v.to_str())
        .collect::<Result<_, _>>()
    {
        Ok(lines) => lines,
        Err(_) => return client,
    };
    for entry in lines.iter().rev().flat_map(|line| line.rsplit(',')) {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip.to_canonical();
                if !is_trusted(client) {
                    return client;
                }
            }
            Err(_) => return client,
        }
    }
    client
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let cases = [
            // (peer, X-Forwarded-For lines, client)
            ("10.1.2.3", vec![], "10.1.2.3"),
            ("10.1.2.3", vec!["198.51.100.7"], "198.51.100.7"),
            // The client wrote the left part: only the rightmost untrusted entry counts.
            ("10.1.2.3", vec!["1.2.3.4, 198.51.100.7"], "198.51.100.7"),
            (
                "10.1.2.3",
                vec!["1.2.3.4, 198.51.100.7, 10.9.9.9"],
                "198.51.100.7",
            ),
            ("10.1.2.3", vec!["1.2.3.4", "198.51.100.7"], "198.51.100.7"),
            // Garbage stops the walk at the last trusted hop.
            ("10.1.2.3", vec!["nonsense"], "10.1.2.3"),
            (
                "10.1.2.3",
                vec!["198.51.100.7, nonsense, 10.2.2.2"],
                "10.2.2.2",
            ),
            // An untrusted peer's header is ignored: it cannot pick its bucket.
            ("203.0.113.5", vec!["198.51.100.7"], "203.0.113.5"),
            ("::ffff:203.0.113.5", vec!["198.51.100.7"], "203.0.113.5"),
            ("::1", vec!["2001:db8::9"], "2001:db8::9"),
        ];
        for (peer, lines, want) in cases {
            assert_eq!(
                client_ip(ip(peer), &xff(&lines), &trusted),
                ip(want),
                "{peer} {lines:?}"
            );
        }
        // Without trusted proxies the header never matters.
        assert_eq!(
            client_ip(ip("10.1.2.3"), &xff(&["198.51.100.7"]), &[]),
            ip("10.1.2.3")
        );
    }
}
