//! The clients: register workers (read / write / compare-and-swap over a few
//! keys, so conflicts are frequent) and set workers (each appends unique
//! elements to a few keys with a read + CAS loop). Every operation is
//! recorded with monotonic timestamps from the start of the run:
//! ok = completed, fail = definitely not applied, info = outcome unknown.
//!
//! Register keys are replaced by fresh ones every [`KEY_LIFETIME`] (as
//! Jepsen's `independent` generator does): every key still sees hundreds of
//! contended operations across faults, while each key's history stays small
//! enough for the linearizability search to finish. Set keys are replaced
//! every [`SET_LIFETIME`] so that no value grows without bound.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_client::{Client, Error};

use crate::checker::{Outcome, RegEvent, RegOp, RegResult, SetAdd};

/// Register keys in use at any time.
pub const REGISTER_KEYS: usize = 5;
pub const SET_KEYS: usize = 3;
/// How long a generation of register keys is used.
pub const KEY_LIFETIME: Duration = Duration::from_secs(8);

fn reg_key(generation: u64, i: usize) -> String {
    format!("reg-{generation}-{i}")
}

/// How long a generation of set keys is used: a set's value grows with
/// every element, so keys are replaced before values get large.
pub const SET_LIFETIME: Duration = Duration::from_secs(60);

pub fn set_key(generation: u64, i: usize) -> String {
    format!("set-{generation}-{i}")
}

/// The set generation in use `elapsed` into the run.
pub fn set_generation(elapsed: Duration) -> u64 {
    elapsed.as_secs() / SET_LIFETIME.as_secs()
}

/// Everything the clients observed.
pub struct Recorder {
    pub start: Instant,
    pub registers: Mutex<Vec<RegEvent>>,
    pub sets: Mutex<Vec<SetAdd>>,
    /// Milliseconds (since start) of every acknowledged write.
    pub ok_writes: Mutex<Vec<u64>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Arc<Recorder> {
        Arc::new(Recorder {
            start,
            registers: Mutex::new(Vec::new()),
            sets: Mutex::new(Vec::new()),
            ok_writes: Mutex::new(Vec::new()),
        })
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn ok_write(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.ok_writes.lock().expect("not poisoned").push(ms);
    }
}

/// How a client error counts: definitely not applied, or unknown.
fn outcome_of(e: &Error) -> Outcome {
    match e {
        Error::Ambiguous(_) => Outcome::Info,
        _ => Outcome::Fail,
    }
}

/// A register value as the checker sees it. Only numbers are ever written, so
/// anything else becomes `u64::MAX`, a value no client wrote (an anomaly).
fn parse_value(v: &[u8]) -> u64 {
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
}

/// One register client until `stop`.
pub async fn register_worker(id: u32, client: Client, rec: Arc<Recorder>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64) << 32);
    let mut next_value = (id as u64 + 1) * 1_000_000_000;
    // What this client last saw of each key: the expected value of its CAS.
    let mut last_seen: BTreeMap<String, Option<u64>> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let generation = rec.start.elapsed().as_millis() as u64 / KEY_LIFETIME.as_millis() as u64;
        let key = reg_key(generation, rng.gen_range(0..REGISTER_KEYS));
        if last_seen.keys().next().is_some_and(|k| !k.starts_with(&format!("reg-{generation}-"))) {
            last_seen.clear();
        }
        let roll = rng.gen_range(0..100);
        let op = if roll < 50 {
            RegOp::Read
        } else if roll < 75 {
            next_value += 1;
            RegOp::Write(next_value)
        } else {
            next_value += 1;
            RegOp::Cas { expected: last_seen.get(&key).copied().flatten(), new: next_value }
        };
        let invoke_ns = rec.now_ns();
        let res: Result<RegResult, Error> = match &op {
            RegOp::Read => client.get(key.as_bytes()).await.map(|v| {
                let v = v.as_deref().map(parse_value);
                last_seen.insert(key.clone(), v);
                RegResult::Read(v)
            }),
            RegOp::Write(v) => client.put(key.as_bytes(), v.to_string().as_bytes()).await.map(|_| RegResult::Written),
            RegOp::Cas { expected, new } => {
                let exp = expected.map(|e| e.to_string());
                client
                    .cas(key.as_bytes(), exp.as_deref().map(str::as_bytes), Some(new.to_string().as_bytes()))
                    .await
                    .map(|r| {
                        let current = r.found.then(|| parse_value(&r.current_value));
                        last_seen.insert(key.clone(), if r.succeeded { Some(*new) } else { current });
                        RegResult::Cas { succeeded: r.succeeded, current }
                    })
            }
        };
        let (outcome, complete_ns) = match res {
            Ok(r) => {
                if matches!(r, RegResult::Written | RegResult::Cas { succeeded: true, .. }) {
                    rec.ok_write();
                }
                (Outcome::Ok(r), Some(rec.now_ns()))
            }
            Err(e) => {
                let o = outcome_of(&e);
                let t = (o == Outcome::Fail).then(|| rec.now_ns());
                (o, t)
            }
        };
        rec.registers.lock().expect("not poisoned").push(RegEvent {
            client: id,
            key,
            op,
            invoke_ns,
            complete_ns,
            outcome,
        });
    }
}

pub fn encode_set(elems: &[u64]) -> Vec<u8> {
    elems.iter().map(u64::to_string).collect::<Vec<_>>().join(",").into_bytes()
}

pub fn decode_set(v: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(v).split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap_or(u64::MAX)).collect()
}

/// One set client until `stop`: appends unique elements with read + CAS.
pub async fn set_worker(id: u32, client: Client, rec: Arc<Recorder>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5e7 ^ (id as u64) << 32);
    let mut element = (id as u64 + 1) * 1_000_000_000;
    while !stop.load(Ordering::Relaxed) {
        element += 1;
        let key = set_key(set_generation(rec.start.elapsed()), rng.gen_range(0..SET_KEYS));
        let outcome = append(&client, &key, element, &stop).await;
        if outcome == Outcome::Ok(RegResult::Written) {
            rec.ok_write();
        }
        rec.sets.lock().expect("not poisoned").push(SetAdd { key, element, outcome });
    }
}

/// Appends `element` to `key`: Ok once a CAS carrying it succeeded (or a read
/// shows it after an unknown attempt), Info if an attempt's outcome stayed
/// unknown, Fail if every attempt certainly failed.
async fn append(client: &Client, key: &str, element: u64, stop: &AtomicBool) -> Outcome {
    let mut unknown = false;
    for _ in 0..20 {
        if stop.load(Ordering::Relaxed) && !unknown {
            break;
        }
        let cur = match client.get(key.as_bytes()).await {
            Ok(v) => v,
            Err(_) => continue,
        };
        let mut elems = cur.as_deref().map(decode_set).unwrap_or_default();
        if unknown && elems.contains(&element) {
            return Outcome::Ok(RegResult::Written);
        }
        elems.push(element);
        match client.cas(key.as_bytes(), cur.as_deref(), Some(&encode_set(&elems))).await {
            Ok(r) if r.succeeded => return Outcome::Ok(RegResult::Written),
            Ok(_) => {}
            Err(e) => unknown |= outcome_of(&e) == Outcome::Info,
        }
    }
    if unknown {
        Outcome::Info
    } else {
        Outcome::Fail
    }
}
