//! Whether an address names this machine: one rule for a bind address (`127.0.0.1:9465`), a
//! `Host` header (`localhost:9465`) and a URL's host (`[::1]`).

/// True for `localhost`, 127.0.0.0/8 and `::1`, with or without a port and IPv6 brackets.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => match host.rsplit_once(':') {
            // One colon and digits after it: a port. More colons: a bare IPv6 address.
            Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        },
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_binds_hosts_and_url_hosts() {
        for ok in
            ["127.0.0.1:9464", "[::1]:9464", "localhost:9464", "localhost", "LOCALHOST:1", "127.1.2.3", "[::1]", "::1"]
        {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "0.0.0.0:9464",
            "10.0.0.5:80",
            "evil.example:9465",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "",
            "[::2]:1",
            "::2",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
