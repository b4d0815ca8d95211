"""The README's reward examples run as written: the function file, and the endpoint with the
HTTP source talking to it."""
import os
import subprocess
import sys
import threading

from rlhf_ds.rewards import HTTPSource, RewardBatch, function_source

from ..conftest import clean_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "examples")
BATCH = RewardBatch(["what is 2 + 3?", "what is 2 + 3?", "name a colour."], ["answer: 5", "it is 15", "blue"],
                    {"answer": ["5", "5", None]})


def test_the_example_file_runs():
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "my_reward.py")], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'answer: 5'" in proc.stdout and "reward/contains_answer" in proc.stdout


def test_the_example_functions_by_path(monkeypatch):
    monkeypatch.chdir(REPO)                  # the path as the README writes it, from the repository root
    got = function_source("examples/my_reward.py:contains_answer")(BATCH)
    assert got.values.tolist() == [1.0, 0.0, 0.0] and got.applies.tolist() == [True, True, False]
    brevity = function_source(os.path.join(EXAMPLES, "my_reward.py:brevity"))(BATCH).values.tolist()
    assert brevity[2] > brevity[1]          # one word beats three


def test_the_example_server_with_the_http_source(monkeypatch):
    import importlib.util

    # The server script puts examples/ on sys.path and imports my_reward: undo both after the test.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, "my_reward", None)
    monkeypatch.delitem(sys.modules, "my_reward")

    spec = importlib.util.spec_from_file_location("example_reward_server", os.path.join(EXAMPLES, "reward_server.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = module.serve(port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/score"
        got = HTTPSource("judge", url, timeout_s=5, retries=0, chunk_size=2)(BATCH)
    finally:
        server.shutdown()
        server.server_close()
    assert got.values.tolist() == [1.0, 0.0, 0.0] and got.applies.tolist() == [True, True, False]
