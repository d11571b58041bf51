//! Following one request through router and storenode: the id it is known
//! by, the headers that carry it, and the `ringkv-timing` header in which a
//! storenode tells the router how long each of its hops took.
//!
//! The id (`request_id` in logs) is chosen at the router: the caller's
//! `ringkv-request-id` when it is a usable id, else the trace id of a valid
//! W3C `traceparent`, else a fresh one. It is returned to the caller in the
//! `ringkv-request-id` response header and sent to the storenode in gRPC
//! metadata on every attempt. It is not the write de-duplication id: a W3C
//! trace id is shared by every request of one trace, so only the caller's
//! own `ringkv-request-id` serves as both (see docs/operations.md).
//!
//! Everything here reads outside input: a malformed header is ignored, never
//! an error or a panic.

use std::fmt::Write as _;
use std::time::Duration;

/// Metadata / HTTP header: the caller's request id, and the id a router
/// answers with.
pub const REQUEST_ID_HEADER: &str = "ringkv-request-id";
/// The W3C Trace Context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Response metadata of a storenode: its hops, Server-Timing style
/// (`queue;dur=0.120, commit;dur=1.300`, milliseconds).
pub const TIMING_HEADER: &str = "ringkv-timing";
/// Longest request id accepted (the storenode's de-dup records cap it too).
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// Whether `id` can serve as a trace id: 1 to 64 visible ASCII characters,
/// so that it fits in gRPC metadata, HTTP headers and one log field as is.
pub fn valid_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES && id.iter().all(|b| b.is_ascii_graphic())
}

