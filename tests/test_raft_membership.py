"""Membership in the pure core (Raft thesis ch. 4 single-server changes, learners, leadership
transfer 3.10), one known trap per test. A few cores exchange messages through a tiny in-memory
network; the random schedules in tests/raft_sim.py cover the interleavings."""
import random

import pytest

from raft_core import (APPEND_REQ, APPEND_RESP, LEADER, SNAP_REQ, TIMEOUT_NOW, VOTE_REQ, VOTE_RESP,
                       ConfigRefused, NotLeader, RaftCore, TransferInProgress)

ELECTION = 1.0


def member(node_id, role="voter"):
    return {"id": node_id, "url": f"http://{node_id}", "role": role}


def members(voters, learners=()):
    return [member(v) for v in voters] + [member(x, "learner") for x in learners]


class Net:
    """Cores that persist every Ready at once and deliver every message, except to nodes that
    are down or across a cut link. `pump` runs until nothing is left to send; `tick` moves
    everyone's clock."""

    def __init__(self, config, extra=(), seed=1):
        self.now = 0.0
        self.down: set[str] = set()
        self.cut: set[tuple[str, str]] = set()  # (from, to) links that drop everything
        self.sent: list[dict] = []
        ids = [m["id"] for m in config] + list(extra)
        self.cores = {i: RaftCore(i, config if i not in extra else [], election_timeout=ELECTION,
                                  heartbeat_interval=0.2, now=0.0, rng=random.Random(seed + n))
                      for n, i in enumerate(ids)}
        self.readies = {i: [] for i in ids}

    def pump(self, rounds=50):
        for _ in range(rounds):
            moved = False
            for i, core in self.cores.items():
                if i in self.down:
                    continue
                rd = core.ready()
                core.advance(rd)
                if not rd.empty():
                    self.readies[i].append(rd)
                for msg in rd.messages:
                    self.sent.append(msg)
                    if msg["to"] in self.cores and msg["to"] not in self.down and (i, msg["to"]) not in self.cut:
                        moved = True
                        self.cores[msg["to"]].step(msg)
            if not moved:
                return

    def tick(self, dt):
        self.now += dt
        for i, core in self.cores.items():
            if i not in self.down:
                core.tick(self.now)
        self.pump()

    def elect(self, node_id):
        """Make `node_id` leader: its election timer fires first."""
        core = self.cores[node_id]
        core.election_deadline = self.now
        self.tick(0.01)
        assert core.role == LEADER
        self.pump()
        return core

    def leader(self):
        leaders = [c for i, c in self.cores.items() if c.role == LEADER and i not in self.down]
        assert len(leaders) == 1, [c.id for c in leaders]
        return leaders[0]

    def sent_since(self, mark, mtype=None, to=None):
        return [m for m in self.sent[mark:] if (mtype is None or m["type"] == mtype) and (to is None or m["to"] == to)]


def votes_only(net, rounds=4):
    """Deliver (pre)vote requests and replies only; everything else is lost."""
    for _ in range(rounds):
        for i, core in net.cores.items():
            rd = core.ready()
            core.advance(rd)
            for msg in rd.messages:
                if msg["type"] in (VOTE_REQ, VOTE_RESP) and msg["to"] not in net.down \
                        and (i, msg["to"]) not in net.cut:
                    net.cores[msg["to"]].step(msg)


def isolate(net, *groups):
    """Cut every link between the groups of nodes."""
    where = {i: n for n, group in enumerate(groups) for i in group}
    net.cut = {(x, y) for x in where for y in where if where[x] != where[y]}


# ----------------------------------------------------------------- refusals
def test_a_new_leader_refuses_a_change_until_it_committed_an_entry_of_its_term():
    """Ongaro, raft-dev 2015: a new leader may not know of a change its predecessor started;
    a second one on top could make two disjoint majorities. It first commits its no-op."""
    net = Net(members("abc"))
    a = net.cores["a"]
    net.down = {"c"}
    a.election_deadline = 0.0
    a.tick(0.01)
    votes_only(net)  # the no-op's replies are lost
    assert a.role == LEADER and a.commit_index < a.noop_index
    with pytest.raises(ConfigRefused) as refused:
        a.propose_config(members("abc", "d"))
    assert refused.value.code == "leader_not_ready"
    net.tick(0.6)  # the appends are sent again
    assert a.commit_index >= a.noop_index
    a.propose_config(members("abc", "d"))


