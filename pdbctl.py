#!/usr/bin/env python3
"""pdbctl: the command-line client of a PickleDB Cluster (like etcdctl or the rqlite shell).

    pdbctl [--url URL]... [--token T] [--json] COMMAND ...

Nodes come from repeated --url or $PICKLEDB_URLS (comma-separated), the token from --token or
$PICKLEDB_TOKEN. A request that finds its node down moves on to the next one; a 503 (no leader
yet, election under way) is retried on every node until --retry-for runs out. Writes carry an
Idempotency-Key, the same on every retry, so a write retried after a lost answer is applied once.
Exit codes: 0 success, 1 server or network error, 2 usage error.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from urllib.parse import quote, urlsplit

import click
import requests

import auth

DEFAULT_URLS = "http://127.0.0.1:4000,http://127.0.0.1:4001,http://127.0.0.1:4002"  # run_cluster.sh's
CONNECT_TIMEOUT = 2.0
IDEMPOTENCY_HEADER = "Idempotency-Key"
LAST_EVENT_HEADER = "Last-Event-ID"
STREAM_IDLE_SECONDS = 25.0  # the server sends a keep-alive every 10 s: silence longer than this is a dead node
MEMBER_CHANGE_SECONDS = 120.0  # POST /cluster/members answers once the new node caught up and was promoted
BACKUP_CHUNK = 1024 * 1024


class Failure(click.ClickException):
    """A server or network error: exit code 1, one line on stderr."""
    exit_code = 1

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


def describe_error(exc: requests.RequestException) -> str:
    """The reason of a requests error in a few words, without urllib3's object addresses."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
    return found.group(1) if found else type(exc).__name__


def server_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
        return f"{resp.status_code} {body['error']}: {body['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{resp.status_code} {resp.reason}"


class Client:
    """Requests to any node of the cluster, moving on from a node that is down or has no leader."""

    def __init__(self, urls: list[str], token: str | None, timeout: float, retry_for: float,
                 verify: str | bool = True):
        self.urls, self.timeout, self.retry_for = urls, timeout, retry_for
        self.current = 0  # the node that answered last is asked first
        self.session = requests.Session()
        self.session.verify = verify
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, *, body=None, params=None, write: bool = False,
                timeout: float | None = None, stream: bool = False, headers: dict | None = None,
                accept=lambda resp: resp.status_code != 503) -> requests.Response:
        """The first answer `accept` takes. Connection errors and refused answers move to the next
        node; after a round of every node, wait a little (bounded by --retry-for)."""
        headers = dict(headers or {})
        if write:
            headers[IDEMPOTENCY_HEADER] = str(uuid.uuid4())
        deadline = time.monotonic() + self.retry_for
        pause, tries, problem = 0.1, 0, ""
        while True:
            url = self.urls[self.current]
            try:
                resp = self.session.request(method, url + path, json=body, params=params, headers=headers,
                                            timeout=(CONNECT_TIMEOUT, timeout or self.timeout), stream=stream)
            except requests.RequestException as exc:
                problem = f"{url}: {describe_error(exc)}"
            else:
                if accept(resp):
                    return resp
                problem = f"{url}: {server_message(resp)}"
                resp.close()
            self.current = (self.current + 1) % len(self.urls)
            tries += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure(f"no node could serve {method} {path} (last: {problem})")
            if tries % len(self.urls) == 0:
                time.sleep(min(pause, left))
                pause = min(1.0, pause * 2)

    def json(self, method: str, path: str, ok=(200,), **kwargs):
        """The JSON body of a successful answer; any other status is a Failure with the server's message."""
        resp = self.request(method, path, **kwargs)
        if resp.status_code not in ok:
            raise Failure(server_message(resp))
        try:
            return resp.json()
        except ValueError:
            raise Failure(f"{resp.url}: answer is not JSON")


