"""A fake hypervisor for the guest_agent plugins: answers `virsh qemu-agent-command` like qemu-ga would.

It is an SSH transport stand-in (``run(command, stdin, timeout)``), not a mock of libvirt: it parses the shell
command the plugin would send, checks it stays under Linux's 128 KiB argument limit, and keeps a small guest
(files, processes) in memory.
"""

import base64
import json
import shlex

MAX_ARG = 128 * 1024


class FakeHypervisor:
    label = "root@fake:22"

    def __init__(self, domain="g1"):
        self.domain = domain
        self.files = {}
        self.handles = {}
        self.procs = {}
        self.commands = []
        self.requests = []
        self.error = None  # stderr text of the next failing virsh call(s)
        self.exec_results = []  # queue of dicts {rc, out, err, polls, signal}
        self.next_pid = 100

    def run(self, command, stdin=None, timeout=None):
        assert len(command.encode()) < MAX_ARG, "command of {} bytes".format(len(command))
        self.commands.append(command)
        argv = shlex.split(command)
        if self.error:
            return 1, b"", self.error.encode()
        if argv[:1] != ["virsh"] or "qemu-agent-command" not in argv:
            return 0, b"", b""
        request = json.loads(argv[-1])
        assert argv[-2] == self.domain
        self.requests.append(request)
        handler = getattr(self, "do_" + request["execute"].replace("-", "_"))
        ret = handler(request.get("arguments") or {})
        return 0, json.dumps({"return": ret}).encode() + b"\n\n", b""

    # ---- agent commands
    def do_guest_ping(self, args):
        return {}

    def do_guest_exec(self, args):
        pid = self.next_pid
        self.next_pid += 1
        spec = self.exec_results.pop(0) if self.exec_results else {}
        stdin = base64.b64decode(args.get("input-data", ""))
        if args["path"] == "/bin/chmod":
            spec = {"rc": 0}
        elif args["path"] == "/bin/sh" and args["arg"][1].startswith("exec 0<"):
            staged = args["arg"][3]
            stdin = self.files.pop(staged)
        out = spec.get("out")
        if out is None:
            out = b"ran " + json.dumps(args["arg"]).encode() + b" stdin=" + str(len(stdin)).encode()
        self.procs[pid] = dict(spec, out=out, stdin=stdin, polls=spec.get("polls", 1), args=args)
        return {"pid": pid}

    def do_guest_exec_status(self, args):
        proc = self.procs[args["pid"]]
        if proc["polls"] > 0:
            proc["polls"] -= 1
            return {"exited": False}
        ret = {"exited": True, "out-data": base64.b64encode(proc["out"]).decode()}
        if proc.get("err"):
            ret["err-data"] = base64.b64encode(proc["err"]).decode()
        if "signal" in proc:
            ret["signal"] = proc["signal"]
        else:
            ret["exitcode"] = proc.get("rc", 0)
        return ret

    def do_guest_file_open(self, args):
        handle = 1000 + len(self.handles)
        if "w" in args["mode"]:
            self.files[args["path"]] = b""
        self.handles[handle] = [args["path"], 0]
        return handle

    def do_guest_file_write(self, args):
        path = self.handles[args["handle"]][0]
        data = base64.b64decode(args["buf-b64"])
        self.files[path] += data
        return {"count": len(data), "eof": False}

    def do_guest_file_read(self, args):
        entry = self.handles[args["handle"]]
        data = self.files[entry[0]][entry[1] : entry[1] + args["count"]]
        entry[1] += len(data)
        return {
            "count": len(data),
            "buf-b64": base64.b64encode(data).decode(),
            "eof": entry[1] >= len(self.files[entry[0]]),
        }

    def do_guest_file_close(self, args):
        del self.handles[args["handle"]]
        return {}
