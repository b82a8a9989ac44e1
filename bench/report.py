"""Turn bench/results/results.json into the Markdown report (tables + targets)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from . import candidates

PATH_ORDER = ["direct", "nginx", "wrapper", "wrapper-nometrics", "wrapper-key", "wrapper-limited", "litellm",
              "wrapper-2proc", "wrapper-cluster", "starlette-min"]
PATH_LABEL = {
    "direct": "direct → worker (EchoGen)",
    "nginx": "nginx → worker",
    "wrapper": "wrapper → worker",
    "litellm": "LiteLLM proxy → worker",
    "wrapper-2proc": "wrapper --processes 2 → worker",
    "wrapper-nometrics": "wrapper, metrics off → worker",
    "wrapper-key": "wrapper, a key without limits (usage in Redis) → worker",
    "wrapper-limited": "wrapper, a key with rpm/tpm/max_concurrent (Redis) → worker",
    "wrapper-cluster": "wrapper (3-server Consul cluster, via a client agent) → worker",
    "starlette-min": "minimal Starlette endpoint (no worker)",
}
PATH_ORDER += candidates.NAMES  # --candidates (issue #13)
PATH_LABEL.update(candidates.LABELS)


def _f(v, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def _per_request(cores, rps) -> str:
    """CPU microseconds per request: less sensitive to other load on the machine than req/s."""
    return f"{cores / rps * 1e6:.0f}" if cores is not None and rps else "–"


def targets(r: dict) -> list[dict]:
    """Each target of issue #5 with its measured value; met is None when it could not be measured."""
    out: list[dict] = []
    js = r.get("json", {})

    def get(path: str, c: int, key: str):
        return (js.get(path) or {}).get(str(c), {}).get(key)

    d16, w16, l16 = get("direct", 16, "rps"), get("wrapper", 16, "rps"), get("litellm", 16, "rps")
    if d16 and w16:
        ratio = w16 / d16
        out.append({"target": "wrapper req/s at c=16 ≥ 0.30 × direct", "value": f"{ratio:.2f} × direct",
                    "met": ratio >= 0.30, "gap": f"needs {0.30 / ratio:.2f}× more" if ratio < 0.30 else ""})
    n16 = get("nginx", 16, "rps")
    if d16 and n16:
        out.append({"target": "(reference) nginx req/s at c=16 vs direct (issue saw ≈ 0.57)",
                    "value": f"{n16 / d16:.2f} × direct", "met": None, "gap": ""})
    if w16 and l16:
        ratio = w16 / l16
        out.append({"target": "wrapper req/s at c=16 ≥ 20 × LiteLLM", "value": f"{ratio:.1f} × LiteLLM",
                    "met": ratio >= 20, "gap": f"needs {20 / ratio:.2f}× more" if ratio < 20 else ""})
    else:
        out.append({"target": "wrapper req/s at c=16 ≥ 20 × LiteLLM", "value": "not measured (--no-litellm)",
                    "met": None, "gap": ""})
    d1, w1 = get("direct", 1, "p50_ms"), get("wrapper", 1, "p50_ms")
    if d1 is not None and w1 is not None:
        added = w1 - d1
        out.append({"target": "added p50 latency at c=1 ≤ 0.6 ms", "value": f"{added:+.3f} ms",
                    "met": added <= 0.6, "gap": f"{added - 0.6:.3f} ms over" if added > 0.6 else ""})
    st = (r.get("stream") or {}).get("c1") or {}
    if "direct" in st and "wrapper" in st:
        added = st["wrapper"]["ttfc_p50_ms"] - st["direct"]["ttfc_p50_ms"]
        out.append({"target": "stream: added time to first chunk ≤ 1 ms", "value": f"{added:+.3f} ms (p50)",
                    "met": added <= 1.0, "gap": f"{added - 1:.3f} ms over" if added > 1 else ""})
        ratio = st["wrapper"]["chunk_rate_p50"] / st["direct"]["chunk_rate_p50"]
        out.append({"target": "stream: chunk rate ≥ 0.5 × direct (one stream)", "value": f"{ratio:.2f} × direct",
                    "met": ratio >= 0.5, "gap": f"needs {0.5 / ratio:.2f}× more" if ratio < 0.5 else ""})
    agg = (r.get("stream") or {}).get("c16") or {}
    if "direct" in agg and "wrapper" in agg and agg["direct"]["chunks_per_s"]:
        ratio = agg["wrapper"]["chunks_per_s"] / agg["direct"]["chunks_per_s"]
        out.append({"target": "stream: chunk rate ≥ 0.5 × direct (16 streams at once)",
                    "value": f"{ratio:.2f} × direct", "met": ratio >= 0.5,
                    "gap": f"needs {0.5 / ratio:.2f}× more" if ratio < 0.5 else ""})
    paced = (r.get("stream") or {}).get("paced") or {}
    if "direct" in paced and "wrapper" in paced:
        d, w = paced["direct"]["separate_pct"], paced["wrapper"]["separate_pct"]
        out.append({"target": "stream: every chunk forwarded as it arrives (paced stream: chunks arriving "
                              "one per read, wrapper ≥ 95 % of direct's share)",
                    "value": f"{w:.0f} % vs direct {d:.0f} %", "met": w >= 0.95 * d, "gap": ""})
    sc = r.get("scale") or []
    if len(sc) >= 2:
        a, b = sc[0], sc[-1]
        added = b["p50_c1_ms"] - a["p50_c1_ms"]
        limit = max(0.1, 0.1 * a["p50_c1_ms"])
        cpu_a = a.get("wrapper_cores_c16", 0) / a["rps_c16"] * 1e6 if a["rps_c16"] else 0
        cpu_b = b.get("wrapper_cores_c16", 0) / b["rps_c16"] * 1e6 if b["rps_c16"] else 0
        cpu_ratio = cpu_b / cpu_a if cpu_a else float("inf")
        out.append({"target": f"routing cost flat from {a['instances']:,} to {b['instances']:,} instances "
                              f"(wrapper CPU per request ≤ 1.10 × and p50 at c=1 +≤ {limit:.2f} ms)",
                    "value": f"CPU/request {cpu_ratio:.2f} × ({cpu_a:.0f} → {cpu_b:.0f} µs), p50 {added:+.3f} ms",
                    "met": cpu_ratio <= 1.10 and added <= limit, "gap": ""})
        m_added = b["models_p50_ms"] - a["models_p50_ms"]
        m_limit = max(0.1, 0.1 * a["models_p50_ms"])
        out.append({"target": f"/v1/models time flat from {a['instances']:,} to {b['instances']:,} instances "
                              f"(p50 +≤ {m_limit:.2f} ms)",
                    "value": f"{m_added:+.3f} ms", "met": m_added <= m_limit, "gap": ""})
    for x in ([sc[-1]] if sc and sc[-1]["instances"] >= 10_000 else []) + (r.get("scale_services") or []):
        # #13: registry at size
        layout = f"{x['instances']:,} " + (f"over {x['services']:,} services" if "services" in x else "of one model")
        rts = sorted(x.get("routable_ms") or [])
        if rts:
            p50 = rts[len(rts) // 2]
            out.append({"target": f"{layout}: registration → routable p50 ≤ 50 ms", "value": f"{p50:.1f} ms",
                        "met": p50 <= 50, "gap": f"{p50 - 50:.1f} ms over" if p50 > 50 else ""})
        if x.get("rss_mib"):
            out.append({"target": f"{layout}: wrapper RSS ≤ 80 MiB", "value": f"{x['rss_mib']:.1f} MiB",
                        "met": x["rss_mib"] <= 80, "gap": f"{x['rss_mib'] - 80:.1f} MiB over" if x["rss_mib"] > 80 else ""})
    paired = (r.get("real_model") or {}).get("paired")
    if paired:
        ratio = paired["tokens_per_s_ratio_p50"]
        out.append({"target": "real model (SmolLM2-135M): wrapper tokens/s ≥ 0.98 × direct (one greedy stream; "
                              "median of paired streams)",
                    "value": f"{ratio:.3f} × direct", "met": ratio >= 0.98,
                    "gap": f"needs {0.98 / ratio:.3f}× more" if ratio < 0.98 else ""})
        # with the worker's own first-event times, what the wrapper adds is told apart from the model's noise
        around = paired.get("first_event_added_ms_p50")
        added = around if around is not None else paired["ttft_added_ms_p50"]
        how = ("beyond the worker's own time, from its /metrics" if around is not None
               else "paired client-side times")
        out.append({"target": f"real model (SmolLM2-135M): added time to first token ≤ 1 ms (median; {how})",
                    "value": f"{added:+.2f} ms", "met": added <= 1.0,
                    "gap": f"{added - 1:.2f} ms over" if added > 1 else ""})
    mem = r.get("memory")
    if mem and "growth_pct" in mem:
        out.append({"target": f"wrapper RSS growth ≤ 10 % over {mem['requests']:,} requests after warm-up",
                    "value": f"{mem['growth_pct']:+.1f} %", "met": mem["growth_pct"] <= 10.0, "gap": ""})
    w = get("direct", 16, "rps")
    m = get("starlette-min", 16, "rps")
    if w and m:
        out.append({"target": "(reported) EchoGen worker req/s at c=16 vs minimal Starlette endpoint",
                    "value": f"{w / m:.2f} ×", "met": None, "gap": ""})
    w2_16, w2_1 = get("wrapper-2proc", 16, "rps"), get("wrapper-2proc", 1, "p50_ms")
    if w2_16 and d16:
        value = f"{w2_16 / d16:.2f} × direct"
        if w2_1 is not None and d1 is not None:
            value += f"; added p50 at c=1 {w2_1 - d1:+.3f} ms"
        out.append({"target": "(reported) wrapper with --processes 2: req/s at c=16 ≥ 0.30 × direct",
                    "value": value, "met": w2_16 / d16 >= 0.30, "gap": ""})
    on, off = get("wrapper", 16, "rps"), get("wrapper-nometrics", 16, "rps")
    if on and off:
        cpu_on = (js["wrapper"]["16"].get("cores") or {}).get("proxy")
        cpu_off = (js["wrapper-nometrics"]["16"].get("cores") or {}).get("proxy")
        value = f"{on / off:.3f} ×"
        if cpu_on and cpu_off:
            value += f"; wrapper CPU per request {cpu_on / on * 1e6:.0f} vs {cpu_off / off * 1e6:.0f} µs " \
                     f"({(cpu_on / on) / (cpu_off / off) - 1:+.1%})"
        out.append({"target": "(issue #10) wrapper req/s at c=16 with metrics on ≥ 0.90 × metrics off",
                    "value": value, "met": on / off >= 0.90, "gap": ""})
    return out


def markdown(r: dict) -> str:
    meta = r.get("meta", {})
    mach = meta.get("machine", {})
    lines = [f"# Benchmark results ({meta.get('mode', '?')} run, {meta.get('started', '')})", ""]
    lines.append(f"Machine: {mach.get('nproc')} cores, {mach.get('cpu')}, {mach.get('memory')} RAM, Python "
                 f"{mach.get('python')}, kernel {mach.get('kernel')}; load average at start "
                 f"{mach.get('loadavg_at_start')}. Load generator: {meta.get('loadgen')}"
                 f"{' (1 thread)' if meta.get('loadgen') == 'wrk' else ''}. Each JSON figure is the median of {meta.get('rounds')} rounds of "
                 f"{meta.get('duration')} s. Total run time {r.get('elapsed_s', 0):.0f} s. Code: "
                 f"{meta.get('code', '?')}.")
    lines.append("")
    idle = r.get("idle_cores")
    if idle:
        lines.append("Idle CPU before the load (cores): " + ", ".join(f"{k} {v:.2f}" for k, v in idle.items()) + ".")
        lines.append("")
    others = [x.get("other_cores", 0.0) for v in r.get("json", {}).values() for x in v.values()]
    if others:
        lines.append(f"CPU used by processes outside this benchmark during the JSON runs (noise): median "
                     f"{sorted(others)[len(others) // 2]:.2f} cores, max {max(others):.2f} of "
                     f"{mach.get('nproc')}.")
        lines.append("")
    for note in r.get("notes", []):
        lines.append(f"> {note}")
    if r.get("notes"):
        lines.append("")

    js = r.get("json", {})
    if js:
        lines += ["## JSON chat completions (POST /v1/chat/completions, same EchoGen worker)", "",
                  "| path | conc. | req/s | p50 ms | p99 ms | req/s ÷ direct | p50 − direct (ms) | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for c in ("1", "16"):
            base = (js.get("direct") or {}).get(c)
            for path in PATH_ORDER:
                x = (js.get(path) or {}).get(c)
                if not x:
                    continue
                ratio = x["rps"] / base["rps"] if base and base["rps"] else None
                added = x["p50_ms"] - base["p50_ms"] if base else None
                lines.append(f"| {PATH_LABEL[path]} | {c} | {_f(x['rps'], 0)} | {_f(x['p50_ms'], 3)} | "
                             f"{_f(x['p99_ms'], 3)} | {_f(ratio)} | "
                             f"{'–' if path == 'direct' or added is None else f'{added:+.3f}'} | {x['errors']} |")
        lines.append("")
        lines += ["### CPU used during the concurrency-16 runs (cores: CPU-seconds ÷ wall seconds, per process tree)", "",
                  "| path | load generator | proxy | worker / server | whole machine | not ours (other load) "
                  "| proxy CPU µs/request | worker CPU µs/request |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for path in PATH_ORDER:
            x = (js.get(path) or {}).get("16")
            if not x:
                continue
            cores = x.get("cores", {})
            lines.append(f"| {PATH_LABEL[path]} | {_f(x['client_cores'])} | {_f(cores.get('proxy'))} | "
                         f"{_f(cores.get('worker', cores.get('server')))} | {_f(x.get('machine_cores'))} | "
                         f"{_f(x.get('other_cores'))} | {_per_request(cores.get('proxy'), x['rps'])} | "
                         f"{_per_request(cores.get('worker', cores.get('server')), x['rps'])} |")
        lines.append("")

    st = r.get("stream") or {}
    if st.get("c1"):
        lines += ["## Streaming (100-word message → 100 content chunks + 1 finish chunk)", "",
                  "| path | streams | chunks/stream | TTFC p50 ms | TTFC p99 ms | TTFC − direct (ms) | chunks/s per stream (p50) | ÷ direct |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        base = st["c1"].get("direct")
        for path in PATH_ORDER:
            x = st["c1"].get(path)
            if not x:
                continue
            lines.append(f"| {PATH_LABEL[path]} | {x['streams']} | {_f(x['chunks_per_stream'], 0)} | "
                         f"{_f(x['ttfc_p50_ms'], 3)} | {_f(x['ttfc_p99_ms'], 3)} | "
                         f"{'–' if path == 'direct' else format(x['ttfc_p50_ms'] - base['ttfc_p50_ms'], '+.3f')} | "
                         f"{_f(x['chunk_rate_p50'], 0)} | {_f(x['chunk_rate_p50'] / base['chunk_rate_p50'])} |")
        lines.append("")
    if st.get("c16"):
        lines += ["16 streams at once (wrk):", "", "| path | streams/s | chunks/s | ÷ direct | p50 stream ms |",
                  "|---|---:|---:|---:|---:|"]
        base = st["c16"].get("direct")
        for path in PATH_ORDER:
            x = st["c16"].get(path)
            if not x:
                continue
            lines.append(f"| {PATH_LABEL[path]} | {_f(x['rps'], 0)} | {_f(x['chunks_per_s'], 0)} | "
                         f"{_f(x['chunks_per_s'] / base['chunks_per_s']) if base and base['chunks_per_s'] else '–'} | "
                         f"{_f(x['p50_ms'], 2)} |")
        lines.append("")
    if st.get("paced"):
        lines += [f"Paced stream ({st.get('paced_delay_ms', 2):g} ms between words): are chunks forwarded one by one?", "",
                  "| path | streams | chunks arriving alone in a read | most chunks in one read | TTFC p50 ms | stream p50 ms |",
                  "|---|---:|---:|---:|---:|---:|"]
        for path in PATH_ORDER:
            x = st["paced"].get(path)
            if not x:
                continue
            lines.append(f"| {PATH_LABEL[path]} | {x['streams']} | {_f(x['separate_pct'], 0)} % | "
                         f"{x['max_events_per_read']} | {_f(x['ttfc_p50_ms'], 3)} | {_f(x['stream_ms_p50'], 1)} |")
        lines.append("")

    real = r.get("real_model")
    if real and real.get("paths"):
        lines += [f"## A real model: {real['model']} on the CPU (HFChatGen, {real.get('threads')} torch thread(s))", "",
                  f"Loaded from `{Path(real['file']).name if real.get('file') else '?'}` in "
                  f"{_f(real.get('load_s'), 1)} s (worker start → registered {_f(real['start_to_registered_s'], 1)} s), "
                  f"worker RSS {_f(real.get('rss_mib'), 0)} MiB. One greedy stream at a time (temperature 0, "
                  f"max_tokens {real['max_tokens']}, \"{real['prompt']}\"), paths interleaved, median of "
                  f"{len(next(iter(real['paths'].values()))['streams'])} streams each. CPU used by processes "
                  f"outside this benchmark meanwhile (noise): {_f(real.get('other_cores'))} cores of "
                  f"{mach.get('nproc')}.", "",
                  "| path | TTFT p50 ms | TTFT min – max ms | TTFT − direct (ms, p50) | tokens/s (p50, whole stream) "
                  "| ÷ direct | tokens/stream |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        base = real["paths"].get("direct")
        for path in ("direct", "wrapper"):
            x = real["paths"].get(path)
            if not x:
                continue
            lines.append(f"| {PATH_LABEL[path].replace('(EchoGen)', '(HFChatGen)')} | {_f(x['ttft_ms_p50'], 1)} | "
                         f"{_f(x['ttft_ms_min'], 1)} – {_f(x['ttft_ms_max'], 1)} | "
                         f"{'–' if path == 'direct' or not base else format(x['ttft_ms_p50'] - base['ttft_ms_p50'], '+.2f')} | "
                         f"{_f(x['tokens_per_s_p50'], 2)} | "
                         f"{_f(x['tokens_per_s_p50'] / base['tokens_per_s_p50'], 3) if base else '–'} | "
                         f"{_f(x['completion_tokens'], 0)} |")
        lines.append("")
        if real.get("paired"):
            lines += [f"Paired (each wrapper stream minus the direct stream just before it, median): the wrapper "
                      f"adds {real['paired']['ttft_added_ms_p50']:+.2f} ms to the time to first token and keeps "
                      f"{real['paired']['tokens_per_s_ratio_p50']:.3f} × the direct tokens/s. The spread of single "
                      "streams (min – max above) shows how much of that is the machine's noise."
                      + (f" Subtracting, per stream, the worker's own time to its first event (from its /metrics) "
                         f"leaves what the path adds around the model: the wrapper adds "
                         f"{real['paired']['first_event_added_ms_p50']:+.2f} ms to the direct path's "
                         f"{real['paired']['direct_around_worker_ms_p50']:.2f} ms."
                         if "first_event_added_ms_p50" in real["paired"] else ""), ""]

    sc = r.get("scale") or []
    if sc:
        lines += ["## Scale: instances registered for one model (fakes written straight into Consul's catalog)", "",
                  "| instances | registering took s | wrapper p50 c=1 ms | routing cost vs first row (ms) | "
                  "wrapper req/s c=16 | wrapper CPU µs/request (c=16) | /v1/models p50 ms | "
                  "registration → routable ms (p50, max) | wrapper RSS MiB |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        first = sc[0]
        for x in sc + (r.get("scale_services") or []):
            rt = x.get("routable_ms") or []
            rts = sorted(rt)
            rt_s = f"{rts[len(rts) // 2]:.1f}, {rts[-1]:.1f}" if rts else "–"
            spread = f" over {x['services']:,} services" if "services" in x else ""
            lines.append(f"| {x['instances']:,}{spread} | {_f(x['register_s'], 2)} | {_f(x['p50_c1_ms'], 3)} | "
                         f"{x['p50_c1_ms'] - first['p50_c1_ms']:+.3f} | {_f(x['rps_c16'], 0)} | "
                         f"{_per_request(x.get('wrapper_cores_c16'), x['rps_c16'])} | "
                         f"{_f(x['models_p50_ms'], 3)} | {rt_s} | {_f(x.get('rss_mib'), 1)} |")
        lines.append("")

    mem = r.get("memory")
    if mem and "growth_pct" in mem:
        lines += ["## Memory (wrapper VmRSS)", "",
                  "| point | RSS MiB |", "|---|---:|",
                  f"| after the first warm-up | {_f(mem.get('rss_first_warm_mib'), 1)} |",
                  f"| before the memory run (warm) | {_f(mem['rss_before_mib'], 1)} |",
                  f"| after {mem['requests']:,} more requests (c=16, {mem['seconds']:.0f} s) | {_f(mem['rss_after_mib'], 1)} |",
                  f"| growth | {mem['growth_pct']:+.1f} % |", ""]

    prof = r.get("profile")
    if prof:
        lines += [f"## Wrapper profile under load (py-spy, {prof['samples']} samples, self time by package/module)", "",
                  "| share of CPU samples | where |", "|---:|---|"]
        for k, v in prof["self_by_package"][:12]:
            lines.append(f"| {v:.1f} % | {k} |")
        lines.append("")

    for key, title in (("profile_scale_requests", "requests at c=16"),
                       ("profile_scale_updates", "registrations being routed (one service's list re-read)")):
        prof = r.get(key)
        sc = r.get("scale") or []
        if prof and sc:
            lines += [f"Wrapper profile with {sc[-1]['instances']:,} instances, {title} ({prof['samples']} samples, "
                      "self time, top functions):", "", "| share | function |", "|---:|---|"]
            for k, v in prof["self_by_function"][:8]:
                lines.append(f"| {v:.1f} % | {k} |")
            lines.append("")

    lines += ["## Targets (issue #5)", "", "| target | measured | met |", "|---|---|---|"]
    for t in targets(r):
        met = "–" if t["met"] is None else ("yes" if t["met"] else f"**no** {t['gap']}".strip())
        lines.append(f"| {t['target']} | {t['value']} | {met} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m bench.report RESULTS.json | --candidates RUN1/results.json RUN2/results.json ...
    if sys.argv[1] == "--candidates":  # issue #13's comparison, each figure the median over the runs
        print(candidates.median_table([json.loads(Path(p).read_text()) for p in sys.argv[2:]], PATH_LABEL))
    else:
        print(markdown(json.loads(Path(sys.argv[1]).read_text())))
