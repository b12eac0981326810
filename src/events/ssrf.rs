//! The guard between an app-supplied callback URL and the network. Callback and intercept URLs
//! come from API callers, so without it hush could be aimed at its own loopback, the private
//! network it runs in, or a cloud metadata endpoint that hands out credentials.
//!
//! Two gates, because reqwest never consults a resolver for an IP-literal host:
//! [`check_url`] refuses bad schemes, credentials and forbidden IP literals, and the
//! [`client`]'s [`GuardedResolver`] checks every address a name resolves to and hands the
//! connector only those checked addresses, so a DNS answer cannot change between the check
//! and the connect (rebinding). Every request must pass both: `check_url`, then `client()`.

use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a callback URL or one of its addresses was refused.
#[derive(Debug, thiserror::Error)]
pub enum SsrfError {
    /// The text is not an absolute URL.
    #[error("not a valid absolute URL")]
    BadUrl(#[source] Box<dyn StdError + Send + Sync>),
    /// Only `https` is allowed; plain `http` only where private targets are allowed too.
    #[error("scheme `{0}` is not allowed; use https")]
    Scheme(String),
    /// `user:password@` would be sent along to the receiver and end up in logs and listings.
    #[error("the URL must not carry a user name or password")]
    Credentials,
    /// A URL such as `https:/path` or `data:` names no host to deliver to.
    #[error("the URL names no host")]
    NoHost,
    /// The URL's host is, or resolves to, an address callbacks must never reach.
    #[error("{0} is {class}, which callbacks may not reach", class = class_of(.0))]
    Forbidden(IpAddr),
    /// The host name did not resolve, or resolved to nothing.
    #[error("cannot resolve `{host}`")]
    Unresolvable {
        host: String,
        #[source]
        source: io::Error,
    },
}

/// Whether a callback must never be delivered to `ip`: loopback, private, link-local, CGNAT,
/// multicast, unspecified, broadcast, reserved, documentation, benchmarking, cloud metadata,
/// and the IPv6 forms that carry one of those IPv4 addresses inside them.
pub fn is_forbidden(ip: IpAddr) -> bool {
    classify(ip).is_some()
}

/// The class named in a refusal; only ever asked about an address that was refused.
fn class_of(ip: &IpAddr) -> &'static str {
    classify(*ip).unwrap_or("an address")
}

/// The class that forbids `ip`, in words for an error message, or `None` when it is allowed.
fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Instance-metadata and platform endpoints. Most fall inside a forbidden range anyway; they
/// are listed on their own so that narrowing a range can never open them, and so that the one
/// that sits in public space (Azure's wire server) is refused at all.
const METADATA: [IpAddr; 6] = [
    // AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle...: the common IMDS address.
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    // AWS ECS task metadata and credentials.
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    // Alibaba Cloud metadata, inside the CGNAT block.
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // Azure wire server: a public address that answers only from inside Azure.
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    // Oracle Cloud metadata.
    IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),
    // AWS IMDS over IPv6 (Nitro instances).
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)),
];

/// Forbidden IPv4 blocks, from the IANA IPv4 Special-Purpose Address Registry (RFC 6890 and
/// its updates) plus multicast and the reserved class E. Blocks the registry marks globally
/// reachable (AS112, AMT, the PCP/TURN anycast addresses) are still not a place a callback
/// receiver lives, but they are public and left alone unless they sit inside a larger block.
const V4_BLOCKS: [([u8; 4], u8, &str); 15] = [
    ([0, 0, 0, 0], 8, "a \"this network\" address (0.0.0.0/8)"),
    ([10, 0, 0, 0], 8, "a private address (RFC 1918)"),
    ([100, 64, 0, 0], 10, "a shared CGNAT address (RFC 6598)"),
    ([127, 0, 0, 0], 8, "a loopback address"),
    ([169, 254, 0, 0], 16, "a link-local address"),
    ([172, 16, 0, 0], 12, "a private address (RFC 1918)"),
    // IETF protocol assignments: DS-Lite, NAT64 discovery, Oracle metadata; not a host.
    ([192, 0, 0, 0], 24, "an IETF protocol address"),
    ([192, 0, 2, 0], 24, "a documentation address"),
    // The deprecated 6to4 relay anycast (RFC 7526): traffic there leaves our control.
    ([192, 88, 99, 0], 24, "a 6to4 relay anycast address"),
    ([192, 168, 0, 0], 16, "a private address (RFC 1918)"),
    ([198, 18, 0, 0], 15, "a benchmarking address (RFC 2544)"),
    ([198, 51, 100, 0], 24, "a documentation address"),
    ([203, 0, 113, 0], 24, "a documentation address"),
    ([224, 0, 0, 0], 4, "a multicast address"),
    // Class E, which also holds the limited broadcast address 255.255.255.255.
    ([240, 0, 0, 0], 4, "a reserved or broadcast address"),
];

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if METADATA.contains(&IpAddr::V4(ip)) {
        return Some("a cloud metadata address");
    }
    let bits = u32::from(ip);
    V4_BLOCKS
        .iter()
        .find(|(net, len, _)| {
            let mask = u32::MAX << (32 - u32::from(*len));
            bits & mask == u32::from_be_bytes(*net) & mask
        })
        .map(|(_, _, class)| *class)
}

