"""Helpers shared by the Python benchmark scripts (scripts/bench-hub,
scripts/bench-limits-outage): ports, processes, CPU time from /proc, `oha`, a throwaway
Redis, and configurations derived from the `hub.toml` that `devhub --banks-only` writes.

Every process started here through `spawn` gets SIGKILL when the script dies (Linux's
parent-death signal), so nothing outlives a script killed with SIGKILL; the scripts stop
what they started in `finally` blocks on every other exit path (`exit_on_signals` turns
SIGTERM and SIGHUP into SystemExit so those blocks run).
"""
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request

TICKS = os.sysconf("SC_CLK_TCK")
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def sh(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, **kw)


def _die_with_parent():
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(cmd, **kw):
    """subprocess.Popen, the child killed (SIGKILL) if this script dies first."""
    return subprocess.Popen(cmd, preexec_fn=_die_with_parent, **kw)


def exit_on_signals():
    """SIGTERM and SIGHUP raise SystemExit, so `finally` blocks stop the processes."""
    def handler(signum, _frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid, reaped=False):
    """CPU time (user + system, every thread) of the process and of its live child
    processes (nginx's workers); with `reaped`, also its children that have already
    exited and been waited for (Redis's AOF-rewrite children)."""
    fields = _stat(pid)
    total = int(fields[11]) + int(fields[12])
    if reaped:
        total += int(fields[13]) + int(fields[14])
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pid:
            try:
                f = _stat(entry)
                if int(f[1]) == pid:
                    total += int(f[11]) + int(f[12])
            except (OSError, ValueError, IndexError):
                continue
    return total / TICKS


def thread_cpu_seconds(pid, name):
    """CPU time of the process's threads called `name` (/proc/PID/task/*/comm)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            fields = _stat(f"{pid}/task/{tid}")
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / TICKS


def wait_for(pred, what, timeout=60, interval=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def find_oha():
    found = shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
    if not os.path.exists(found):
        sh(["cargo", "install", "oha", "--locked"])
    return found


def oha_command(oha, url, headers, tls, seconds, conns, rate=None, db=None, args=()):
    cmd = [oha, "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-c", str(conns),
           "--cacert", tls["ca"], "--cert", tls["cert"], "--key", tls["key"]]
    if db:
        if os.path.exists(db):
            os.remove(db)
        cmd += ["--db-url", db]
    if rate:
        cmd += ["-q", str(rate), "--latency-correction"]
    for h in headers:
        cmd += ["-H", h]
    return cmd + list(args) + [url]


def oha_json(out):
    # Only the JSON object: keep the parse robust to anything oha adds around it.
    return json.loads(out[out.index("{"): out.rindex("}") + 1])


def percentile(sorted_ms, q):
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * q))]


def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat(entry)[1]) == pid:
                    found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def stop_tree(proc, sig=signal.SIGQUIT):
    """Stops a process and its child processes (nginx's master and workers): `sig`, then
    SIGKILL for whatever is left after 10 s."""
    kids = children(proc.pid)
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop(proc, sig=signal.SIGINT, timeout=10):
    """`sig` (None: already sent), then SIGKILL after `timeout` seconds."""
    if proc is None:
        return
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ensure_debian(binary, package, paths=()):
    """The binary on PATH (or at one of `paths`), installed with apt-get when missing."""
    def look():
        return shutil.which(binary) or next((p for p in paths if os.path.exists(p)), None)
    found = look()
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sh(sudo + ["apt-get", "update", "-qq"], env=env)
    sh(sudo + ["apt-get", "install", "-y", "-qq", package], env=env)
    found = look()
    if not found:
        raise SystemExit(f"{binary} not found after installing {package}")
    return found


class Redis:
    """A throwaway Redis (Debian's redis-server, or $REDIS_SERVER) on loopback, in its own
    directory, with the persistence the hub's monthly counts rely on: AOF, fsync every
    second, no RDB snapshots. pause/resume/kill/restart for the outage benchmark; `stop`
    is safe on every exit path (a paused server is resumed first)."""

    def __init__(self, directory, port=None):
        self.binary = os.environ.get("REDIS_SERVER") or ensure_debian(
            "redis-server", "redis-server", ("/usr/bin/redis-server",))
        self.dir = os.path.abspath(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or free_port()
        self.proc = None
        self.start()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self):
        return self.proc.pid

    def start(self):
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "yes",
               "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
               "--dir", self.dir, "--daemonize", "no", "--logfile", os.path.join(self.dir, "redis.log")]
        self.proc = spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(self.ping, f"redis-server on port {self.port}", timeout=20, interval=0.01)
        except BaseException:
            self.stop()
            raise

    def ping(self):
        if self.proc.poll() is not None:
            raise SystemExit(f"redis-server exited ({self.proc.returncode}); see {self.dir}/redis.log")
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def command(self, *words):
        """One command over a fresh connection; the reply's raw bytes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"*%d\r\n" % len(words) + b"".join(
                b"$%d\r\n%s\r\n" % (len(w.encode()), w.encode()) for w in words))
            data = s.recv(65536)
            if data.startswith(b"$"):
                size = int(data[1:data.index(b"\r\n")])
                while len(data) < data.index(b"\r\n") + 2 + size:
                    more = s.recv(65536)
                    if not more:
                        break
                    data += more
            return data

    def info(self):
        """INFO's fields (server, cpu, persistence, stats, keyspace)."""
        text = self.command("INFO").decode(errors="replace")
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def restart(self):
        """On the same port and directory: the AOF is reloaded."""
        if self.proc.poll() is None:
            self.kill()
        self.start()

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(signal.SIGCONT)
        except ProcessLookupError:
            return
        stop(self.proc, signal.SIGTERM)


