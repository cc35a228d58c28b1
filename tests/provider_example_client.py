# The provider's example client, copied verbatim from its Error Handling page
# (shared/reference/nocaptcha-error-handling.txt, "Async flow with backoff (Python)"),
# below these comment lines. tests/test_provider_example.py sets BASE_URL and API_KEY on
# the imported module; nothing else is changed, so neither linter nor formatter may touch it.
# ruff: noqa
# fmt: off

import time
import random
import requests

BASE_URL = "https://api.nocaptchaai.com"
API_KEY = "YOUR_API_KEY"

RETRYABLE = {2, 16, 17, 18, 21}


def post(path, payload):
    resp = requests.post(f"{BASE_URL}{path}", json=payload, timeout=30)
    data = resp.json()
    code = data.get("code")
    if code in RETRYABLE:
        wait = data.get("retryAfterSec")
        raise RetryableError(wait)
    if code:  # non-zero code that is not retryable
        raise RuntimeError(f"{code}: {data.get('msg')}")
    return data


class RetryableError(Exception):
    def __init__(self, retry_after_sec=None):
        self.retry_after_sec = retry_after_sec


def with_backoff(fn, max_attempts=6):
    for attempt in range(max_attempts):
        try:
            return fn()
        except RetryableError as err:
            if attempt == max_attempts - 1:
                raise
            wait = err.retry_after_sec
            if wait is None:
                wait = min(2 ** attempt, 30) + random.random()
            time.sleep(wait)
    raise RuntimeError("exceeded max retry attempts")


def solve(task):
    created = with_backoff(lambda: post("/createTask", {
        "clientKey": API_KEY,
        "task": task,
    }))
    task_id = created["taskId"]

    while True:
        result = with_backoff(lambda: post("/getTaskResult", {
            "clientKey": API_KEY,
            "taskId": task_id,
        }))
        status = result.get("status")
        if status == "ready":
            return result["solution"]
        time.sleep(2)  # still processing; poll again


if __name__ == "__main__":
    solution = solve({"type": "ImageToTextTask", "body": "BASE64_IMAGE"})
    print(solution)