def test_the_first_commit_rule_keeps_two_changes_from_forming_disjoint_majorities():
    """Ongaro's raft-dev scenario (2015) on four voters: a appends "remove d" and is cut off; b
    wins term 2 with c's and d's votes, but only d hears from it after. Were b allowed to propose
    "remove a" at once, {b, d} would commit it (a majority of {b, c, d}) and then a, back with c,
    would win term 3 with {a, c} (a majority of its {a, b, c}) and overwrite entries committed in
    term 2. The rule keeps b from changing anything before its no-op commits, which needs 3 of 4."""
    net = Net(members("abcd"))
    a = net.elect("a")
    net.tick(0.3)
    isolate(net, "a", "bcd")
    a.propose_config(members("abc"))
    for core in net.cores.values():
        core.election_deadline = 100.0  # no one campaigns on their own here
    for _ in range(6):
        net.tick(0.3)  # a loses the leadership (check-quorum); b, c, d stop hearing from it
    assert a.role == "follower" and a.config_index > a.commit_index
    b = net.cores["b"]
    b.election_deadline = net.now
    b.tick(net.now)
    votes_only(net)  # c and d vote for b; then c hears nothing more from it
    assert b.role == LEADER and b.term == 2 and b.commit_index < b.noop_index
    isolate(net, "ac", "bd")
    try:
        b.propose_config(members("bcd"))
    except ConfigRefused as refused:
        assert refused.code == "leader_not_ready"
    committed = {}  # index -> entry, as committed by any leader
    for core in net.cores.values():
        core.election_deadline = net.now + 1.0 if core.id == "a" else 100.0
    for _ in range(30):
        net.tick(0.3)
        for core in net.cores.values():
            if core.role == LEADER:
                for index in range(core.snap_index + 1, core.commit_index + 1):
                    committed.setdefault(index, core.entry(index))
                lost = [i for i, e in committed.items() if core.term_at(i) is None or core.entry(i) != e]
                assert not lost, f"leader {core.id} of term {core.term} lacks committed entries {lost}"
    assert a.role == LEADER and a.term == 3  # a and c went on, with nothing committed lost


def test_at_most_one_uncommitted_change_and_one_member_at_a_time():
    net = Net(members("abc"), extra=["d", "e"])
    a = net.elect("a")
    net.down = {"b", "c"}  # the change cannot commit
    a.propose_config(members("abc", "d"))
    with pytest.raises(ConfigRefused) as refused:
        a.propose_config(members("abc", "de"))
    assert refused.value.code == "change_in_progress"
    net.down = set()
    net.tick(0.3)
    assert a.commit_index >= a.config_index
    with pytest.raises(ConfigRefused) as refused:
        a.propose_config(members("abcd", "e"))  # promote d and add e at once
    assert refused.value.code == "not_single_change"
    with pytest.raises(ConfigRefused) as refused:
        a.propose_config(members("a", "d"))  # remove b and c at once
    assert refused.value.code == "not_single_change"
    with pytest.raises(ValueError):
        a.propose_config([member("a"), member("a", "learner")])
    with pytest.raises(ValueError):
        a.propose_config([{"id": "a", "url": "http://a", "role": "boss"}])
    with pytest.raises(NotLeader):
        net.cores["b"].propose_config(members("abc"))


def test_the_last_voter_cannot_be_removed():
    net = Net(members("a", "b"))
    a = net.elect("a")
    with pytest.raises(ConfigRefused) as refused:
        a.propose_config(members("", "ab"))  # demote the only voter
    assert refused.value.code == "last_voter"
    with pytest.raises(ConfigRefused) as refused:
        a.propose_config(members("", "b"))
    assert refused.value.code == "last_voter"


# ----------------------------------------------------------------- voters only
def test_one_voter_with_two_learners_commits_alone_and_learners_never_campaign():
    net = Net(members("a", "bc"))
    a = net.elect("a")
    assert a.quorum() == 1 and a.peers == ["b", "c"] and set(a.progress) == {"b", "c"}
    net.down = {"b", "c"}
    index, _ = a.propose({"op": "x"})
    net.pump()
    assert a.commit_index == index  # the voter alone
    net.down = {"a"}  # the leader is gone: the learners never campaign
    mark = len(net.sent)
    for _ in range(20):
        net.tick(0.5)
    assert not net.sent_since(mark, VOTE_REQ)
    assert all(net.cores[i].role == "follower" and net.cores[i].term == a.term for i in "bc")


