"""napari-samscope benchmark: ours against the official implementations on this CPU.

Run from the repository root::

    python benchmarks/run.py                      # all workloads, writes benchmarks/RESULTS.md
    python benchmarks/run.py --only encoder,prompt --repeats 3 --no-write

Every figure is a median over ``--repeats`` runs after a warm-up. When Meta's
``segment_anything`` / MobileSAM's ``mobile_sam`` are importable in this interpreter,
each figure is also measured for the official code in the same process, on the same
image and weights, and reported as a ratio (ours / official). Otherwise only our
absolute figures are printed. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SECTIONS = ("encoder", "prompt", "everything", "memory", "volume", "napari")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections among {', '.join(SECTIONS)}")
    parser.add_argument("--models", default="vit_b,vit_t,default",
                        help="encoder models (vit_b, vit_t, default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure")
    parser.add_argument("--everything-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 figures")
    parser.add_argument("--no-official", action="store_true",
                        help="do not measure the official code even if importable")
    parser.add_argument("--rss-size", type=int, default=4096)
    parser.add_argument("--planes", type=int, default=32)
    parser.add_argument("--napari-python", default=None,
                        help="interpreter with napari for the napari section (default: this one "
                             "if it has napari, else python3 on PATH)")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


def _load(value) -> str:
    return str(tuple(round(x, 2) for x in value)) if value else "?"


def _napari_figures(python: str | None) -> dict | None:
    """Helper E's ``bench_napari.py`` in an interpreter that has napari (JSON figures)."""
    script = HERE / "bench_napari.py"
    if not script.exists():
        return None
    candidates = [python] if python else [sys.executable, "python3"]
    for candidate in candidates:
        check = subprocess.run([candidate, "-c", "import napari, napari_samscope"],
                               capture_output=True)
        if check.returncode != 0:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "napari.json"
            proc = subprocess.run([candidate, str(script), "--json", str(out)],
                                  capture_output=True, text=True, timeout=3600)
            if out.exists():
                return json.loads(out.read_text())
            return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return None


def _napari_rows(figures: dict) -> list:
    from _common import Row

    if "error" in figures:
        return [Row("napari", "bench_napari.py", None, "ms", note=figures["error"])]
    preview = figures.get("prompt_to_preview_median_ms")
    stall = figures.get("longest_stall_ms")
    decoder = figures.get("decoder_alone_median_ms", figures.get("decoder_in_preview_median_ms"))
    return [
        Row("napari", f"prompt-to-preview median ({figures.get('model', '?')})", preview, "ms",
            target="<= 50 ms", met=None if preview is None else preview <= 50,
            note=f"p90 {figures.get('prompt_to_preview_p90_ms')} ms, decoder {decoder} ms"),
        Row("napari", "longest event-loop stall while encoding a stack", stall, "ms",
            target="<= 100 ms", met=None if stall is None else stall <= 100,
            note=f"{figures.get('stack_planes')} planes {figures.get('stack_plane_size')}px; idle "
                 f"baseline {figures.get('idle_longest_stall_ms')} ms"),
    ]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    torch.set_num_threads(args.threads)
    import _official
    from _common import environment, load_average, text_table
    from _models import load_model

    from napari_samscope.core.device import cpu_has_native_bf16

    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        print(f"Unknown sections {unknown}; choose among {SECTIONS}.", file=sys.stderr)
        return 2
    official_found = None if args.no_official else _official.available()
    official = official_found is not None
    bf16 = not args.no_bf16
    if bf16 and not cpu_has_native_bf16():
        print("note: this CPU has no native bfloat16; bf16 figures are emulated and slow.")
    load_start = load_average()
    started = time.perf_counter()
    models = {key: load_model(key) for key in args.models.split(",") if key}
    rows = []
    table = ""

    section_loads: list[str] = []

    def log(section: str) -> None:
        load = load_average()
        section_loads.append(f"{section}: {tuple(round(x, 2) for x in load) if load else '?'}")
        print(f"[{time.perf_counter() - started:7.1f} s] {section} (load {load})", flush=True)

    if "encoder" in sections:
        import bench_encoder

        log("encoder")
        enc_rows = bench_encoder.run(list(models.values()), official, args.repeats, bf16)
        rows += enc_rows
        table = bench_encoder.model_table(list(models.values()), enc_rows)
    if "prompt" in sections:
        import bench_prompt

        log("prompt")
        chosen = [m for k, m in models.items() if k in ("vit_b", "default")]
        rows += bench_prompt.run(chosen, official, max(args.repeats, 20))
    if "everything" in sections:
        import bench_everything

        log("everything")
        chosen = [m for k, m in models.items() if k in ("vit_b", "default")]
        dtypes = [None, "bfloat16"] if bf16 else [None]
        rows += bench_everything.run(chosen, official, args.everything_repeats, dtypes)
    if "memory" in sections:
        import bench_everything

        log("memory")
        chosen = [m for k, m in models.items() if k in ("vit_b", "default")]
        rows += bench_everything.peak_rss(chosen, official, args.rss_size)
    if "volume" in sections:
        import bench_volume

        log("volume")
        chosen = [m for k, m in models.items() if k == "default"]
        rows += bench_volume.run(chosen, official, planes=args.planes)
    if "napari" in sections:
        log("napari")
        figures = _napari_figures(args.napari_python)
        if figures is not None:
            rows += _napari_rows(figures)
    load_end = load_average()
    env = environment(args.threads, official_found)
    print()
    print(text_table(rows))
    if table:
        print()
        print(table)
    if not args.no_write:
        _write(Path(args.out), rows, table, env, models, (load_start, section_loads, load_end), args, started)
        print(f"\nwrote {args.out}")
    return 0


def _write(path, rows, table, env, models, loads, args, started) -> None:
    from _common import markdown_table

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        "# napari-samscope benchmark results",
        "",
        f"Measured {stamp} with `python benchmarks/run.py {' '.join(sys.argv[1:])}`"
        f" ({time.perf_counter() - started:.0f} s). Medians over {args.repeats} runs after a "
        f"warm-up ({args.everything_repeats} for segment-everything). ratio = ours / official, "
        "measured in the same process on the same image and weights.",
        "",
        "## Environment",
        "",
        *(f"- {k}: {v}" for k, v in env.items()),
        f"- load average (1, 5, 15 min) at start: {_load(loads[0])}, at end: {_load(loads[2])}",
        f"- load average when each section started: {'; '.join(loads[1])}",
        "",
        "## Models",
        "",
        *(f"- {m.name}: {m.weights}, {m.parameters / 1e6:.2f} M parameters" for m in models.values()),
        "",
        "## Results",
        "",
        markdown_table(rows),
        "",
    ]
    if table:
        lines += ["## Comparison table (as on the Ultralytics SAM page)", "", table, ""]
    details = [r for r in rows if "per_prompt" in r.extra]
    if details:
        lines += ["## bf16 against float32, per prompt kind (mask IoU, worst candidate)", ""]
        for r in details:
            cells = ", ".join(f"{k} {v:.3f}" for k, v in r.extra["per_prompt"].items())
            lines += [f"- {r.workload.split(' bf16')[0]}: {cells}"]
        lines += [""]
    notes = HERE / "RESULTS_NOTES.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
