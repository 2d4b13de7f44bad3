"""Executes a ``Schedule`` against a running ``NemesisCluster`` and its ``ProxyNet``.

Runs in its own thread; each event fires at its scheduled offset from the workload start
(waiting on the stop event, never sleeping blindly). Targets given as "leader" are resolved
when the event fires; every action actually taken is appended to ``self.log`` (printed
with the schedule when a run fails).

Fault semantics
  kill       kill -9 the targets; end: restart them (same data dir)
  pause      SIGSTOP the targets; end: SIGCONT
  crash      kill -9 the target and restart it with PICKLEDB_CRASH_POINT=point:hit, so it
             dies at that point inside storage; end: restart it without the crash point
             (after killing it if the point was never reached)
  disk       stop the target (SIGTERM or kill -9), damage one of its files (a bit flip in a
             WAL segment or the snapshot, or the snapshot deleted; see disk.py), start it:
             it must refuse (exit non-zero, one ``error:`` line naming the file, no
             traceback, no file touched) unless the damage is indistinguishable from a
             recoverable state; then put the original bytes back. end: start it again.
             Every wrong answer is a finding (``disk_findings``).
  slowloris  open ``slow_connections`` connections to the target that trickle an unfinished
             request head, then send it one ordinary request: it must be answered (a
             documented 503 will do); end: close them. (``slowloris_findings``)
  isolate    block every link to and from the target
  split      block every link between a minority and the rest ("with_leader": the
             minority is made to contain the current leader)
  oneway     block the target's outgoing ("out") or incoming ("in") links only
  resp_loss  requests on the target's outgoing ("out") or incoming ("in") links are
             delivered but their answers are black-holed
  bridge     (5 nodes) two halves that only talk through one bridge node
  delay      delay+jitter on all (or half of the) links
  drop       connection resets with some probability per chunk on all (or half) links
  every network fault's end heals the whole network (one network fault at a time)
"""
from __future__ import annotations

import threading
import time
import traceback
from typing import Optional

from . import disk
from .cluster import NemesisCluster, http_call
from .hostile import SlowLoris, documented_503_codes, probe_under_attack
from .proxy import ProxyNet
from .schedule import Event, Schedule