def test_a_two_voter_cluster_with_a_voter_down_commits_nothing_even_with_learners_up():
    net = Net(members("ab", "cd"))
    a = net.elect("a")
    net.tick(0.3)
    before = a.commit_index
    net.down = {"b"}
    index, _ = a.propose({"op": "x"})
    net.tick(0.3)
    assert all(a.progress[x].match >= index for x in "cd")  # the learners have it
    assert a.commit_index == before  # ...and it does not count
    a.read_index("r")
    net.pump()
    assert not any(rd.reads for rd in net.readies["a"])  # nor do their heartbeat acks for reads
    for _ in range(5):
        net.tick(0.3)
    assert a.role == "follower"  # check-quorum counts voters: the learners' acks keep no one in office


def test_a_promoted_learner_counts_from_the_entry_on():
    net = Net(members("ab", "c"))
    a = net.elect("a")
    net.tick(0.3)
    a.propose_config(members("abc"))
    net.pump()
    assert a.voters == {"a", "b", "c"} and net.cores["c"].voters == {"a", "b", "c"}
    net.down = {"b"}
    index, _ = a.propose({"op": "x"})
    net.tick(0.3)
    assert a.commit_index == index  # a and c are a majority of three


# ----------------------------------------------------------------- removed nodes
def test_a_removed_nodes_stale_votes_are_ignored():
    net = Net(members("abc"))
    a = net.elect("a")
    net.tick(0.3)
    net.down = {"c"}  # c never learns that it was removed
    a.propose_config(members("ab"))
    net.tick(0.3)
    assert a.commit_index >= a.config_index and a.peers == ["b"] and "c" not in a.progress
    b = net.cores["b"]
    term = b.term
    c = net.cores["c"]
    for pre in (True, False):  # its pre-votes, and a real vote request of a higher term
        stale = {"type": VOTE_REQ, "from": "c", "to": "b", "term": term + 5, "last_index": c.last_index(),
                 "last_term": c.last_term(), "rid": 9}
        if pre:
            stale["pre"] = True
        mark = len(net.sent)
        b.step(stale)
        net.pump()
        assert not net.sent_since(mark, VOTE_RESP, to="c") and b.term == term and a.role == LEADER
    # The removed node itself keeps trying without ever deposing anyone.
    net.down = set()
    for _ in range(10):
        net.tick(0.5)
    assert a.role == LEADER and a.term == term


def test_a_lagging_voter_hears_a_candidate_whose_log_is_ahead():
    """A voter that lost its disk knows no members: it must still answer the candidates it needs
    to elect (else no election succeeds), though not those behind it."""
    net = Net(members("ab"))
    a = net.elect("a")
    net.tick(0.3)
    wiped = RaftCore("b", [], election_timeout=ELECTION, heartbeat_interval=0.2, now=net.now)
    wiped.step({"type": VOTE_REQ, "from": "a", "to": "b", "term": a.term + 1, "last_index": a.last_index(),
                "last_term": a.last_term(), "rid": 3})
    [reply] = wiped.ready().messages
    assert reply["type"] == VOTE_RESP and reply["granted"]


def test_the_leader_removing_itself_leads_until_the_change_commits_then_hands_over():
    net = Net(members("abc"))
    a = net.elect("a")
    net.tick(0.3)
    net.down = {"b", "c"}
    index, _ = a.propose_config(members("bc"))
    net.pump()
    assert a.role == LEADER and a.voters == {"b", "c"} and a.commit_index < index  # it does not count itself
    mark = len(net.sent)
    net.down = {"c"}
    net.tick(0.3)  # b alone is not a majority of {b, c}
    assert a.role == LEADER and a.commit_index < index
    net.down = set()
    net.tick(0.3)
    assert a.commit_index >= index and a.role == "follower"
    [handover] = net.sent_since(mark, TIMEOUT_NOW)
    assert handover["to"] in "bc"
    new = net.leader()
    assert new.id == handover["to"] and new.voters == {"b", "c"}
    mark = len(net.sent)
    for _ in range(10):
        net.tick(0.5)
    assert not [m for m in net.sent_since(mark, VOTE_REQ) if m["from"] == "a"]  # a never campaigns again