# ---------------------------------------------------------------------- output
def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str("-" if v is None else v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def emit(ctx: click.Context, data, human) -> None:
    """JSON for scripts (--json), else the human text `human(data)` builds."""
    if ctx.obj["json"]:
        click.echo(json.dumps(data, sort_keys=True))
    else:
        click.echo(human(data))


def client(ctx: click.Context) -> Client:
    return ctx.obj["client"]


def checked_url(url: str, hint: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError:
        raise click.BadParameter(f"{url!r} has an invalid port", param_hint=hint)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise click.BadParameter(f"{url!r} must look like http://HOST:PORT", param_hint=hint)
    return url


def parse_urls(values: tuple[str, ...]) -> list[str]:
    raw = list(values) or os.environ.get("PICKLEDB_URLS", DEFAULT_URLS).split(",")
    urls = [checked_url(u, "--url / $PICKLEDB_URLS") for u in raw if u.strip()]
    if not urls:
        raise click.BadParameter("no node URL given", param_hint="--url / $PICKLEDB_URLS")
    return urls


def positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter("must be positive")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", "urls", multiple=True, metavar="URL",
              help="a node's base URL; repeat for each node (default: $PICKLEDB_URLS, else 127.0.0.1:4000-4002)")
@click.option("--token", envvar="PICKLEDB_TOKEN", default=None, help="bearer token (default: $PICKLEDB_TOKEN)")
@click.option("--cacert", envvar="PICKLEDB_CACERT", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CA certificate to verify https nodes with (default: $PICKLEDB_CACERT, else the system's)")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts instead of tables")
@click.option("--timeout", type=float, default=10.0, show_default=True, callback=positive,
              help="seconds to wait for one answer")
@click.option("--retry-for", type=float, default=15.0, show_default=True, callback=positive,
              help="seconds to keep trying other nodes while none can serve (down, no leader)")
@click.pass_context
def cli(ctx, urls, token, cacert, as_json, timeout, retry_for):
    """Command-line client of a PickleDB Cluster."""
    ctx.obj = {"json": as_json, "client": Client(parse_urls(urls), token, timeout, retry_for, cacert or True)}


# ---------------------------------------------------------------------- cluster
@cli.command()
@click.pass_context
def status(ctx):
    """The cluster as one node sees it: every node's role, term, indexes and lag."""
    view = client(ctx).json("GET", "/cluster/status")

    def human(v):
        rows = [[n.get("id") or n.get("url"), n.get("role"), n.get("term"), n.get("commit_index"),
                 n.get("applied_index"), n.get("lag")] for n in v.get("nodes", [])]
        leader = v.get("cluster_leader")
        where = next((n.get("url") for n in v.get("nodes", []) if n.get("id") == leader and n.get("url") != leader), None)
        head = f"leader: {leader or 'none'}" + (f" ({where})" if where else "")
        if v.get("cluster_id"):
            head += f"   cluster: {v['cluster_id']}"
        return head + "\n" + table(["NODE", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG"], rows)
    emit(ctx, view, human)


@cli.group(invoke_without_command=True)
@click.pass_context
def members(ctx):
    """List the members (no subcommand), or add or remove one."""
    if ctx.invoked_subcommand is not None:
        return
    c = client(ctx)
    view = c.json("GET", "/cluster/members")
    answered = c.urls[c.current]
    if view.get("leader_url") and view["leader_url"] != answered:
        # Only the leader knows each member's match index and reachability.
        try:
            resp = c.session.get(view["leader_url"] + "/cluster/members", timeout=(CONNECT_TIMEOUT, c.timeout))
            if resp.status_code == 200:
                view = resp.json()
        except (requests.RequestException, ValueError):
            pass  # the follower's view, without progress

    def human(v):
        rows = [[m["id"] + (" *" if m["id"] == v.get("leader") else ""), m.get("url"), m.get("role"),
                 m.get("match_index"), {True: "yes", False: "no"}.get(m.get("reachable"))]
                for m in v.get("members", [])]
        return table(["ID", "URL", "ROLE", "MATCH", "REACHABLE"], rows) + "\n(* leader)"
    emit(ctx, view, human)


@members.command("add")
@click.argument("url")
@click.option("--id", "node_id", default=None, help="the new node's id (default: HOST:PORT of its URL)")
@click.option("--learner", is_flag=True, help="keep it a learner (never promoted to voter)")
@click.pass_context
def members_add(ctx, url, node_id, learner):
    """Add the node at URL (it joins as a learner and is promoted once caught up)."""
    body = {"url": url.rstrip("/")}
    if node_id:
        body["id"] = node_id
    if learner:
        body["learner"] = True
    c = client(ctx)
    view = c.json("POST", "/cluster/members", ok=(200, 201), body=body, write=True,
                  timeout=max(c.timeout, MEMBER_CHANGE_SECONDS))
    emit(ctx, view, lambda v: f"member {v['member']['id']} at {v['member']['url']} is a {v['member']['role']}")


@members.command("remove")
@click.argument("node_id", metavar="ID")
@click.pass_context
def members_remove(ctx, node_id):
    """Remove member ID (it may be down; the leader steps down if it removes itself)."""
    view = client(ctx).json("DELETE", f"/cluster/members/{quote(node_id, safe='')}", write=True)
    emit(ctx, view, lambda v: f"removed {node_id}")


@cli.group()
def leader():
    """Leadership."""


@leader.command("transfer")
@click.argument("node_id", metavar="[ID]", required=False)
@click.pass_context
def leader_transfer(ctx, node_id):
    """Hand leadership to ID, or to the most up-to-date voter."""
    view = client(ctx).json("POST", "/cluster/leader", body={"id": node_id} if node_id else {}, write=True)
    emit(ctx, view, lambda v: f"leader: {v['leader']} ({v['url']})")


# ---------------------------------------------------------------------- tasks
@cli.group()
def tasks():
    """List, add, complete, edit and remove tasks."""


def task_rows(items):
    return table(["ID", "DONE", "TITLE", "UPDATED"],
                 [[t["id"], "x" if t.get("completed") else "", t.get("title"), t.get("updated_at")] for t in items])


@tasks.command("ls")
@click.option("--limit", type=int, default=None, callback=positive, help="at most this many (default: all)")
@click.option("--stale", is_flag=True, help="read the answering node's copy, even if it lags")
@click.pass_context
def tasks_ls(ctx, limit, stale):
    """List tasks, oldest first."""
    c, items, offset = client(ctx), [], 0
    while offset is not None and (limit is None or len(items) < limit):
        params = {"offset": offset, "limit": min(10_000, limit - len(items)) if limit else 10_000}
        if stale:
            params["consistency"] = "stale"
        page = c.json("GET", "/tasks", params=params)
        items += page["tasks"]
        offset = page.get("next_offset")
    emit(ctx, items, task_rows)


def show_task(ctx, task, verb):
    emit(ctx, task, lambda t: f"{verb} {t['id']}: {t['title']}" + (" (done)" if t.get("completed") else ""))


@tasks.command("add")
@click.argument("title")
@click.option("--description", default=None)
@click.pass_context
def tasks_add(ctx, title, description):
    """Add a task; prints its id."""
    body = {"title": title}
    if description is not None:
        body["description"] = description
    show_task(ctx, client(ctx).json("POST", "/tasks", ok=(201,), body=body, write=True), "added")


@tasks.command("done")
@click.argument("task_id", metavar="ID")
@click.option("--undo", is_flag=True, help="mark it not done")
@click.pass_context
def tasks_done(ctx, task_id, undo):
    """Mark task ID done."""
    task = client(ctx).json("PUT", f"/tasks/{quote(task_id, safe='')}", body={"completed": not undo}, write=True)
    show_task(ctx, task, "updated")


@tasks.command("edit")
@click.argument("task_id", metavar="ID")
@click.option("--title", default=None)
@click.option("--description", default=None)
@click.option("--done/--not-done", "completed", default=None)
@click.pass_context
def tasks_edit(ctx, task_id, title, description, completed):
    """Change task ID's title, description or state."""
    body = {k: v for k, v in (("title", title), ("description", description), ("completed", completed))
            if v is not None}
    if not body:
        raise click.UsageError("give at least one of --title, --description, --done/--not-done")
    show_task(ctx, client(ctx).json("PUT", f"/tasks/{quote(task_id, safe='')}", body=body, write=True), "updated")


@tasks.command("rm")
@click.argument("task_id", metavar="ID")
@click.pass_context
def tasks_rm(ctx, task_id):
    """Remove task ID."""
    view = client(ctx).json("DELETE", f"/tasks/{quote(task_id, safe='')}", write=True)
    emit(ctx, view, lambda v: f"removed {task_id}")


# ---------------------------------------------------------------------- events
def server_sent_events(resp: requests.Response):
    """(id, event, data) for each event of a text/event-stream body, as the HTML standard parses it."""
    event_id, event, data = None, "message", []
    for line in resp.iter_lines(chunk_size=None, decode_unicode=True):
        if line == "":
            if data:
                yield event_id, event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            event_id = value
        elif field == "event":
            event = value
        elif field == "data":
            data.append(value)


@cli.command()
@click.option("--since", type=int, default=None, help="start after this event id (log index)")
@click.option("--count", type=int, default=None, callback=positive, help="stop after this many events")
@click.pass_context
def watch(ctx, since, count):
    """Follow the event stream (change, applied and reset events). When a node goes away or
    closes the stream, resume on the next node after the last event id (Last-Event-ID)."""
    c = client(ctx)
    last_id = str(since) if since is not None else None
    seen = 0

    def streaming(resp):
        return resp.status_code == 200 and resp.headers.get("Content-Type", "").startswith("text/event-stream")
    while True:
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers[LAST_EVENT_HEADER] = last_id
        resp = c.request("GET", "/events", headers=headers, stream=True, timeout=STREAM_IDLE_SECONDS,
                         accept=lambda r: streaming(r) or r.status_code not in (503, 429))
        if not streaming(resp):
            raise Failure(server_message(resp))
        try:
            for event_id, event, raw in server_sent_events(resp):
                try:
                    data = json.loads(raw)
                except ValueError:
                    data = raw
                if event_id:
                    last_id = event_id  # every id is a resume point: all changes up to it were sent
                if ctx.obj["json"]:
                    click.echo(json.dumps({"id": event_id, "event": event, "data": data}, sort_keys=True))
                else:
                    click.echo(f"{event_id or '-'}  {event}  {raw}")
                seen += 1
                if count is not None and seen >= count:
                    return
        except requests.RequestException:
            pass  # the node went away mid-stream: resume on the next one
        finally:
            resp.close()
        c.current = (c.current + 1) % len(c.urls)


# ---------------------------------------------------------------------- backups
@cli.command("backup")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, writable=True))
@click.option("--stale", is_flag=True, help="take it from the answering node's state, even if it lags")
@click.pass_context
def backup_command(ctx, path, stale):
    """Save a consistent backup of the cluster to FILE (replaced only once complete and verified)."""
    import backup
    c = client(ctx)
    resp = c.request("GET", "/cluster/backup", params={"consistency": "stale"} if stale else None, stream=True)
    if resp.status_code != 200:
        raise Failure(server_message(resp))
    directory = os.path.dirname(os.path.abspath(path))
    try:
        handle = tempfile.NamedTemporaryFile(dir=directory, prefix=".pdbctl-backup-", delete=False)
    except OSError as exc:
        raise Failure(f"cannot write in {directory}: {exc.strerror or exc}")
    try:
        with resp, handle:
            try:
                for chunk in resp.iter_content(BACKUP_CHUNK):
                    handle.write(chunk)
            except requests.RequestException as exc:
                raise Failure(f"{resp.url}: the backup was cut off: {describe_error(exc)}")
            handle.flush()
            os.fsync(handle.fileno())
        descriptor, _ = backup.read_backup(handle.name)  # checksum, format, counts
        with open(handle.name, "rb") as f:
            f.seek(-66, os.SEEK_END)
            checksum = backup.backup_checksum(f.read())
        announced = resp.headers.get("X-PickleDB-Backup-SHA256")
        if announced and announced != checksum:
            raise Failure(f"{resp.url}: the backup's checksum {checksum} is not the one announced ({announced})")
        os.replace(handle.name, path)
    except backup.BackupError as exc:
        raise Failure(str(exc))
    except OSError as exc:
        raise Failure(f"cannot write {path}: {exc.strerror or exc}")
    finally:
        if os.path.exists(handle.name):
            os.unlink(handle.name)
    summary = {**descriptor, "file": path, "sha256": checksum}
    emit(ctx, summary, lambda d: f"saved {path}: index {d['index']}, {d['tasks']} tasks, {d['keys']} keys, "
                                 f"cluster {d['cluster_id']}, sha256 {d['sha256']}")


@cli.command("restore")
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False))
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="the first node's data directory (missing or empty)")
@click.option("--node-url", required=True, help="that node's URL, e.g. http://127.0.0.1:4000")
@click.option("--node-id", default=None, help="that node's id (default: HOST:PORT of --node-url)")
@click.pass_context
def restore_command(ctx, path, data_dir, node_url, node_id):
    """Offline: seed a NEW one-node cluster (new cluster id) from backup FILE. Start that node
    without --peers, then grow the cluster with nodes started with --join."""
    import backup
    from cluster_manager import NODE_ID, default_id
    node_url = checked_url(node_url, "--node-url")
    if node_id is not None and not NODE_ID.fullmatch(node_id):
        raise click.BadParameter("must be 1-64 characters of A-Z a-z 0-9 . _ : -", param_hint="--node-id")
    node_id = node_id or default_id(node_url)
    try:
        done = backup.restore(path, data_dir, node_id, node_url)
    except backup.BackupError as exc:
        raise Failure(str(exc))
    emit(ctx, done, lambda d: f"restored {d['tasks']} tasks and {d['keys']} keys at index {d['index']} into "
                              f"{data_dir}: new cluster {d['cluster_id']} with one voter {node_id} ({node_url})")