def redis_info(redis):
    keep = ("redis_version", "used_cpu_sys", "used_cpu_user", "used_cpu_sys_children", "used_cpu_user_children",
            "total_commands_processed", "aof_enabled", "aof_rewrites", "aof_current_size", "db0", "used_memory_human")
    try:
        info = redis.info()
    except OSError as e:
        return {"error": str(e)}
    return {k: info[k] for k in keep if k in info}


def start_banks(devhub, out, port, admin, env, quiet, threads=None):
    """Sandbox banks (`devhub --banks-only`) writing hub.toml for a hub on `port`/`admin`,
    the consents from a file; returns the process and the manifest."""
    banks = spawn([devhub, "--banks-only", "--consents-from", "file", "--dir", out, "--port", str(port),
                   "--admin-port", str(admin), "--rate-limit", "10000000",
                   "--customers", "100"] + (["--threads", threads] if threads else []),
                  env=env, **quiet)
    manifest = os.path.join(out, "manifest.json")
    try:
        wait_for(lambda: os.path.exists(manifest) and json.load(open(manifest)), "the banks")
    except BaseException:
        stop(banks)
        raise
    return banks, json.load(open(manifest))


def derive_config(out, name, port, admin, new_port, new_admin, edit=None):
    """`<name>.toml` from the hub's hub.toml: its own ports and journal, then `edit(text)`."""
    text = open(os.path.join(out, "hub.toml")).read()
    for old, new in ((f'"127.0.0.1:{port}"', f'"127.0.0.1:{new_port}"'),
                     (f'"127.0.0.1:{admin}"', f'"127.0.0.1:{new_admin}"'),
                     ("audit.jsonl", f"audit-{name}.jsonl")):
        if old not in text:
            raise SystemExit(f"cannot derive the {name} configuration: {old} not in hub.toml")
        text = text.replace(old, new)
    if edit:
        text = edit(text)
    path = os.path.join(out, f"{name}.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


_LIMITS_OWN = re.compile(r"^\[limits\.(store|classes)(\.[^\]]*)?\]\s*$")
_HEADER = re.compile(r"^\s*\[")
CLASSES = ("user", "user_provider", "consent_route", "ip", "monthly")


def with_shared_limits(text, store, classes=None):
    """hub.toml's text with `[limits.store]` set to `store` (a dict of its settings) and,
    when given, `[limits.classes]` set to `classes` (class -> dict); any store or classes
    the file had are replaced. Checked by reading the result back."""
    def value(v):
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return str(v)
    lines, kept, skipping, in_limits, last_limits = text.split("\n"), [], False, False, None
    for line in lines:
        if _HEADER.match(line):
            skipping = bool(_LIMITS_OWN.match(line.strip()))
            in_limits = line.strip() == "[limits]" or line.strip().startswith("[limits.")
        elif in_limits and not skipping and re.match(r"^\s*(store|classes)\s*=", line):
            continue  # an inline store/classes inside [limits]
        if skipping:
            continue
        kept.append(line)
        if in_limits and line.strip():
            last_limits = len(kept)
    if last_limits is None:
        raise SystemExit("hub.toml has no [limits] section")
    block = ["", "[limits.store]"] + [f"{k} = {value(v)}" for k, v in store.items()]
    if classes:
        block += ["", "[limits.classes]"] + [f"{k} = {value(v)}" for k, v in classes.items()]
    out = "\n".join(kept[:last_limits] + block + kept[last_limits:])
    limits = tomllib.loads(out)["limits"]
    if limits.get("store", {}).get("url") != store["url"]:
        raise SystemExit("the derived configuration lost [limits.store]")
    for k, v in (classes or {}).items():
        if limits.get("classes", {}).get(k) != v:
            raise SystemExit(f"the derived configuration lost [limits.classes] {k}")
    return out


def check_config(gateway, path):
    chk = subprocess.run([gateway, "check", "--config", path], capture_output=True, text=True)
    if chk.returncode != 0:
        raise SystemExit(f"gateway check {path}:\n{chk.stdout}{chk.stderr}")


def start_gateway(gateway, path, admin, env, quiet, what):
    proc = spawn([gateway, "run", "--config", path], env=env, **quiet)
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz").status == 200, what)
    except BaseException:
        stop(proc)
        raise
    return proc


def metrics(admin, prefix="hub_limit_", buckets=False):
    """The admin endpoint's series whose name starts with `prefix`: {'name{labels}': value}
    (histogram buckets left out unless `buckets`)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2).read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(prefix) and (buckets or "_bucket{" not in line):
            key, _, v = line.rpartition(" ")
            try:
                found[key] = float(v)
            except ValueError:
                continue
    return found


def store_calls(before, after):
    """What the hub's limit store did between two `metrics(..., buckets=True)` snapshots:
    calls to Redis, their mean duration, the share under each bucket bound of
    `hub_limit_store_seconds` (and the bucket holding p50/p99: an upper bound), errors by
    kind and decisions taken by the failure policy."""
    def d(k):
        return after.get(k, 0) - before.get(k, 0)
    calls = d("hub_limit_store_seconds_count")
    out = {"calls": int(calls),
           "mean_ms": round(d("hub_limit_store_seconds_sum") * 1000 / calls, 3) if calls else None,
           "errors": {k.split('"')[1]: int(d(k)) for k in after
                      if k.startswith("hub_limit_store_errors_total{") and d(k)},
           "failure_policy": int(sum(d(k) for k in after if k.startswith("hub_limit_failure_policy_total")))}
    bounds = sorted((float(k.split('le="')[1].split('"')[0]), d(k)) for k in after
                    if k.startswith("hub_limit_store_seconds_bucket{") and 'le="+Inf"' not in k)
    if calls:
        out["share_within_ms"] = {f"{b * 1000:g}": round(n / calls, 4) for b, n in bounds}
        for q in (0.5, 0.99, 0.999):
            out[f"p{q * 100:g}_at_most_ms"] = next((b * 1000 for b, n in bounds if n >= q * calls), None)
    return out
