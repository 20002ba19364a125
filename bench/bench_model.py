#!/usr/bin/env python3
"""Benchmark of the spam model: message->text, inference, import+load, and `milter score` throughput.

Prints one JSON object (and a readable summary on stderr). Figures:
  text_us       message->text per message (median, p90, p99, mean) over a seeded sample of corpus mail
  infer_us      model.score(text) per message, text already extracted, one thread (median, p90, p99)
  batch_us      per message when scoring batches of 64 texts in one graph run
  load_s        `import milter.model` + load_model in a fresh interpreter (median of 5), and the bare
                interpreter start for reference
  score_msg_s   `milter score --json DIR...` over corpus directories, one process, wall clock
The machine is shared: the load average before and after is printed with the numbers.

With --compare-model FILE (another model file, e.g. the shipped one before a graph change), its
inference is timed too, alternating with the model text by text (the order swapped every other
pass), so that both see the same machine load: compare_infer_us, compare_infer_cpu_us, and the
ratio of the medians; the two models' probabilities and explanations are compared as well.

With --text-baseline FILE (another version of milter/text.py, e.g. from `git show REV:milter/text.py`),
message->text of that version is timed too, alternating with the current one message by message, so
that both see the same machine load: text_baseline_us, text_baseline_cpu_us.

usage: bench/bench_model.py [--model model/spam.onnx] [--corpus /work/corpus] [--sample 3000] [--quick]
                            [--text-baseline FILE] [--compare-model FILE] [--infer-only]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from milter.model import load_model  # noqa: E402
from milter.text import message_text  # noqa: E402

DIRS = ("spamassassin/ham", "spamassassin/spam", "trec07p-early/ham", "trec07p-early/spam")


def percentiles(values: list[float], scale: float) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(len(ordered) * q))]  # noqa: E731
    return {
        "median": round(statistics.median(ordered) * scale, 1),
        "p90": round(pick(0.90) * scale, 1),
        "p99": round(pick(0.99) * scale, 1),
        "mean": round(statistics.fmean(ordered) * scale, 1),
    }


def machine() -> dict[str, object]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "loadavg_start": os.getloadavg()[0],
    }


def load_time(model: Path) -> dict[str, float]:
    code = (
        "import time; t=time.perf_counter(); from milter.model import load_model; "
        f"m=load_model({str(model)!r}); print(time.perf_counter()-t)"
    )
    runs = []
    bare = []
    for _ in range(5):
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
        )
        runs.append(float(out.stdout.strip()))
        bare.append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare[-1] = time.perf_counter() - started
    return {
        "import_and_load_median": round(statistics.median(runs), 3),
        "bare_interpreter": round(min(bare), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=REPO / "model" / "spam.onnx")
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("MILTER_CORPUS", "/work/corpus")))
    parser.add_argument("--sample", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="only spamassassin for the score throughput")
    parser.add_argument("--text-baseline", type=Path, help="another milter/text.py to time alongside")
    parser.add_argument("--compare-model", type=Path, help="another model file to time alongside")
    parser.add_argument(
        "--infer-only", action="store_true", help="only message->text and inference (no load, no CLI run)"
    )
    args = parser.parse_args()
    baseline = None
    if args.text_baseline:
        spec = importlib.util.spec_from_file_location("text_baseline", args.text_baseline)
        assert spec is not None and spec.loader is not None
        baseline = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(baseline)

    result: dict[str, object] = {"machine": machine(), "model": str(args.model)}
    files = [p for d in DIRS for p in sorted((args.corpus / d).iterdir())]
    random.Random(0).shuffle(files)
    raws = [f.read_bytes() for f in files[: args.sample]]
    result["sample"] = {"messages": len(raws), "median_bytes": statistics.median(len(r) for r in raws)}

    model = load_model(args.model)
    result["model_id"] = model.id
    result["model_bytes"] = args.model.stat().st_size

    timings = []
    cpu = []
    texts = []
    base_timings: list[float] = []
    base_cpu: list[float] = []
    for raw in raws:
        if baseline is not None:
            started = time.perf_counter()
            cpu_started = time.thread_time()
            baseline.message_text(raw)
            base_cpu.append(time.thread_time() - cpu_started)
            base_timings.append(time.perf_counter() - started)
        started = time.perf_counter()
        cpu_started = time.thread_time()
        texts.append(message_text(raw))
        cpu.append(time.thread_time() - cpu_started)
        timings.append(time.perf_counter() - started)
    result["text_us"] = percentiles(timings, 1e6)
    # CPU time of this thread: less disturbed than the wall clock when the machine is shared.
    result["text_cpu_us"] = percentiles(cpu, 1e6)
    if baseline is not None:
        result["text_baseline"] = str(args.text_baseline)
        result["text_baseline_us"] = percentiles(base_timings, 1e6)
        result["text_baseline_cpu_us"] = percentiles(base_cpu, 1e6)
    result["tokens_median"] = statistics.median(len(t.split()) for t in texts)

    other = load_model(args.compare_model) if args.compare_model else None
    for text in texts[:50]:  # warm-up
        model.score(text)
        if other is not None:
            other.score(text)
    timings = []
    cpu = []
    other_timings: list[float] = []
    other_cpu: list[float] = []
    passes = 2 if other is not None else 1
    for turn in range(passes):
        for text in texts:
            order = [(model, timings, cpu), (other, other_timings, other_cpu)]
            for which, wall_list, cpu_list in order if turn % 2 == 0 else order[::-1]:
                if which is None:
                    continue
                started = time.perf_counter()
                cpu_started = time.thread_time()
                which.score(text)
                cpu_list.append(time.thread_time() - cpu_started)
                wall_list.append(time.perf_counter() - started)
    result["infer_us"] = percentiles(timings, 1e6)
    result["infer_cpu_us"] = percentiles(cpu, 1e6)
    if other is not None:
        result["compare_model"] = {"path": str(args.compare_model), "id": other.id}
        result["compare_infer_us"] = percentiles(other_timings, 1e6)
        result["compare_infer_cpu_us"] = percentiles(other_cpu, 1e6)
        result["infer_median_ratio"] = round(statistics.median(timings) / statistics.median(other_timings), 3)
        result["infer_cpu_median_ratio"] = round(statistics.median(cpu) / statistics.median(other_cpu), 3)
        ours = model.score_texts(texts)
        theirs = other.score_texts(texts)
        result["compare_max_probability_difference"] = float(
            f"{max(abs(a.probability - b.probability) for a, b in zip(ours, theirs, strict=True)):.3g}"
        )
        result["compare_explanations_differing"] = sum(
            [name for name, _ in a.features] != [name for name, _ in b.features]
            for a, b in zip(ours, theirs, strict=True)
        )
    started = time.perf_counter()
    for i in range(0, len(texts), 64):
        model.score_texts(texts[i : i + 64])
    result["batch_us"] = round((time.perf_counter() - started) / len(texts) * 1e6, 1)
    if args.infer_only:
        result["machine"]["loadavg_end"] = os.getloadavg()[0]  # type: ignore[index]
        print(json.dumps(result, indent=2))
        return 0

    result["load_s"] = load_time(args.model)

    dirs = [str(args.corpus / d) for d in (DIRS[:2] if args.quick else DIRS)]
    command = [sys.executable, "-m", "milter", "score", "--json", "--model", str(args.model), *dirs]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, check=False, cwd=REPO)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = out.stdout.count(b"\n")
    result["score_cli"] = {
        "messages": lines,
        "seconds": round(seconds, 2),
        "messages_per_second": round(lines / seconds, 1),
        "cpu_seconds": round(cpu_seconds, 2),
        "messages_per_cpu_second": round(lines / cpu_seconds, 1),
        "exit": out.returncode,
        "dirs": dirs,
    }
    result["machine"]["loadavg_end"] = os.getloadavg()[0]  # type: ignore[index]
    print(json.dumps(result, indent=2))
    print(
        f"text median {result['text_us']['median']} us, inference median {result['infer_us']['median']} us, "  # type: ignore[index]
        f"batched {result['batch_us']} us/msg, import+load {result['load_s']['import_and_load_median']} s, "  # type: ignore[index]
        f"score CLI {result['score_cli']['messages_per_second']} msg/s "  # type: ignore[index]
        f"({result['score_cli']['messages_per_cpu_second']} per CPU second)",  # type: ignore[index]
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
