//! A small state machine and group for testing the engine without any
//! kv or shard code: a map of byte keys to byte values in the `data` CF
//! under the group's own prefix, and a group descriptor with members and
//! versions. Used by the engine's unit tests and its scripted scenarios.

use prost::Message;

use crate::engine::Cf;
use crate::error::{Error, Result};
use crate::state_machine::{ApplyContext, Group, StateMachine, StateRange};
use crate::Member;

/// A test group: an id, members and versions, encoded as a protobuf message.
#[derive(Clone, PartialEq, Message)]
pub struct TestGroup {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The members.
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<Member>,
    /// Membership version.
    #[prost(uint64, tag = "3")]
    pub conf_ver: u64,
    /// Other version (fences proposals in tests); bumped by a split.
    #[prost(uint64, tag = "4")]
    pub version: u64,
    /// The group whose key space this one's data lives in (0: its own);
    /// a group made by a split keeps its parent's.
    #[prost(uint64, tag = "5")]
    pub owner: u64,
    /// First key of the group (inclusive).
    #[prost(bytes = "vec", tag = "6")]
    pub lo: Vec<u8>,
    /// End key of the group (exclusive; empty: no end).
    #[prost(bytes = "vec", tag = "7")]
    pub hi: Vec<u8>,
}

impl TestGroup {
    /// The key space the group's data lives in.
    pub fn owner(&self) -> u64 {
        if self.owner == 0 {
            self.id
        } else {
            self.owner
        }
    }

    /// The `data` key of `key` in this group.
    pub fn key(&self, key: &[u8]) -> Vec<u8> {
        data_key(self.owner(), key)
    }

    /// Whether `key` is in the group's range.
    pub fn holds(&self, key: &[u8]) -> bool {
        key >= self.lo.as_slice() && (self.hi.is_empty() || key < self.hi.as_slice())
    }
}

impl Group for TestGroup {
    fn id(&self) -> u64 {
        self.id
    }
    fn members(&self) -> Vec<Member> {
        self.members.clone()
    }
    fn set_members(&mut self, members: Vec<Member>) {
        self.members = members;
        self.conf_ver += 1;
    }
    fn conf_version(&self) -> u64 {
        self.conf_ver
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn encode(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
    fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        <TestGroup as Message>::decode(bytes).map_err(|e| e.to_string())
    }
    fn state_ranges(&self) -> Vec<StateRange> {
        let hi =
            if self.hi.is_empty() { self.owner().saturating_add(1).to_be_bytes().to_vec() } else { self.key(&self.hi) };
        vec![StateRange { cf: Cf::Data, lo: self.key(&self.lo), hi }]
    }
    fn overlaps(&self, other: &Self) -> bool {
        let below = |a: &TestGroup, b: &TestGroup| !a.hi.is_empty() && a.hi <= b.lo;
        self.id == other.id || (self.owner() == other.owner() && !below(self, other) && !below(other, self))
    }
}

/// A test command: set `key` to `value`; `fail` makes apply fail as a local
/// error would (to test fencing); `version` fences on the group's version.
#[derive(Clone, PartialEq, Message)]
pub struct TestCommand {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    /// Fail at apply with a non-deterministic (local) error.
    #[prost(bool, tag = "3")]
    pub fail: bool,
    /// Refused before proposing unless 0 or equal to the group's version.
    #[prost(uint64, tag = "4")]
    pub version: u64,
    /// With `new_group`: split the group at this key instead of writing.
    #[prost(bytes = "vec", tag = "5")]
    pub split_at: Vec<u8>,
    /// The id of the group a split makes (0: not a split).
    #[prost(uint64, tag = "6")]
    pub new_group: u64,
    /// The new group's replica ids, one per member sorted by replica id.
    #[prost(uint64, repeated, tag = "7")]
    pub new_replica_ids: Vec<u64>,
}

/// What applying a [`TestCommand`] answers: the previous value.
#[derive(Clone, Debug, PartialEq)]
pub enum TestResponse {
    /// Applied; the value the key had before.
    Applied(Option<Vec<u8>>),
    /// Refused before proposing (stale version).
    Stale,
    /// The entry did not decode.
    Undecodable,
    /// The group split; its new version.
    Split(u64),
    /// Refused at apply (key out of range, split refused): why.
    Refused(String),
}

/// The test state machine.
#[derive(Default)]
pub struct TestStateMachine;

/// The `data` key of `key` in group `group_id`.
pub fn data_key(group_id: u64, key: &[u8]) -> Vec<u8> {
    [&group_id.to_be_bytes()[..], key].concat()
}

impl StateMachine for TestStateMachine {
    type Command = TestCommand;
    type Response = TestResponse;
    type Group = TestGroup;

    fn apply(&mut self, ctx: &mut ApplyContext<'_, TestGroup>, cmd: TestCommand) -> Result<TestResponse> {
        if cmd.fail {
            return Err(Error::Corrupt("test: a record on this node does not decode".into()));
        }
        if cmd.new_group != 0 {
            return Ok(split(ctx, cmd));
        }
        if !ctx.group.holds(&cmd.key) {
            return Ok(TestResponse::Refused("key out of range".into()));
        }
        let k = ctx.group.key(&cmd.key);
        let before = ctx.get(Cf::Data, &k)?;
        ctx.put(Cf::Data, &k, &cmd.value);
        Ok(TestResponse::Applied(before))
    }

    fn undecodable(&self, _reason: String) -> TestResponse {
        TestResponse::Undecodable
    }

    fn check_proposal(group: &TestGroup, cmd: &TestCommand) -> Option<TestResponse> {
        (cmd.version != 0 && cmd.version != group.version).then_some(TestResponse::Stale)
    }
}

/// Splits the group at `cmd.split_at`, as a shard splits its hash range.
fn split(ctx: &mut ApplyContext<'_, TestGroup>, cmd: TestCommand) -> TestResponse {
    let g = ctx.group;
    if ctx.joint {
        return TestResponse::Refused("joint configuration".into());
    }
    if cmd.split_at <= g.lo || !g.holds(&cmd.split_at) {
        return TestResponse::Refused("split key not inside the range".into());
    }
    let mut members = g.members.clone();
    members.sort_by_key(|m| m.replica_id);
    if members.len() != cmd.new_replica_ids.len() {
        return TestResponse::Refused("one new replica id per member needed".into());
    }
    let version = g.version + 1;
    let narrowed = TestGroup { hi: cmd.split_at.clone(), version, owner: g.owner(), ..g.clone() };
    let new = TestGroup {
        id: cmd.new_group,
        members: members.iter().zip(&cmd.new_replica_ids).map(|(m, id)| Member { replica_id: *id, ..*m }).collect(),
        conf_ver: g.conf_ver,
        version,
        owner: g.owner(),
        lo: cmd.split_at,
        hi: g.hi.clone(),
    };
    ctx.split(narrowed, new);
    TestResponse::Split(version)
}