/// Whether `ip` lies in `net`/`len`.
fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u32) -> bool {
    let mask = u128::MAX << (128 - len);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// The IPv4 address held in bits `from..from + 32` of `ip`, counting from the most significant.
fn embedded_v4(ip: Ipv6Addr, from: u32) -> Ipv4Addr {
    Ipv4Addr::from((u128::from(ip) >> (96 - from)) as u32)
}

/// An IPv6 prefix given by its first two segments, the rest zero.
const fn net(first: u16, second: u16) -> Ipv6Addr {
    Ipv6Addr::new(first, second, 0, 0, 0, 0, 0, 0)
}

/// Forbidden IPv6 blocks without an IPv4 address inside, from the IANA IPv6 Special-Purpose
/// Address Registry and the address-space registry (ULA, link-local, site-local, multicast).
const V6_BLOCKS: [(Ipv6Addr, u32, &str); 9] = [
    (net(0x100, 0), 64, "a discard-only address (100::/64)"),
    (net(0x2001, 2), 48, "a benchmarking address (2001:2::/48)"),
    (net(0x2001, 0x10), 28, "a deprecated ORCHID address"),
    (net(0x2001, 0xdb8), 32, "a documentation address"),
    (net(0x3fff, 0), 20, "a documentation address"),
    (net(0xfc00, 0), 7, "a unique-local address"),
    (net(0xfe80, 0), 10, "a link-local address"),
    (net(0xfec0, 0), 10, "a site-local address"),
    (net(0xff00, 0), 8, "a multicast address"),
];

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if METADATA.contains(&IpAddr::V6(ip)) {
        return Some("a cloud metadata address");
    }
    if ip.is_unspecified() {
        return Some("the unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    // Forms that carry an IPv4 address are as dangerous as the address they carry: a
    // dual-stack socket connects to ::ffff:a.b.c.d over IPv4, and translators and tunnels
    // (NAT64, 6to4, Teredo) deliver to the embedded address.
    if in_v6(ip, Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96) {
        return classify_v4(embedded_v4(ip, 96))
            .map(|_| "an IPv4-mapped form of a forbidden address");
    }
    if in_v6(ip, Ipv6Addr::UNSPECIFIED, 96) {
        // Deprecated IPv4-compatible form (RFC 4291 section 2.5.5.1).
        return classify_v4(embedded_v4(ip, 96))
            .map(|_| "an IPv4-compatible form of a forbidden address");
    }
    if in_v6(ip, net(0x64, 0xff9b), 96) {
        // NAT64 well-known prefix (RFC 6052): the translator connects to the last 32 bits.
        return classify_v4(embedded_v4(ip, 96)).map(|_| "a NAT64 form of a forbidden address");
    }
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48) {
        // NAT64 local-use prefix (RFC 8215). Where the IPv4 address sits depends on the
        // operator's chosen prefix length, and the registry marks the whole block not
        // globally reachable: it only ever leads into someone's own network.
        return Some("a local-use NAT64 address (64:ff9b:1::/48)");
    }
    if in_v6(ip, net(0x2001, 0), 32) {
        // Teredo (RFC 4380): bits 32..64 are the server, the last 32 bits the client's
        // address with every bit inverted.
        let server = embedded_v4(ip, 32);
        let client = !embedded_v4(ip, 96);
        return (classify_v4(server).is_some() || classify_v4(client).is_some())
            .then_some("a Teredo form of a forbidden address");
    }
    if in_v6(ip, net(0x2002, 0), 16) {
        // 6to4 (RFC 3056): the IPv4 address is bits 16..48.
        return classify_v4(embedded_v4(ip, 16)).map(|_| "a 6to4 form of a forbidden address");
    }
    if let Some((_, _, class)) = V6_BLOCKS.iter().find(|(net, len, _)| in_v6(ip, *net, *len)) {
        return Some(class);
    }
    // IANA hands out global unicast only from 2000::/3; whatever else is left (the rest of
    // ::/8, SRv6 SIDs in 5f00::/16, reserved space) is not somewhere a receiver can live.
    (!in_v6(ip, net(0x2000, 0), 3)).then_some("a non-global IPv6 address")
}

/// Parses a callback URL and refuses what must never be delivered to: a scheme other than
/// `https` (plain `http` too when `allow_private`), credentials in the URL, no host, or an
/// IP-literal host that [`is_forbidden`]. Host names pass here and are checked by
/// [`GuardedResolver`] on every attempt, since their addresses can change.
pub fn check_url(raw: &str, allow_private: bool) -> Result<Url, SsrfError> {
    let url = Url::parse(raw).map_err(|e| SsrfError::BadUrl(Box::new(e)))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        other => return Err(SsrfError::Scheme(other.to_owned())),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(SsrfError::Credentials);
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or(SsrfError::NoHost)?;
    // The URL parser has already normalised odd IPv4 spellings (`2130706433`, `0x7f.1`) to
    // dotted form, so anything that is an address parses here; IPv6 comes in brackets.
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>()
        && !allow_private
        && is_forbidden(ip)
    {
        return Err(SsrfError::Forbidden(ip));
    }
    Ok(url)
}

/// A DNS resolver for callback clients: resolves with the system resolver, checks every
/// address, and refuses the whole name if any one is forbidden, because a name that answers
/// with a mix of public and private addresses is an attack, not a misconfiguration. The
/// addresses it returns are the ones the connector dials, so nothing is re-resolved between
/// the check and the connect.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    allow_private: bool,
}

