//! The client IP that IP allowlists, throttling and the audit log use
//! (SPEC §12): the socket peer, or, when the peer is a trusted proxy, the
//! right-most `X-Forwarded-For` entry that is not itself a trusted proxy.

use std::net::IpAddr;

use hyper::HeaderMap;
use ipnet::IpNet;

pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Walk the chain from the nearest hop outwards; stop at the first
    // untrusted entry. An unparsable entry ends the walk: nothing beyond it
    // can be believed, so the last trusted hop is the best answer.
    let mut nearest = peer;
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|value| value.to_str().unwrap_or("").rsplit(','));
    for entry in entries {
        let Some(ip) = parse_entry(entry) else {
            return nearest;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        nearest = ip;
    }
    nearest
}

/// An `X-Forwarded-For` entry: an address, possibly with a port.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<std::net::SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_the_header_says() {
        let headers = xff(&["1.2.3.4"]);
        assert_eq!(client_ip(ip("9.9.9.9"), &headers, &[]), ip("9.9.9.9"));
    }

    #[test]
    fn trusted_peer_yields_the_rightmost_untrusted_entry() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let headers = xff(&["6.6.6.6, 1.2.3.4", "10.0.0.7"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &headers, &trusted), ip("1.2.3.4"));
    }

    #[test]
    fn all_trusted_or_garbage_falls_back_to_the_nearest_trusted_hop() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(ip("10.0.0.1"), &xff(&["10.0.0.2"]), &trusted), ip("10.0.0.2"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), &xff(&["junk, 10.0.0.3"]), &trusted),
            ip("10.0.0.3")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn mapped_ipv4_and_ports_are_normalised() {
        let trusted = ["127.0.0.1/32".parse().unwrap()];
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &xff(&["5.6.7.8:1234"]), &trusted),
            ip("5.6.7.8")
        );
        assert_eq!(client_ip(ip("::ffff:8.8.8.8"), &HeaderMap::new(), &[]), ip("8.8.8.8"));
    }
}
