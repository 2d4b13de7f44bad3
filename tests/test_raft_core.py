"""Focused scenarios for the pure core, each pinned to one rule of the Raft paper."""
import ast
import pathlib
import random

import pytest

from raft_core import (APPEND_REQ, APPEND_RESP, LEADER, MAX_APPEND_BYTES, SNAP_REQ, VOTE_REQ,
                       NotLeader, RaftCore, RaftSafetyError)

MEMBERS = [{"id": p, "url": f"http://{p}", "role": "voter"} for p in ("a", "b", "c")]


def core(node_id, now=0.0, **kw):
    return RaftCore(node_id, MEMBERS, election_timeout=1.0, heartbeat_interval=0.2, now=now,
                    rng=random.Random(1), **kw)


def persist(c):
    """Pretend the runtime persisted a ready; return its messages."""
    rd = c.ready()
    c.advance(rd)
    return rd


def elect(c, voters):
    c.tick(5.0)
    persist(c)
    for v in voters:  # the pre-vote round
        c.step({"type": "vote_resp", "from": v, "to": c.id, "term": c.term + 1, "granted": True,
                "pre": True, "rid": None})
    rd = persist(c)
    votes = [m for m in rd.messages if m["type"] == VOTE_REQ]
    for v in voters:
        c.step({"type": "vote_resp", "from": v, "to": c.id, "term": c.term, "granted": True,
                "rid": None})
    assert c.role == LEADER
    persist(c)
    return votes


def append(leader_term, frm, prev, prev_term, entries, commit=0, rid=1):
    msg = {"type": APPEND_REQ, "from": frm, "to": "b", "term": leader_term, "prev_index": prev,
           "prev_term": prev_term, "entries": entries, "commit": commit, "seq": 0, "rid": rid}
    if prev == 0:  # the leader's configuration at index 0 comes along
        msg["members"] = MEMBERS
    return msg


def test_vote_is_durable_before_the_request_leaves():
    c = core("a")
    c.tick(5.0)
    persist(c)
    c.step({"type": "vote_resp", "from": "b", "to": "a", "term": 1, "granted": True, "pre": True, "rid": 1})
    rd = c.ready()
    assert rd.hard_state == (1, "a")
    assert {m["to"] for m in rd.messages if m["type"] == VOTE_REQ} == {"b", "c"}


def test_pre_vote_asks_without_raising_the_term():
    c = core("a", term=4)
    c.tick(5.0)
    rd = persist(c)
    asks = [m for m in rd.messages if m["type"] == VOTE_REQ]
    assert {m["to"] for m in asks} == {"b", "c"} and all(m["pre"] and m["term"] == 5 for m in asks)
    assert c.term == 4 and c.role == "follower" and rd.hard_state is None
    # Refused by a majority: still no term change; the timer tries again later.
    for v in ("b", "c"):
        c.step({"type": "vote_resp", "from": v, "to": "a", "term": 4, "granted": False, "pre": True, "rid": 1})
    assert c.term == 4 and c.role == "follower"


def test_pre_vote_is_refused_while_the_leader_is_heard_or_the_log_is_behind():
    c = core("b", term=2, entries=[(2, {"op": "x"}), (2, {"op": "y"})])
    c.step(append(2, "a", 2, 2, [], commit=2))
    persist(c)
    ask = {"type": VOTE_REQ, "from": "c", "to": "b", "term": 3, "last_index": 2, "last_term": 2,
           "pre": True, "rid": 7}
    c.step(dict(ask))
    assert persist(c).messages[-1]["granted"] is False  # the leader was heard just now
    c.tick(1.5)  # more than an election timeout without the leader
    c.step(dict(ask, last_index=1))
    assert persist(c).messages[-1]["granted"] is False  # shorter log
    c.step(dict(ask))
    reply = persist(c).messages[-1]
    assert reply["granted"] is True and reply["term"] == 3 and reply["pre"]
    assert c.term == 2 and c.voted_for is None and c.leader_id == "a"  # a pre-vote changes nothing


def test_a_stale_node_cannot_depose_a_working_leader():
    """A follower that was cut off, and whose log is behind, keeps asking but never raises the
    term: the leader stays leader, and the stale node only learns the leader's term."""
    leader = core("a")
    elect(leader, ["b"])
    stale = core("c")
    for t in (5.0, 8.0, 11.0):
        stale.tick(t)
        for ask in [m for m in persist(stale).messages if m["type"] == VOTE_REQ]:
            assert ask["pre"]
            leader.step(ask)
            for reply in persist(leader).messages:
                if reply["type"] == "vote_resp":
                    stale.step(reply)
    assert leader.role == LEADER and leader.term == 1 and stale.term == 1 and stale.role == "follower"


