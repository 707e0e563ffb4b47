"""An HTTP server for the lab tests, run inside a lab host's namespaces (``lab exec``): it serves the files of
a directory and appends the path of every request it answers to a log file, so that a test can count the
requests that reached it.

    request_counting_server.py DIRECTORY LOG READY

It binds 127.0.0.1 on a free port and, once it listens, writes ``{"pid": ..., "port": ...}`` to READY.
It runs until it is sent SIGTERM. Standard library only (it runs on the host's system Python).
"""

import functools
import json
import os
import signal
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class CountingHandler(SimpleHTTPRequestHandler):
    log_path = None

    def send_head(self):
        with open(self.log_path, "a") as fh:
            fh.write(self.path + "\n")
        return super().send_head()

    def log_message(self, *_args):
        pass


def main(directory, log, ready):
    open(log, "a").close()
    handler = functools.partial(CountingHandler, directory=directory)
    CountingHandler.log_path = log
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    tmp = ready + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"pid": os.getpid(), "port": httpd.server_address[1]}, fh)
    os.rename(tmp, ready)
    httpd.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:4])