/// A fresh id from 16 random bytes: 32 lowercase hex digits, the shape of a
/// W3C trace id.
pub fn id_from_bytes(bytes: [u8; 16]) -> String {
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The trace id of a W3C `traceparent` value
/// (`version-traceid-parentid-flags`, e.g.
/// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`), or `None`
/// if it is malformed: fields of 2, 32, 16 and 2 lowercase hex digits,
/// version `ff` forbidden, trace and parent ids not all zeros. Version 00
/// has exactly these four fields; a later version may append more after a
/// `-`, as the spec asks parsers to accept.
pub fn traceparent_trace_id(value: &str) -> Option<&str> {
    let (head, rest) = (value.get(..55)?, &value[55..]);
    let mut parts = head.split('-');
    let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !lower_hex(version, 2)
        || !lower_hex(trace_id, 32)
        || !lower_hex(parent_id, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    let tail_ok = match version {
        "ff" => false,
        "00" => rest.is_empty(),
        _ => rest.is_empty() || rest.starts_with('-'),
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    (tail_ok && !zero(trace_id) && !zero(parent_id)).then_some(trace_id)
}

/// The id a request is known by: the caller's `ringkv-request-id` when
/// usable, else a valid `traceparent`'s trace id, else `fresh()`.
pub fn choose_request_id(
    request_id: Option<&[u8]>,
    traceparent: Option<&[u8]>,
    fresh: impl FnOnce() -> String,
) -> String {
    if let Some(id) = request_id.filter(|id| valid_request_id(id)) {
        return String::from_utf8_lossy(id).into_owned();
    }
    let traced = traceparent.and_then(|v| std::str::from_utf8(v).ok()).and_then(traceparent_trace_id);
    traced.map_or_else(fresh, str::to_string)
}

/// One hop of a request and how long it took.
#[derive(Clone, Debug, PartialEq)]
pub struct Hop {
    /// What the hop was (`queue`, `commit`, `apply`, `read_index`, `read`,
    /// `total`; or the router's `route`, `attemptN`, `backoff`).
    pub name: String,
    /// How long it took, in milliseconds.
    pub ms: f64,
}

/// Whether `s` is a hop name: a non-empty token of letters, digits, `_`,
/// `.` and `-` (so that the header splits unambiguously).
fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Formats hops as `name;dur=MS, ...` (milliseconds, three decimals).
/// Names must be tokens (see [`Hop::name`]); others are left out.
pub fn format_timing<'a>(hops: impl IntoIterator<Item = (&'a str, Duration)>) -> String {
    let mut s = String::new();
    for (name, d) in hops.into_iter().filter(|(n, _)| valid_name(n)) {
        if !s.is_empty() {
            s.push_str(", ");
        }
        let _ = write!(s, "{name};dur={:.3}", d.as_secs_f64() * 1000.0);
    }
    s
}

/// Parses a `ringkv-timing` value. Tolerant: entries that are not
/// `name;dur=MS` with a token name and a finite, non-negative duration are
/// skipped, other parameters (`;node=2`) ignored; a value with nothing
/// usable gives no hops.
pub fn parse_timing(value: &str) -> Vec<Hop> {
    value
        .split(',')
        .filter_map(|entry| {
            let mut params = entry.trim().split(';');
            let name = params.next()?.trim();
            if !valid_name(name) {
                return None;
            }
            let ms = params.find_map(|p| p.trim().strip_prefix("dur="))?.parse::<f64>().ok()?;
            (ms.is_finite() && ms >= 0.0).then(|| Hop { name: name.to_string(), ms })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_gives_its_trace_id() {
        assert_eq!(traceparent_trace_id(VALID), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(
            traceparent_trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            "unsampled is still a trace"
        );
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever";
        assert_eq!(
            traceparent_trace_id(future),
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            "a later version may add fields"
        );
    }

    #[test]
    fn a_traceparent_with_a_wrong_version_is_refused() {
        for v in ["ff", "0g", "0A", "1", "000"] {
            let tp = format!("{v}{}", &VALID[2..]);
            assert_eq!(traceparent_trace_id(&tp), None, "{tp}");
        }
        assert_eq!(traceparent_trace_id(&format!("{VALID}-extra")), None, "version 00 has exactly four fields");
        let future_glued = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_eq!(traceparent_trace_id(future_glued), None);
    }

    #[test]
    fn a_traceparent_with_all_zero_ids_is_refused() {
        assert_eq!(traceparent_trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(traceparent_trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"), None);
    }

    #[test]
    fn a_traceparent_with_bad_hex_is_refused() {
        for tp in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902g7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é1",
        ] {
            assert_eq!(traceparent_trace_id(tp), None, "{tp}");
        }
    }

    #[test]
    fn a_traceparent_with_wrong_lengths_is_refused() {
        for tp in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47361-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b71-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(traceparent_trace_id(tp), None, "{tp:?}");
        }
    }

    #[test]
    fn the_callers_id_wins_then_the_traceparent_then_a_fresh_one() {
        let fresh = || "fresh".to_string();
        assert_eq!(choose_request_id(Some(b"mine-1"), Some(VALID.as_bytes()), fresh), "mine-1");
        assert_eq!(choose_request_id(None, Some(VALID.as_bytes()), fresh), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(choose_request_id(None, Some(b"00-bad"), fresh), "fresh");
        assert_eq!(choose_request_id(None, None, fresh), "fresh");
        for unusable in [&b""[..], b"has space", b"tab\t", &[0xff, 0x41], &[b'a'; 65]] {
            assert_eq!(choose_request_id(Some(unusable), None, fresh), "fresh", "{unusable:?}");
        }
        assert_eq!(choose_request_id(Some(&[b'a'; 64]), None, fresh), "a".repeat(64));
        let id = id_from_bytes([0xab; 16]);
        assert_eq!((id.len(), traceparent_trace_id(&format!("00-{id}-00f067aa0ba902b7-01"))), (32, Some(&*id)));
    }

    #[test]
    fn timings_round_trip_through_the_header() {
        let hops = [
            ("queue", Duration::from_micros(120)),
            ("commit", Duration::from_micros(1300)),
            ("apply", Duration::from_nanos(200_400)),
            ("total", Duration::from_secs(2)),
        ];
        let v = format_timing(hops);
        assert_eq!(v, "queue;dur=0.120, commit;dur=1.300, apply;dur=0.200, total;dur=2000.000");
        let back = parse_timing(&v);
        let names: Vec<&str> = back.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["queue", "commit", "apply", "total"]);
        for (h, (_, d)) in back.iter().zip(hops) {
            assert!((h.ms - d.as_secs_f64() * 1000.0).abs() < 0.001, "{h:?} vs {d:?}");
        }
        assert_eq!(format_timing([("bad name", Duration::ZERO), ("ok", Duration::ZERO)]), "ok;dur=0.000");
        assert_eq!(format_timing([]), "");
    }

    #[test]
    fn a_bad_timing_header_gives_the_hops_it_can_and_never_fails() {
        assert!(parse_timing("").is_empty());
        assert!(parse_timing("garbage").is_empty());
        assert!(parse_timing(",,;;==").is_empty());
        assert!(parse_timing("queue;dur=abc, commit;dur=-1, apply;dur=NaN, x;dur=inf").is_empty());
        let hops = parse_timing("  queue ; dur=0.5 , bad name;dur=1, commit;node=2;dur=1.25;desc=x, apply");
        assert_eq!(
            hops,
            [Hop { name: "queue".into(), ms: 0.5 }, Hop { name: "commit".into(), ms: 1.25 }],
            "good entries survive bad neighbours; unknown parameters are ignored"
        );
    }
}