# ---------------------------------------------------------------------- tokens
@cli.group()
def token():
    """Client tokens of a node's --auth-file."""


def token_name(ctx, param, value):
    if not auth.NAME_PATTERN.fullmatch(value):
        raise click.BadParameter("must be 1-64 characters of A-Z a-z 0-9 . _ @ -")
    return value


@token.command("add")
@click.argument("name", callback=token_name)
@click.argument("role", type=click.Choice(auth.ROLES))
@click.option("--auth-file", required=True, type=click.Path(dir_okay=False),
              help="the auth file the nodes read (created with mode 0600 if missing)")
@click.pass_context
def token_add(ctx, name, role, auth_file):
    """Create token NAME with ROLE in the auth file; the token is printed once (the file keeps its
    SHA-256). Copy the file to every node and send them SIGHUP to load it."""
    try:
        secret = auth.create_token(auth_file, name, role)
    except auth.AuthFileError as exc:
        raise Failure(str(exc))
    except OSError as exc:
        raise Failure(f"cannot write auth file {auth_file}: {exc.strerror or exc}")
    emit(ctx, {"name": name, "role": role, "token": secret, "auth_file": auth_file}, lambda d: d["token"])
    if not ctx.obj["json"]:
        click.echo(f"token {name!r} ({role}) added to {auth_file}; it is shown only now. Send SIGHUP to the "
                   "nodes to load it.", err=True)


# ---------------------------------------------------------------------- entry point
if __name__ == "__main__":
    cli(prog_name="pdbctl")
