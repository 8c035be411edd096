"""The LLM judge that judged tasks (ActivityNet-QA) call per sample: where it is, and is it there.

lmms-eval's activitynetqa ``process_results`` posts every answer to an OpenAI-compatible chat
endpoint (``OPENAI_API_URL``, key ``OPENAI_API_KEY``, model ``MODEL_VERSION``; its utils.py reads
them when lmms-eval loads the task) and, when the judge does not answer, retries five times with
5 s pauses per sample, then scores the sample "no". ``check_judge`` points the task at the
configured endpoint and asks it one question before any sample runs, so a sweep whose judge is
unreachable fails that cell in seconds with one line instead.
"""

from __future__ import annotations

import os

DEFAULT_JUDGE_URL = "https://api.openai.com/v1/chat/completions"  # activitynetqa/utils.py's default
DEFAULT_JUDGE_MODEL = "gpt-4o-2024-11-20"  # activitynetqa/utils.py's default MODEL_VERSION
PROBE_TIMEOUT_S = 10.0


class JudgeUnavailable(RuntimeError):
    """The judge a task needs did not answer a probe."""


def check_judge(task: str, url: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> str:
    """Set the judge endpoint for ``task`` (``url``, else $OPENAI_API_URL, else OpenAI's) and check
    that it answers a chat completion; return the endpoint or raise ``JudgeUnavailable``."""
    import requests

    url = url or os.environ.get("OPENAI_API_URL") or DEFAULT_JUDGE_URL
    os.environ["OPENAI_API_URL"] = url  # read by the task's utils.py when lmms-eval loads it
    payload = {
        "model": os.environ.get("MODEL_VERSION", DEFAULT_JUDGE_MODEL),
        "messages": [{"role": "user", "content": "Reply with {'pred': 'yes', 'score': 5}"}],
        "temperature": 0,
        "max_tokens": 16,
    }
    headers = {"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', '')}", "Content-Type": "application/json"}
    try:
        response = requests.post(url, headers=headers, json=payload, timeout=timeout)
        response.raise_for_status()
        response.json()["choices"][0]["message"]["content"]
    except Exception as exc:  # refused, timed out, HTTP error, not a chat completion
        reason = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise JudgeUnavailable(
            f"task {task!r} needs its judge, which did not answer at {url} ({exc.__class__.__name__}: {reason}); "
            "set judge_url in the config (and OPENAI_API_KEY)"
        ) from None
    return url