def test_a_leader_cut_off_before_its_removal_commits_may_campaign_to_finish_it():
    """Its removal entry may be on no other node; the others need its vote, which its longer log
    refuses them, so it campaigns (as a voter of the previous configuration), commits the change
    and hands over."""
    net = Net(members("ab"))
    a = net.elect("a")
    net.tick(0.3)
    net.down = {"b"}
    a.propose_config(members("b"))
    net.pump()
    for _ in range(6):
        net.tick(0.3)  # check-quorum: a steps down, its removal uncommitted
    assert a.role == "follower" and a.config_index > a.commit_index
    net.down = set()
    for _ in range(20):
        net.tick(0.5)
    b = net.leader()
    assert b.id == "b" and b.voters == {"b"} and b.commit_index >= b.config_index


def test_a_config_entry_takes_effect_when_appended_and_is_undone_by_truncation():
    b = RaftCore("b", members("abc"), election_timeout=ELECTION, heartbeat_interval=0.2, now=0.0)
    entries = [[1, {"op": "noop"}], [1, {"op": "config", "members": members("abc", "d")}]]
    b.step({"type": APPEND_REQ, "from": "a", "to": "b", "term": 1, "prev_index": 0, "prev_term": 0,
            "entries": entries, "commit": 1, "seq": 0, "rid": 1, "members": members("abc")})
    rd = b.ready()
    b.advance(rd)
    assert b.learners == {"d"} and b.config_index == 2 and rd.members == members("abc", "d")
    assert b.config_at(1) == members("abc")
    # A new leader of term 2 never had it: the entry is cut, the configuration before it returns.
    b.step({"type": APPEND_REQ, "from": "c", "to": "b", "term": 2, "prev_index": 1, "prev_term": 1,
            "entries": [[2, {"op": "noop"}]], "commit": 1, "seq": 0, "rid": 2})
    rd = b.ready()
    assert b.learners == set() and b.config_index == 0 and rd.members == members("abc")
    b.advance(rd)
    assert b.ready().members is None and b.ready().empty()


def test_a_joining_node_learns_the_bootstrap_members_from_the_leader():
    net = Net(members("ab"), extra=["c"])
    a = net.elect("a")
    net.tick(0.3)
    a.propose_config(members("ab", "c"))
    net.tick(0.3)
    c = net.cores["c"]
    assert c.config_at(0) == members("ab") and c.members == members("ab", "c")
    [learned] = [rd.bootstrap_members for rd in net.readies["c"] if rd.bootstrap_members is not None]
    assert learned == members("ab")
    restarted = RaftCore("c", learned, election_timeout=ELECTION, heartbeat_interval=0.2, now=net.now,
                         entries=[(t, cmd) for t, cmd, _ in c.log])
    assert restarted.members == c.members and restarted.learners == {"c"}


# ----------------------------------------------------------------- snapshots
def test_snapshots_carry_the_configuration():
    net = Net(members("ab"), extra=["c"])
    a = net.elect("a")
    net.tick(0.3)
    a.propose_config(members("ab", "c"))
    net.down = {"c"}
    net.tick(0.3)
    a.propose({"op": "x"})
    net.tick(0.3)
    top = a.commit_index
    assert a.config_at(top) == members("ab", "c") and a.config_at(a.config_index - 1) == members("ab")
    a.compact(top, a.term_at(top))
    assert a.config_at(top) == members("ab", "c")
    with pytest.raises(ValueError):
        a.config_at(top - 1)  # compacted away
    net.down = set()
    mark = len(net.sent)
    net.tick(0.3)
    [snap] = net.sent_since(mark, SNAP_REQ, to="c")
    assert snap["members"] == members("ab", "c") and snap["last_index"] == top
    c = net.cores["c"]
    [installed] = [rd for rd in net.readies["c"] if rd.snapshot is not None]
    assert installed.members == members("ab", "c") and c.learners == {"c"} and c.config_index == top
    # A node restarted from that snapshot starts from its members.
    restarted = RaftCore("c", snap["members"], election_timeout=ELECTION, heartbeat_interval=0.2, now=net.now,
                         snap_index=top, snap_term=a.term_at(top))
    assert restarted.members == members("ab", "c")


