"""An example reward endpoint for `{type: http, url: ...}` sources, with the standard library only.

    python examples/reward_server.py --port 8000
    # then, in the run's config:
    rewards:
      sources:
        - {type: http, url: "http://127.0.0.1:8000/score", timeout_s: 10, retries: 3, max_in_flight: 4}

It answers each POST {"prompts": [...], "completions": [...], "<column>": [...], ...} with
{"rewards": [...]}, one number (or null) per completion, here from `contains_answer` in
my_reward.py. Any status other than 200 is an error; 408, 429 and 5xx are retried by the client.
"""
import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from my_reward import contains_answer  # noqa: E402


class RewardHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            rewards = contains_answer(**body) if "answer" in body else [None] * len(body["completions"])
            status, answer = 200, {"rewards": rewards}
        except (ValueError, KeyError, TypeError) as e:       # a request this server cannot score
            status, answer = 400, {"error": f"{type(e).__name__}: {e}"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def serve(host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """The server, bound (port 0: any free port); call serve_forever() on it."""
    server = ThreadingHTTPServer((host, port), RewardHandler)
    server.daemon_threads = True
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = serve(args.host, args.port)
    print(f"scoring on http://{args.host}:{server.server_address[1]}/score", flush=True)
    server.serve_forever()