def test_a_vote_request_alone_does_not_restart_the_election_timer():
    c = core("b", term=1, entries=[(1, {"op": "x"})])
    deadline = c.election_deadline
    # A higher-term candidate with a stale log: we adopt its term but refuse the vote, and our
    # own election timer keeps running, so the nodes that can win are not held back.
    c.step({"type": VOTE_REQ, "from": "c", "to": "b", "term": 5, "last_index": 0, "last_term": 0, "rid": 1})
    assert persist(c).messages[-1]["granted"] is False
    assert c.term == 5 and c.election_deadline == deadline
    c.step({"type": VOTE_REQ, "from": "a", "to": "b", "term": 6, "last_index": 1, "last_term": 1, "rid": 2})
    assert persist(c).messages[-1]["granted"] is True and c.election_deadline > deadline


def test_one_vote_per_term_and_only_for_up_to_date_logs():
    c = core("b", entries=[(1, {"op": "x"}), (2, {"op": "y"})])
    c.step({"type": VOTE_REQ, "from": "a", "to": "b", "term": 3, "last_index": 1, "last_term": 2, "rid": 1})
    resp = persist(c).messages[-1]
    assert resp["granted"] is False  # shorter log, same last term
    c.step({"type": VOTE_REQ, "from": "c", "to": "b", "term": 3, "last_index": 2, "last_term": 2, "rid": 2})
    rd = persist(c)
    assert rd.messages[-1]["granted"] is True and rd.hard_state == (3, "c")
    c.step({"type": VOTE_REQ, "from": "a", "to": "b", "term": 3, "last_index": 9, "last_term": 3, "rid": 3})
    assert persist(c).messages[-1]["granted"] is False  # already voted for c in term 3


def test_higher_term_makes_a_leader_step_down():
    c = core("a")
    elect(c, ["b"])
    c.step({"type": APPEND_RESP, "from": "b", "to": "a", "term": 7, "success": False, "match": 0,
            "hint": 0, "seq": 0, "rid": 1})
    assert c.role == "follower" and c.term == 7 and c.voted_for is None
    with pytest.raises(NotLeader):
        c.propose({"op": "x"})


def test_conflicting_suffix_is_truncated_but_never_committed_entries():
    c = core("b", entries=[(1, "e1"), (1, "e2"), (1, "e3")], term=1)
    c.step(append(2, "a", 1, 1, [[2, {"op": "new"}]], commit=1))
    rd = persist(c)
    assert [t for t, *_ in c.log] == [1, 2] and rd.entries == [(2, 2, {"op": "new"})]
    assert rd.messages[-1]["success"] and rd.messages[-1]["match"] == 2


def test_log_mismatch_is_refused_with_a_hint():
    c = core("b", entries=[(1, "e1"), (1, "e2")], term=1)
    c.step(append(2, "a", 5, 2, []))
    resp = persist(c).messages[-1]
    assert resp["success"] is False and resp["hint"] == 3


def test_leader_commits_only_current_term_entries_by_counting():
    """Raft §5.4.2 (Figure 8): an old-term entry on a majority is not committed by itself."""
    c = core("a", term=2, entries=[(1, {"op": "old"})])
    elect(c, ["b"])  # term 3, appends its no-op at index 2
    noop_index = c.last_index()
    c.step({"type": APPEND_RESP, "from": "b", "to": "a", "term": c.term, "success": True,
            "match": 1, "hint": 0, "seq": 0, "rid": 1})
    assert c.commit_index == 0  # index 1 (term 1) on a majority is not enough
    c.step({"type": APPEND_RESP, "from": "b", "to": "a", "term": c.term, "success": True,
            "match": noop_index, "hint": 0, "seq": 0, "rid": 2})
    assert c.commit_index == noop_index


def test_leader_counts_itself_only_after_its_own_fsync():
    c = core("a")
    elect(c, ["b"])
    index, _ = c.propose({"op": "w"})
    rd = c.ready()  # handed to the runtime, not yet persisted
    c.step({"type": APPEND_RESP, "from": "b", "to": "a", "term": c.term, "success": True,
            "match": index, "hint": 0, "seq": 0, "rid": 2})
    assert c.commit_index < index  # one follower alone is not a majority of three
    c.advance(rd)
    assert c.commit_index == index


