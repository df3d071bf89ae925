"""A downstream service for Keel's jobs, as a Keel user would write one: it verifies every call with the official
Standard Webhooks library (`standardwebhooks`), then acts on the input's `template`.

Usage: job_service.py SECRET. Listens on 127.0.0.1 on a free port and prints the port on its first line of stdout.

- POST /notify: 401 if the signature does not verify. Templates: `ok` answers {"delivered": true}; `slow:N`
  answers the same after N milliseconds; `fail` answers 400; `flaky` answers 503 to the first call of each
  `webhook-id`, then {"delivered": true}. An SMS's `text` (notify.sms) acts as its template.
  A callback job's `workflow` (sidecar.orchestrate) of `callback` answers 202: it will report on Keel's callback
  route with the `keel-callback-token` it was sent (the test does that for it).
- GET /calls: every call so far, as JSON: [{"id", "attempt", "template", "verified", "token", "event", "at"}].
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

webhook = Webhook(sys.argv[1])
calls = []
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with lock:
            self.answer(200, list(calls))

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            webhook.verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        document = json.loads(body) if body else {}
        template = document.get("template") or document.get("workflow") or document.get("text") or ""
        message_id = headers.get("webhook-id", "")
        with lock:
            seen = sum(1 for call in calls if call["id"] == message_id)
            calls.append({"id": message_id, "attempt": headers.get("keel-attempt"), "template": template,
                          "verified": verified, "token": headers.get("keel-callback-token"),
                          "event": headers.get("keel-event"), "at": time.time()})
        if not verified:
            return self.answer(401, {"error": "signature"})
        if template.startswith("slow:"):
            time.sleep(int(template.split(":")[1]) / 1000)
        if template == "fail":
            return self.answer(400, {"error": "no such template"})
        if template == "callback":
            return self.answer(202, {"accepted": True})
        if template == "flaky" and seen == 0:
            return self.answer(503, {"error": "try again"})
        self.answer(200, {"delivered": True})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