impl GuardedResolver {
    /// A resolver that refuses forbidden addresses unless `allow_private` (development and
    /// tests, where receivers listen on loopback).
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Collected at once: the iterator borrows `host`, which the errors below take.
            let found = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map(|found| found.collect::<Vec<SocketAddr>>());
            let addrs = match found {
                Ok(addrs) => addrs,
                Err(source) => return Err(SsrfError::Unresolvable { host, source }.into()),
            };
            if addrs.is_empty() {
                let source = io::Error::new(io::ErrorKind::NotFound, "no addresses");
                return Err(SsrfError::Unresolvable { host, source }.into());
            }
            vet(&addrs, allow_private)?;
            // Port 0 is replaced by the URL's port (or the scheme's default) by the connector.
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Accepts a resolved address set only if every address is allowed.
fn vet(addrs: &[SocketAddr], allow_private: bool) -> Result<(), SsrfError> {
    match addrs
        .iter()
        .find(|a| !allow_private && is_forbidden(a.ip()))
    {
        Some(bad) => Err(SsrfError::Forbidden(bad.ip())),
        None => Ok(()),
    }
}

/// An HTTP client for callbacks and intercepts: names go through [`GuardedResolver`],
/// redirects are never followed (a 3xx could point anywhere, and is a failed attempt),
/// proxies from the environment are ignored (a proxy would resolve the name itself, out of
/// the guard's sight), and each request is limited to `timeout`. URLs must still pass
/// [`check_url`] first, since IP-literal hosts never reach the resolver.
///
/// # Panics
/// If the TLS backend cannot be initialised, as `reqwest::Client::new` does.
pub fn client(allow_private: bool, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver::new(allow_private)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        // hush retries deliveries on its own schedule; reqwest's retries are of HTTP/2
        // refusals, which an HTTP/1 client never meets, yet its policy copies every request
        // in case one comes.
        .retry(reqwest::retry::never().max_retries_per_request(0))
        .timeout(timeout)
        .user_agent(concat!("hush/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS backend initialises")
}

/// The guard's refusal inside a failed request, if that is why it failed, so a delivery
/// attempt can be recorded as refused rather than as an unreachable receiver.
pub fn refusal(err: &reqwest::Error) -> Option<&SsrfError> {
    let mut cause: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<SsrfError>() {
            return Some(found);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or_else(|_| panic!("{s} is not an address"))
    }

    #[test]
    fn every_forbidden_class_is_refused() {
        let table = [
            // IPv4
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.254", "private"),
            ("192.168.1.1", "private"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.0.1", "link-local"),
            ("169.254.169.254", "metadata"),
            ("169.254.170.2", "metadata"),
            ("100.100.100.200", "metadata"),
            ("168.63.129.16", "metadata"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.254", "CGNAT"),
            ("192.0.0.8", "IETF protocol"),
            ("192.0.0.192", "metadata"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.254", "benchmarking"),
            ("192.88.99.1", "6to4 relay"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "broadcast"),
            // IPv6
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fd00:ec2::254", "metadata"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("ff05::2", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001:2::1", "benchmarking"),
            ("2001:10::1", "ORCHID"),
            ("100::1", "discard"),
            ("5f00::1", "SRv6"),
            ("::1:2:3:4:5", "reserved ::/8"),
            // IPv4 inside IPv6
            ("::ffff:127.0.0.1", "mapped loopback"),
            ("::ffff:10.0.0.1", "mapped private"),
            ("::ffff:169.254.169.254", "mapped metadata"),
            ("::ffff:0.0.0.0", "mapped unspecified"),
            ("::127.0.0.1", "compatible loopback"),
            ("::10.1.2.3", "compatible private"),
            ("::0.0.0.2", "compatible this-network"),
            ("64:ff9b::127.0.0.1", "NAT64 loopback"),
            ("64:ff9b::a9fe:a9fe", "NAT64 metadata"),
            ("64:ff9b::192.168.0.1", "NAT64 private"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("64:ff9b:1:ffff::8.8.8.8", "local-use NAT64"),
            ("2002:7f00:1::", "6to4 loopback"),
            ("2002:a9fe:a9fe::1", "6to4 metadata"),
            ("2002:c0a8:101::", "6to4 private"),
            ("2002:6440:1::", "6to4 CGNAT"),
            // Teredo: server 65.54.227.120, client 192.0.2.45 (documentation).
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo client"),
            // Teredo with client 127.0.0.1 (inverted: 80ff:fffe).
            ("2001:0:4136:e378::80ff:fffe", "Teredo client"),
            // Teredo with server 10.0.0.1 and a public client 8.8.8.8 (inverted: f7f7:f7f7).
            ("2001:0:a00:1::f7f7:f7f7", "Teredo server"),
        ];
        for (addr, class) in table {
            assert!(is_forbidden(ip(addr)), "{addr} ({class}) must be forbidden");
        }
    }

    #[test]
    fn ordinary_public_addresses_are_allowed() {
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "9.9.9.9",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.254",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            // Teredo: server 65.54.227.120, client 8.8.8.8.
            "2001:0:4136:e378::f7f7:f7f7",
        ] {
            assert!(!is_forbidden(ip(addr)), "{addr} must be allowed");
        }
    }

    #[test]
    fn refusals_name_the_address_and_its_class() {
        let e = SsrfError::Forbidden(ip("::ffff:10.0.0.1"));
        assert_eq!(
            e.to_string(),
            "::ffff:10.0.0.1 is an IPv4-mapped form of a forbidden address, which callbacks \
             may not reach"
        );
        let e = SsrfError::Forbidden(ip("169.254.169.254"));
        assert!(e.to_string().contains("cloud metadata"), "{e}");
    }

    #[test]
    fn check_url_accepts_https_names_and_public_literals() {
        for raw in [
            "https://example.com/hooks",
            "https://example.com:8443/hooks?x=1",
            "https://8.8.8.8/hooks",
            "https://[2606:4700:4700::1111]/hooks",
        ] {
            let url = check_url(raw, false).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(url.as_str(), Url::parse(raw).unwrap().as_str());
        }
    }

    /// What a refusal is expected to be.
    type Expect = fn(&SsrfError) -> bool;

    #[test]
    fn check_url_refuses_what_callbacks_may_not_use() {
        let cases: [(&str, Expect); 14] = [
            ("not a url", |e| matches!(e, SsrfError::BadUrl(_))),
            ("/relative/path", |e| matches!(e, SsrfError::BadUrl(_))),
            ("https://", |e| matches!(e, SsrfError::BadUrl(_))),
            (
                "http://example.com/",
                |e| matches!(e, SsrfError::Scheme(s) if s == "http"),
            ),
            ("ftp://example.com/", |e| matches!(e, SsrfError::Scheme(_))),
            ("file:///etc/passwd", |e| matches!(e, SsrfError::Scheme(_))),
            ("https://user@example.com/", |e| {
                matches!(e, SsrfError::Credentials)
            }),
            ("https://user:pw@example.com/", |e| {
                matches!(e, SsrfError::Credentials)
            }),
            ("https://:pw@example.com/", |e| {
                matches!(e, SsrfError::Credentials)
            }),
            ("https://127.0.0.1/", |e| forbidden(e, "127.0.0.1")),
            ("https://169.254.169.254/latest/meta-data/", |e| {
                forbidden(e, "169.254.169.254")
            }),
            ("https://[::ffff:127.0.0.1]/", |e| {
                forbidden(e, "::ffff:127.0.0.1")
            }),
            ("https://[fd00:ec2::254]/", |e| {
                forbidden(e, "fd00:ec2::254")
            }),
            // Numeric IPv4 spellings are normalised by the parser, so they cannot slip past.
            ("https://2130706433/", |e| forbidden(e, "127.0.0.1")),
        ];
        for (raw, expected) in cases {
            match check_url(raw, false) {
                Ok(url) => panic!("{raw} was accepted as {url}"),
                Err(e) => assert!(expected(&e), "{raw}: unexpected refusal {e:?}"),
            }
        }
        assert!(forbidden(
            &check_url("https://0x7f.1/", false).unwrap_err(),
            "127.0.0.1"
        ));
        assert!(forbidden(
            &check_url("https://[::]/", false).unwrap_err(),
            "::"
        ));
    }

    fn forbidden(e: &SsrfError, addr: &str) -> bool {
        matches!(e, SsrfError::Forbidden(got) if *got == ip(addr))
    }

    #[test]
    fn allow_private_opens_http_and_private_literals_only() {
        for raw in [
            "http://127.0.0.1:8080/hooks",
            "https://10.0.0.5/hooks",
            "http://[::1]:9000/",
            "http://localhost:3000/",
        ] {
            check_url(raw, true).unwrap_or_else(|e| panic!("{raw}: {e}"));
        }
        assert!(matches!(
            check_url("ftp://127.0.0.1/", true),
            Err(SsrfError::Scheme(_))
        ));
        assert!(matches!(
            check_url("http://u:p@127.0.0.1/", true),
            Err(SsrfError::Credentials)
        ));
    }

    #[test]
    fn one_forbidden_address_refuses_the_whole_answer() {
        let mixed = vec![
            SocketAddr::new(ip("8.8.8.8"), 0),
            SocketAddr::new(ip("10.0.0.7"), 0),
            SocketAddr::new(ip("2606:4700:4700::1111"), 0),
        ];
        assert!(matches!(
            vet(&mixed, false),
            Err(SsrfError::Forbidden(a)) if a == ip("10.0.0.7")
        ));
        assert!(vet(&mixed, true).is_ok());
        assert!(vet(&[SocketAddr::new(ip("1.1.1.1"), 0)], false).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_localhost_unless_private_is_allowed() {
        let name = || "localhost".parse::<Name>().unwrap();
        let err = GuardedResolver::new(false)
            .resolve(name())
            .await
            .err()
            .expect("localhost is refused");
        let err = err.downcast::<SsrfError>().expect("an SsrfError");
        assert!(
            matches!(*err, SsrfError::Forbidden(a) if a.is_loopback()),
            "{err:?}"
        );

        let addrs: Vec<SocketAddr> = GuardedResolver::new(true)
            .resolve(name())
            .await
            .expect("localhost resolves")
            .collect();
        assert!(
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()),
            "{addrs:?}"
        );
    }
}