def test_snapshot_matching_our_log_keeps_acknowledged_entries():
    """Regression (simulator seed 4195): a delayed InstallSnapshot must not erase entries after it."""
    c = core("b", term=1, entries=[(1, {"op": str(i)}) for i in range(10)])
    c.step({"type": SNAP_REQ, "from": "a", "to": "b", "term": 1, "last_index": 7, "last_term": 1,
            "seq": 0, "rid": 1, "data": {}, "members": MEMBERS})
    rd = persist(c)
    assert rd.snapshot is None and c.last_index() == 10 and c.commit_index == 7
    assert rd.messages[-1]["match"] == 7


def test_snapshot_replaces_a_divergent_log():
    c = core("b", term=1, entries=[(1, "x"), (1, "y")])
    c.step({"type": SNAP_REQ, "from": "a", "to": "b", "term": 2, "last_index": 5, "last_term": 2,
            "seq": 0, "rid": 1, "data": {"state": 1}, "members": MEMBERS})
    rd = persist(c)
    assert rd.snapshot is not None and c.last_index() == 5 and c.log == [] and c.commit_index == 5


def test_read_index_needs_a_fresh_majority_round():
    c = core("a")
    elect(c, ["b"])
    c.step({"type": APPEND_RESP, "from": "b", "to": "a", "term": c.term, "success": True,
            "match": c.last_index(), "hint": 0, "seq": 0, "rid": 1})
    persist(c)
    c.read_index("r1")
    rd = persist(c)
    assert rd.reads == []
    seq = max(m["seq"] for m in rd.messages if m["type"] == APPEND_REQ)
    # An old acknowledgement (lower seq) does not confirm leadership for this read.
    c.step({"type": APPEND_RESP, "from": "b", "to": "a", "term": c.term, "success": True,
            "match": c.last_index(), "hint": 0, "seq": seq - 1, "rid": 2})
    assert persist(c).reads == []
    c.step({"type": APPEND_RESP, "from": "c", "to": "a", "term": c.term, "success": True,
            "match": c.last_index(), "hint": 0, "seq": seq, "rid": 3})
    assert persist(c).reads == [("r1", c.commit_index)]


def test_leader_cut_off_from_the_majority_steps_down():
    c = core("a")
    elect(c, ["b"])
    c.tick(5.5)
    assert c.role == LEADER
    c.tick(6.1)  # more than an election timeout without a reply from anyone
    assert c.role == "follower" and c.leader_id is None


def test_follower_commits_only_what_the_leader_has_verified():
    """Entries past the checked prefix may be stale: the commit index stops at the last verified entry."""
    c = core("b", term=1, entries=[(1, "x"), (1, "stale-y"), (1, "stale-z")])
    c.step(append(2, "a", 1, 1, [], commit=3))
    persist(c)
    assert c.commit_index == 1


def test_a_snapshot_in_flight_is_resent_only_when_reported_lost():
    """A snapshot can take long to transfer: the leader does not resend it on the AppendEntries
    retry timer (that would stream it again and again), only once the runtime reports a failure."""
    c = core("a", term=1, snap_index=10, snap_term=1)
    elect(c, ["b"])
    c.step({"type": APPEND_RESP, "from": "c", "to": "a", "term": c.term, "success": False,
            "match": 0, "hint": 1, "seq": 0, "rid": 1})
    c.tick(5.3)
    sent = [m for m in persist(c).messages if m["to"] == "c"]
    assert [m["type"] for m in sent] == [SNAP_REQ]
    for t in (5.8, 6.5, 7.2, 7.9):  # several AppendEntries retry periods
        c.step({"type": APPEND_RESP, "from": "b", "to": "a", "term": c.term, "success": True,
                "match": c.last_index(), "hint": 0, "seq": 0, "rid": 2})  # b keeps the leader in office
        c.tick(t)
        assert c.role == LEADER and not [m for m in persist(c).messages if m["to"] == "c"]
    c.snapshot_failed("c")
    c.tick(8.0)
    assert [m["type"] for m in persist(c).messages if m["to"] == "c"] == [SNAP_REQ]