class Nemesis(threading.Thread):
    def __init__(self, cluster: NemesisCluster, net: ProxyNet, schedule: Schedule,
                 clock, stop_event: Optional[threading.Event] = None,
                 slow_connections: int = 520):
        super().__init__(name="nemesis", daemon=True)
        self.cluster = cluster
        self.net = net
        self.schedule = schedule
        self.clock = clock                  # () -> seconds since the workload started
        self.stop_event = stop_event or threading.Event()
        self.log: list = []
        self.resolved: dict = {}            # fault id -> node indexes acted on
        self.armed: dict = {}               # node index -> crash spec
        self.crashes: list = []             # (node, spec, returncode) observed
        self.down_for_disk: set = set()     # nodes a disk fault left stopped (files restored)
        self.disk_faults = 0
        self.disk_findings: list = []       # wrong answers to damaged files
        self.slow_connections = slow_connections
        self.slowloris: dict = {}           # fault id -> SlowLoris
        self.slowloris_faults = 0
        self.slowloris_findings: list = []  # requests unanswered under the attack
        self.error: Optional[str] = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ helpers
    def note(self, msg: str):
        with self._lock:
            self.log.append(f"t={self.clock():7.3f} {msg}")

    def leader_index(self) -> Optional[int]:
        return self.cluster.current_leader()

    def resolve(self, target) -> Optional[int]:
        if target == "leader":
            lead = self.leader_index()
            if lead is None:
                # No leader right now (election in progress): fall back to a fixed node so
                # the fault still happens; logged.
                lead = 0
                self.note("  (no leader found; using node0)")
            return lead
        return int(target)

    def _restart(self, i: int, extra_env: Optional[dict] = None):
        p = self.cluster.node(i)
        if p.alive():
            p.kill9()
        p.start(extra_env)
        if extra_env:
            self.armed[i] = dict(extra_env)
        else:
            self.armed.pop(i, None)

    def _links(self, which: str, nodes=None):
        urls = self.cluster.urls
        pairs = [(s, d) for (s, d) in self.net.links]
        if nodes is not None:
            sel = {urls[i] for i in nodes}
            pairs = [(s, d) for (s, d) in pairs if s in sel or d in sel]
        if which == "half":
            pairs = sorted(pairs)[::2]
        return pairs

    # ------------------------------------------------------------------ thread
    def run(self):
        try:
            for ev in self.schedule.events:
                wait = ev.t - self.clock()
                if wait > 0 and self.stop_event.wait(wait):
                    return
                if self.stop_event.is_set():
                    return
                self.apply(ev)
        except Exception:
            self.error = traceback.format_exc()
            self.note("NEMESIS ERROR\n" + self.error)

    def watch_crashes(self):
        """Record armed nodes that died at their crash point (exit 137)."""
        for i, spec in list(self.armed.items()):
            p = self.cluster.node(i)
            rc = p.returncode()
            if rc is not None and (i, spec.get("PICKLEDB_CRASH_POINT"), rc) not in self.crashes:
                self.crashes.append((i, spec.get("PICKLEDB_CRASH_POINT"), rc))
                self.note(f"node{i} found exited rc={rc} (armed with "
                          f"{spec.get('PICKLEDB_CRASH_POINT')})")

    def apply(self, ev: Event):
        c, net = self.cluster, self.net
        k, a = ev.kind, ev.args
        self.watch_crashes()
        if ev.phase == "start":
            if k in ("kill", "pause"):
                nodes = []
                for tgt in a["targets"]:
                    i = self.resolve(tgt)
                    if i not in nodes:
                        nodes.append(i)
                self.resolved[ev.fault] = nodes
                for i in nodes:
                    if k == "kill":
                        c.node(i).kill9()
                    else:
                        c.node(i).pause()
                self.note(f"#{ev.fault} {k} {a['targets']} -> nodes {nodes}")
            elif k == "disk":
                self._disk_fault(ev)
            elif k == "slowloris":
                self._slowloris(ev)
            elif k == "crash":
                i = self.resolve(a["target"])
                spec = f"{a['point']}:{a['hit']}"
                self.resolved[ev.fault] = [i]
                self._restart(i, {"PICKLEDB_CRASH_POINT": spec})
                self.note(f"#{ev.fault} crash {a['target']} -> node{i} restarted with "
                          f"PICKLEDB_CRASH_POINT={spec}")
            else:
                self._net_fault(ev)
        else:
            nodes = self.resolved.pop(ev.fault, [])
            if k == "kill":
                for i in nodes:
                    if not c.node(i).alive():
                        c.node(i).start()
                self.note(f"#{ev.fault} end kill: restarted nodes {nodes}")
            elif k == "pause":
                for i in nodes:
                    c.node(i).resume()
                self.note(f"#{ev.fault} end pause: resumed nodes {nodes}")
            elif k == "slowloris":
                attack = self.slowloris.pop(ev.fault, None)
                if attack is not None:
                    attack.close()
                    self.note(f"#{ev.fault} end slowloris: closed (the server cut off "
                              f"{attack.cut_off})")
            elif k == "disk":
                for i in nodes:
                    if i in self.down_for_disk:
                        self.down_for_disk.discard(i)
                        c.node(i).start()
                        self.note(f"#{ev.fault} end disk: node{i} restarted on its original "
                                  f"files")
            elif k == "crash":
                for i in nodes:
                    p = c.node(i)
                    state = "crashed" if not p.alive() else "not reached; killed"
                    rc = p.returncode()
                    self._restart(i)
                    self.note(f"#{ev.fault} end crash: node{i} {state} (rc={rc}); "
                              f"restarted clean")
            else:
                net.heal()
                self.note(f"#{ev.fault} end {k}: network healed")

    def _disk_fault(self, ev: Event, start_timeout: float = 20.0):
        a = ev.args
        i = self.resolve(a["target"])
        p = self.cluster.node(i)
        self.resolved[ev.fault] = [i]
        if a["stop"] == "term":
            rc = p.stop()
        else:
            p.kill9()
            rc = p.returncode()
        self.disk_faults += 1
        original = disk.read_tree(p.data_dir)
        damage = disk.plan_damage(p.data_dir, a)
        damage.apply()
        damaged = disk.read_tree(p.data_dir)
        self.note(f"#{ev.fault} disk node{i} stopped ({a['stop']}, rc={rc}); "
                  f"{damage.describe()}")
        log_from = disk.file_size(p.log_path)
        p.start(may_exit=True)
        outcome = self._await_start(p, start_timeout)
        output = disk.output_since(p.log_path, log_from)
        shown = disk.error_line(output) or disk.tail_lines(output, 1)
        problems = []
        if outcome == "refused":
            problems = disk.judge_refusal(damage, p.returncode(), output, damaged,
                                          disk.read_tree(p.data_dir))
            self.note(f"#{ev.fault} disk node{i} refused to start (rc={p.returncode()}): "
                      f"{shown}")
        elif outcome == "started" and damage.may_start:
            p.may_exit = False             # a legitimate start: it serves on from here
            self.note(f"#{ev.fault} disk node{i} started, which this damage allows")
            return
        elif outcome == "started":
            problems = ["STARTED on damaged files (it must refuse)"]
            p.kill9()
        else:
            problems = [f"neither refused nor answered /health within {start_timeout}s"]
            p.kill9()
        for problem in problems:
            self.disk_findings.append(f"node{i} {damage.describe()}: {problem}; its output: "
                                      f"{disk.tail_lines(output, 6)}")
        damage.restore()
        if disk.read_tree(p.data_dir) != original:
            disk.write_tree(p.data_dir, original)     # it changed files: undo all of it
        self.down_for_disk.add(i)
        self.note(f"#{ev.fault} disk node{i}: {outcome}; original files restored"
                  + (f"; WRONG: {'; '.join(problems)}" if problems else ""))

    def _slowloris(self, ev: Event):
        i = self.resolve(ev.args["target"])
        url = self.cluster.urls[i]
        self.resolved[ev.fault] = [i]
        attack = SlowLoris(url, self.slow_connections)
        self.slowloris[ev.fault] = attack
        opened = attack.open()
        self.slowloris_faults += 1
        t = self.clock()
        problem = probe_under_attack(url, documented_503_codes())
        self.note(f"#{ev.fault} slowloris node{i}: {opened} slow connections; a request "
                  f"then: {problem or 'answered'}")
        if problem and self.cluster.node(i).alive():
            self.slowloris_findings.append(
                f"t={t:.3f} node{i} ({url}) with {opened} connections trickling an unfinished "
                f"request head: GET /status {problem}")

    def _await_start(self, p, timeout: float) -> str:
        """'refused' (the process exited), 'started' (it answers /health) or 'hung'."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not p.alive():
                return "refused"
            if http_call(p.url, "GET", "/health", timeout=0.5, connect_timeout=0.3).status == 200:
                return "started"
            time.sleep(0.1)
        return "refused" if not p.alive() else "hung"

    def _net_fault(self, ev: Event):
        c, net, a, k = self.cluster, self.net, ev.args, ev.kind
        urls = c.urls
        if k == "isolate":
            i = self.resolve(a["target"])
            net.partition([[urls[i]], [u for j, u in enumerate(urls) if j != i]])
            self.note(f"#{ev.fault} isolate {a['target']} -> node{i}")
        elif k == "split":
            minority = list(a["minority"])
            if a.get("with_leader"):
                lead = self.leader_index()
                if lead is not None and lead not in minority:
                    minority[0] = lead
            rest = [j for j in range(c.n) if j not in minority]
            net.partition([[urls[j] for j in minority], [urls[j] for j in rest]])
            self.note(f"#{ev.fault} split minority={minority} majority={rest}")
        elif k == "oneway":
            i = self.resolve(a["target"])
            u = urls[i]
            if a["blocked"] == "out":
                pairs = [(s, d) for (s, d) in net.links if s == u]
            else:
                pairs = [(s, d) for (s, d) in net.links if d == u]
            net.set_many(pairs, blocked=True)
            self.note(f"#{ev.fault} oneway node{i} {a['blocked']}bound blocked")
        elif k == "resp_loss":
            i = self.resolve(a["target"])
            u = urls[i]
            if a["side"] == "out":
                pairs = [(s, d) for (s, d) in net.links if s == u]
            else:
                pairs = [(s, d) for (s, d) in net.links if d == u]
            net.set_many(pairs, drop_resp=True)
            self.note(f"#{ev.fault} resp_loss node{i} answers on {a['side']}bound "
                      f"links black-holed")
        elif k == "bridge":
            order = a["order"]
            half = len(order) // 2
            bridge = order[half]
            left, right = set(order[:half]), set(order[half + 1:])
            for (s, d) in net.links:
                si, di = urls.index(s), urls.index(d)
                cut = (si in left and di in right) or (si in right and di in left)
                net.set_link(s, d, blocked=cut)
            self.note(f"#{ev.fault} bridge left={sorted(left)} bridge={bridge} "
                      f"right={sorted(right)}")
        elif k == "delay":
            pairs = self._links(a["links"])
            net.set_many(pairs, delay=a["delay"], jitter=a["jitter"])
            self.note(f"#{ev.fault} delay {a['delay']}+{a['jitter']} on {len(pairs)} links")
        elif k == "drop":
            pairs = self._links(a["links"])
            net.set_many(pairs, drop_prob=a["prob"])
            self.note(f"#{ev.fault} drop p={a['prob']} on {len(pairs)} links")
        else:
            raise ValueError(k)

    # ------------------------------------------------------------------ healing
    def heal_all(self):
        """Undo every fault: network healed, paused nodes resumed, dead or still-armed nodes
        restarted without crash points."""
        self.stop_event.set()
        if self.is_alive():
            self.join(10)
        self.watch_crashes()
        self.net.heal()
        self.down_for_disk.clear()          # their files were restored when damaged
        for attack in self.slowloris.values():
            attack.close()
        self.slowloris.clear()
        for i, p in enumerate(self.cluster.procs):
            if p.paused:
                p.resume()
            if i in self.armed or not p.alive():
                rc = p.returncode()
                self._restart(i)
                self.note(f"heal: node{i} restarted clean (was rc={rc})")
        self.note("heal: network healed, all nodes running")
