//! Client addresses as index keys: the trail's `address` column, so that a network (CIDR) is
//! one range of keys ([`network_range`]) and a breach report by network reads only that
//! network's entries.
//!
//! A key is the 32 lowercase hex digits of the address's 16 bytes as IPv6, an IPv4 address
//! IPv4-mapped (`::ffff:a.b.c.d`): the hex digits sort as the bytes do, so every address of a
//! network lies between the keys of its first and last address. `""` stands for an entry
//! without a parsable address (it lies in no network).

use std::net::IpAddr;

use ipnet::IpNet;

fn key_of(addr: IpAddr) -> String {
    let v6 = match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    hex::encode(v6.octets())
}

/// The index key of an entry's `source_address` (`""` when absent or not an IP address).
pub fn address_key(source_address: Option<&str>) -> String {
    source_address
        .and_then(|a| a.trim().parse::<IpAddr>().ok())
        .map(key_of)
        .unwrap_or_default()
}

/// The first and last keys of `net`'s addresses (inclusive).
pub fn network_range(net: &IpNet) -> (String, String) {
    (key_of(net.network()), key_of(net.broadcast()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_network_is_the_range_of_its_addresses_keys_and_nothing_else() {
        let net: IpNet = "10.3.7.0/24".parse().unwrap();
        let (lo, hi) = network_range(&net);
        for inside in ["10.3.7.0", "10.3.7.1", "10.3.7.200", "10.3.7.255"] {
            let k = address_key(Some(inside));
            assert!(lo <= k && k <= hi, "{inside}");
        }
        for outside in ["10.3.6.255", "10.3.8.0", "10.30.7.1", "::1", "2001:db8::1"] {
            let k = address_key(Some(outside));
            assert!(!(lo <= k && k <= hi), "{outside}");
        }
        assert_eq!(address_key(None), "");
        assert_eq!(address_key(Some("not an address")), "");
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        let (lo, hi) = network_range(&v6);
        let k = address_key(Some("2001:db8:ffff::9"));
        assert!(lo <= k && k <= hi);
        assert!(!(lo <= address_key(Some("2001:db9::")) && address_key(Some("2001:db9::")) <= hi));
        assert_eq!(
            address_key(Some("127.0.0.1")),
            "00000000000000000000ffff7f000001"
        );
    }
}
