"""Prometheus metrics of the server, in the text exposition format (no client library needed).

fastvid_requests_total{route,code}   counter: every HTTP response, by route and status code
fastvid_errors_total{code}           counter: error responses by their OpenAI-style error code
fastvid_queue_depth                  gauge: requests waiting for the model
fastvid_requests_running             gauge: requests being answered
fastvid_ttft_seconds                 histogram: admission to first token
fastvid_decode_tokens_per_second     histogram: per answer
fastvid_batch_size                   histogram: answers decoded together
fastvid_feature_cache_total{result}  counter: memory (features reused in RAM), hit (disk cache), miss, off
fastvid_generated_tokens_total, fastvid_prompt_tokens_total   counters
"""

from __future__ import annotations

import threading
from collections import defaultdict

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPS_BUCKETS = (1, 5, 10, 25, 50, 100, 200, 400, 800, 1600, 3200)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.sum:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


def _label(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.cache: dict[str, int] = defaultdict(int)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tps = Histogram(TPS_BUCKETS)
        self.batch = Histogram(BATCH_BUCKETS)
        self.generated = 0
        self.prompt = 0
        self.queue_depth = lambda: 0
        self.running = lambda: 0

    def request(self, route: str, code: int) -> None:
        with self.lock:
            self.requests[(route, code)] += 1

    def error(self, code: str | None) -> None:
        with self.lock:
            self.errors[code or "unknown"] += 1

    def answer(self, report: dict) -> None:
        with self.lock:
            ttft = (report.get("timings_ms") or {}).get("ttft")
            if ttft is not None:
                self.ttft.observe(ttft / 1e3)
            if report.get("decode_tokens_per_s"):
                self.tps.observe(float(report["decode_tokens_per_s"]))
            self.generated += int(report.get("new_tokens") or 0)
            self.prompt += int(report.get("prompt_tokens_kept") or 0)

    def batch_size(self, n: int) -> None:
        with self.lock:
            self.batch.observe(n)

    def feature_cache(self, result: str) -> None:
        with self.lock:
            self.cache[result] += 1

    def render(self) -> str:
        with self.lock:
            out: list[str] = []

            def head(name: str, kind: str, text: str) -> None:
                out.append(f"# HELP {name} {text}")
                out.append(f"# TYPE {name} {kind}")

            head("fastvid_requests_total", "counter", "HTTP responses by route and status code.")
            for (route, code), n in sorted(self.requests.items()):
                out.append(f'fastvid_requests_total{{route="{_label(route)}",code="{code}"}} {n}')
            head("fastvid_errors_total", "counter", "Error responses by error code.")
            for code, n in sorted(self.errors.items()):
                out.append(f'fastvid_errors_total{{code="{_label(code)}"}} {n}')
            head("fastvid_queue_depth", "gauge", "Requests waiting for the model.")
            out.append(f"fastvid_queue_depth {self.queue_depth()}")
            head("fastvid_requests_running", "gauge", "Requests being answered now.")
            out.append(f"fastvid_requests_running {self.running()}")
            head("fastvid_ttft_seconds", "histogram", "Time from admission to the first answer token.")
            out += self.ttft.lines("fastvid_ttft_seconds")
            head("fastvid_decode_tokens_per_second", "histogram", "Decode speed of each answer.")
            out += self.tps.lines("fastvid_decode_tokens_per_second")
            head("fastvid_batch_size", "histogram", "Answers decoded together in one batched decode.")
            out += self.batch.lines("fastvid_batch_size")
            head("fastvid_feature_cache_total", "counter",
                 "Video features by source: memory (reused in RAM), hit (disk cache), miss (encoded), off.")
            for result in ("memory", "hit", "miss", "off"):
                out.append(f'fastvid_feature_cache_total{{result="{result}"}} {self.cache.get(result, 0)}')
            head("fastvid_generated_tokens_total", "counter", "Answer tokens generated.")
            out.append(f"fastvid_generated_tokens_total {self.generated}")
            head("fastvid_prompt_tokens_total", "counter", "Prompt tokens prefilled after pruning.")
            out.append(f"fastvid_prompt_tokens_total {self.prompt}")
            return "\n".join(out) + "\n"
