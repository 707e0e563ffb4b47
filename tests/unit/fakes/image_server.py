"""A real HTTP server on 127.0.0.1 for the tests of images fetched for a volume import: it serves files
from memory and records every request it answers."""

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def no_proxy(monkeypatch):
    """Requests to 127.0.0.1 go straight to it, whatever proxy the machine names."""
    for var in PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)


class Server:
    """An HTTP server on 127.0.0.1: ``files`` {path: bytes}; ``requests`` the paths asked for, in order;
    ``truncate`` {path: bytes sent} (the Content-Length still announces the whole file); ``auth`` a
    (user, password) every request must carry."""

    def __init__(self):
        self.files, self.requests, self.truncate, self.auth = {}, [], {}, None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                if server.auth and self.headers.get("Authorization") != "Basic " + base64.b64encode(
                    ":".join(server.auth).encode()
                ).decode("ascii"):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="images"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files.get(self.path.split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: server.truncate.get(self.path, len(body))])
                if self.path in server.truncate:
                    self.close_connection = True

            def log_message(self, *_args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path, userinfo=""):
        return "http://{}127.0.0.1:{}{}".format(userinfo, self.httpd.server_address[1], path)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def serving(monkeypatch, files):
    """A running Server holding ``files`` ({path: bytes}), for a fixture to ``yield from``; stopped after."""
    no_proxy(monkeypatch)
    srv = Server()
    srv.files.update(files)
    yield srv
    srv.stop()
