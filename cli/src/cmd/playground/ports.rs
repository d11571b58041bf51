//! Ports for a playground's processes: the wanted ones when they are free,
//! otherwise a free one the OS picks (bind to port 0).
//!
//! A port is tried by binding 127.0.0.1:PORT and letting go at once; the
//! child binds it a moment later. Another program could take it in between
//! — the child then fails to start and says so in its log — but the common
//! case, a port held by a long-running service (a local etcd, a second
//! playground), is caught here.

use std::collections::HashSet;
use std::net::TcpListener;

use anyhow::bail;

/// A port given for a purpose, and the one that was wanted for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pick {
    /// What it is for ("placement 1 gRPC").
    pub what: String,
    /// The port the layout asked for (None: any free port).
    pub wanted: Option<u16>,
    /// The port given.
    pub port: u16,
}

impl Pick {
    /// Whether the wanted port was taken and another one given.
    pub fn fell_back(&self) -> bool {
        self.wanted.is_some_and(|w| w != self.port)
    }
}

/// Hands out ports, never the same one twice, and never one of the
/// `reserved` (wanted later by the same layout) as a fallback.
pub struct Picker {
    given: HashSet<u16>,
    reserved: HashSet<u16>,
}

/// Tries of port 0 before giving up (each normally succeeds at once).
const MAX_TRIES: usize = 1000;

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

impl Picker {
    /// A picker that keeps `reserved` for their own turn.
    pub fn new(reserved: impl IntoIterator<Item = u16>) -> Picker {
        Picker { given: HashSet::new(), reserved: reserved.into_iter().collect() }
    }

    /// `wanted` if it is free, otherwise a free port from the OS.
    pub fn pick(&mut self, what: &str, wanted: Option<u16>) -> anyhow::Result<Pick> {
        if let Some(w) = wanted {
            if !self.given.contains(&w) && bindable(w) {
                self.given.insert(w);
                return Ok(Pick { what: what.to_string(), wanted, port: w });
            }
        }
        for _ in 0..MAX_TRIES {
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr())?.port();
            if !self.given.contains(&port) && !self.reserved.contains(&port) {
                self.given.insert(port);
                return Ok(Pick { what: what.to_string(), wanted, port });
            }
        }
        bail!("no free loopback port for {what} after {MAX_TRIES} tries")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_falls_back_to_a_free_one() {
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken = held.local_addr().expect("addr").port();
        let mut p = Picker::new([taken]);
        let pick = p.pick("placement 1 gRPC", Some(taken)).expect("a port");
        assert!(pick.fell_back() && pick.port != taken, "{pick:?}");
        assert!(TcpListener::bind(("127.0.0.1", pick.port)).is_ok(), "the fallback is free");
    }

    #[test]
    fn a_free_wanted_port_is_kept_and_never_given_twice() {
        let free = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut p = Picker::new([free]);
        let first = p.pick("a", Some(free)).expect("a port");
        assert_eq!((first.port, first.fell_back()), (free, false));
        let second = p.pick("b", Some(free)).expect("a port");
        assert_ne!(second.port, free, "the same port twice");
        assert!(second.fell_back());
    }
}