# ----------------------------------------------------------------- leadership transfer
def test_transfer_to_a_named_voter_waits_for_it_to_catch_up_then_sends_timeout_now():
    net = Net(members("abc"))
    a = net.elect("a")
    net.tick(0.3)
    net.down = {"c"}
    for i in range(3):
        a.propose({"op": i})
    net.tick(0.3)
    mark = len(net.sent)
    assert a.transfer_leadership("c") == "c" and a.transferring == "c"
    with pytest.raises(TransferInProgress):
        a.propose({"op": "late"})
    with pytest.raises(ConfigRefused) as refused:
        a.propose_config(members("ab"))
    assert refused.value.code == "transfer_in_progress"
    net.pump()
    assert not net.sent_since(mark, TIMEOUT_NOW)  # c is behind
    net.down = set()
    net.tick(0.6)  # the append to c is retried; c catches up, and then is told to campaign
    [now] = net.sent_since(mark, TIMEOUT_NOW)
    c = net.cores["c"]
    to_c = [m for m in net.sent_since(mark, APPEND_REQ, to="c")]
    assert now["to"] == "c" and to_c and net.sent.index(to_c[0]) < net.sent.index(now)
    votes = net.sent_since(mark, VOTE_REQ)
    assert votes and all(v["transfer"] and not v.get("pre") for v in votes)  # no pre-vote
    assert net.leader() is c and c.term == a.term and a.role == "follower" and a.transferring is None


def test_transfer_to_none_picks_the_most_up_to_date_voter():
    net = Net(members("abc", "d"))
    a = net.elect("a")
    net.tick(0.3)
    net.down = {"b", "d"}
    a.propose({"op": "x"})
    net.tick(0.3)
    net.down = set()
    assert a.progress["c"].match > a.progress["b"].match
    assert a.transfer_leadership(None) == "c"
    net.tick(0.05)
    assert net.leader().id == "c"


def test_transfer_refusals():
    net = Net(members("a", "b"))
    a = net.elect("a")
    for target, code in (("zz", "unknown_member"), ("b", "not_voter"), (None, "no_target")):
        with pytest.raises(ConfigRefused) as refused:
            a.transfer_leadership(target)
        assert refused.value.code == code
    with pytest.raises(NotLeader):
        net.cores["b"].transfer_leadership(None)


def test_a_transfer_that_does_not_finish_is_aborted_after_an_election_timeout():
    net = Net(members("abc"))
    a = net.elect("a")
    net.tick(0.3)
    net.down = {"c"}
    a.transfer_leadership("c")
    with pytest.raises(TransferInProgress):
        a.propose({"op": "x"})
    net.tick(0.5)
    assert a.transferring == "c"
    net.tick(0.6)  # one election timeout after the start
    assert a.transferring is None and a.role == LEADER
    index, _ = a.propose({"op": "x"})  # accepted again
    net.tick(0.3)
    assert a.commit_index == index


def test_vote_requests_of_a_transfer_bypass_leader_stickiness_and_others_do_not():
    net = Net(members("abc"))
    a = net.elect("a")
    net.tick(0.3)
    b = net.cores["b"]
    ask = {"type": VOTE_REQ, "from": "c", "to": "b", "term": a.term + 1, "last_index": a.last_index(),
           "last_term": a.last_term(), "rid": 4}
    b.step(dict(ask))
    assert b.term == a.term and not [m for m in b.ready().messages if m["type"] == VOTE_RESP]
    b.step(dict(ask, transfer=True))
    [reply] = [m for m in b.ready().messages if m["type"] == VOTE_RESP]
    assert reply["granted"] and b.term == a.term + 1


def test_learners_ignore_timeout_now():
    net = Net(members("ab", "c"))
    a = net.elect("a")
    net.tick(0.3)
    c = net.cores["c"]
    c.step({"type": TIMEOUT_NOW, "from": "a", "to": "c", "term": a.term, "rid": 1})
    assert c.role == "follower" and c.term == a.term and not c.ready().messages


def test_progress_follows_the_configuration():
    net = Net(members("abc"), extra=["d"])
    a = net.elect("a")
    net.tick(0.3)
    a.propose_config(members("abc", "d"))
    assert set(a.progress) == {"b", "c", "d"} and a.progress["d"].match == 0
    net.tick(0.3)
    assert a.progress["d"].match == a.last_index()
    a.propose_config(members("ab", "d"))
    assert set(a.progress) == {"b", "d"} and a.peers == ["b", "d"]
    mark = len(net.sent)
    net.tick(0.3)
    assert not net.sent_since(mark, to="c")  # a removed member gets nothing more
