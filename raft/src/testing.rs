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
    /// Other version (fences proposals in tests).
    #[prost(uint64, tag = "4")]
    pub version: u64,
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
        vec![StateRange {
            cf: Cf::Data,
            lo: self.id.to_be_bytes().to_vec(),
            hi: self.id.saturating_add(1).to_be_bytes().to_vec(),
        }]
    }
    fn overlaps(&self, other: &Self) -> bool {
        self.id == other.id
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
        let k = data_key(ctx.group.id, &cmd.key);
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