def test_append_entries_are_batched_by_bytes_and_always_carry_one_entry():
    """Like etcd's MaxSizePerMsg: at most MAX_APPEND_BYTES of entries per message, but never an
    empty one, so an entry larger than the budget still goes (alone). Sizes come with proposals;
    the others (loaded from disk, the leader's no-op) are asked of entry_size, once."""
    asked = []

    def entry_size(cmd):
        asked.append(cmd["op"])
        return {"loaded": 300_000, "noop": 10}[cmd["op"]]
    c = core("a", term=1, entries=[(1, {"op": "loaded"})], entry_size=entry_size)
    elect(c, ["b"])  # its no-op is entry 2
    for i in range(4):
        c.propose({"op": f"w{i}"}, size=400_000)
    c.propose({"op": "huge"}, size=MAX_APPEND_BYTES + 1)
    c.propose({"op": "after"}, size=10)
    persist(c)
    # c knows nothing yet: it refuses, hinting at index 1, and acknowledges every batch.
    c.step({"type": APPEND_RESP, "from": "c", "to": "a", "term": c.term, "success": False,
            "match": 0, "hint": 1, "seq": 0, "rid": 1})
    batches = []
    while sent := [m for m in persist(c).messages if m["to"] == "c" and m["entries"]]:
        msg = sent[-1]
        batches.append([cmd["op"] for _, cmd in msg["entries"]])
        c.step({"type": APPEND_RESP, "from": "c", "to": "a", "term": c.term, "success": True,
                "match": msg["prev_index"] + len(msg["entries"]), "hint": 0, "seq": 0, "rid": msg["rid"]})
    assert batches == [["loaded", "noop", "w0"], ["w1", "w2"], ["w3"], ["huge"], ["after"]]
    assert sorted(asked) == ["loaded", "noop"]


def test_vote_requests_carry_request_ids_that_replies_echo():
    c = core("a", term=1)
    c.tick(5.0)
    asks = [m for m in persist(c).messages if m["type"] == VOTE_REQ]
    assert all(m["pre"] and isinstance(m["rid"], int) for m in asks)
    assert len({m["rid"] for m in asks}) == len(asks) == 2
    c.step({"type": "vote_resp", "from": "b", "to": "a", "term": 2, "granted": True, "pre": True,
            "rid": asks[0]["rid"]})
    votes = [m for m in persist(c).messages if m["type"] == VOTE_REQ]
    assert not any(m.get("pre") for m in votes) and all(isinstance(m["rid"], int) for m in votes)
    assert not {m["rid"] for m in votes} & {m["rid"] for m in asks}
    voter = core("b", term=1)
    voter.step(votes[0] | {"to": "b"})
    reply = persist(voter).messages[-1]
    assert reply["type"] == "vote_resp" and reply["granted"] and reply["rid"] == votes[0]["rid"]


def test_a_faulty_reply_claiming_more_than_the_leader_has_is_not_believed():
    c = core("a")
    elect(c, ["b"])
    c.step({"type": APPEND_RESP, "from": "c", "to": "a", "term": c.term, "success": True,
            "match": 10**9, "hint": 0, "seq": 0, "rid": 5})
    assert c.progress["c"].match == c.last_index() and c.progress["c"].next == c.last_index() + 1
    c.tick(5.3)  # the next heartbeat to c is well-formed
    beat = [m for m in persist(c).messages if m["to"] == "c"][-1]
    assert beat["prev_index"] == c.last_index() and beat["prev_term"] == c.term


def test_safety_checks_raise_even_under_python_O():
    """Safety checks are explicit exceptions, not asserts (which `python -O` removes)."""
    c = core("b", term=1, entries=[(1, "x"), (1, "y")])
    c.step(append(1, "a", 2, 1, [], commit=2))
    persist(c)
    assert c.commit_index == 2
    with pytest.raises(RaftSafetyError):  # a leader that would overwrite committed entries
        c.step(append(2, "c", 0, 0, [[2, {"op": "z"}]], commit=0))
    c.applied_handed = 2
    with pytest.raises(RaftSafetyError):
        c.compact(2, 5)  # the snapshot's term contradicts the log


def test_production_modules_contain_no_assert():
    root = pathlib.Path(__file__).resolve().parent.parent
    for name in ("raft_core.py", "cluster_manager.py", "transport.py"):
        tree = ast.parse((root / name).read_text())
        asserts = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)]
        assert not asserts, f"{name} uses assert at lines {asserts}"
