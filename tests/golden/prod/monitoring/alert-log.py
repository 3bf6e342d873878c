# Rendered by ccoas from the plan of stack prod (prod): do not edit.
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        for alert in body.get("alerts", []):
            labels = alert.get("labels", {})
            line = {
                "alert": labels.get("alertname"),
                "status": alert.get("status"),
                "service": labels.get("service"),
                "severity": labels.get("severity"),
                "summary": alert.get("annotations", {}).get("summary"),
                "starts_at": alert.get("startsAt"),
            }
            print("alert " + json.dumps(line, sort_keys=True), flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format, *args):
        pass


address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 9095
HTTPServer((address, port), Receiver).serve_forever()
