"""The suite's result as a Markdown table and PNG plots, written beside its JSON.

`results.json` gets `results.md` (the tables the README quotes) and `results_ratios.png` (jaxarch's steps/s over
each peer's, per family at the reference size), `results_sequence.png` and `results_image.png` (the scaling
curves). The plots draw on matplotlib's Agg canvas directly: no display needed, and pyplot's backend, which
the importing program may have chosen, is left alone.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxarch.benchmarks.timing import SPREAD_WARNING


def _shape_text(shape: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in shape.items())


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _speed_text(speed_range) -> str:
    return "-" if speed_range is None else f"{100 * speed_range[0]:.0f}-{100 * speed_range[1]:.0f}%"


def _allocator(took, huge_pages=None) -> str:
    return ({None: "", False: "glibc's default allocator", True: "jaxarch's allocator settings"}[took]
            + (" with huge pages for the heap" if huge_pages else ""))


def header(result: dict) -> str:
    torch = "not installed"
    if result["torch"] is not None:
        allocators = _allocator(result.get("torch_host_allocator"), result.get("torch_huge_pages"))
        if result.get("torch_eager_mallopt_host_allocator") is not None:
            allocators += ("; torch_eager_mallopt: " + _allocator(result["torch_eager_mallopt_host_allocator"],
                                                                  result.get("torch_eager_mallopt_huge_pages")))
        torch = (f"{result['torch']} ({result['torch_threads']} threads, {result['torch_device']}, "
                 f"OMP_WAIT_POLICY={result['torch_omp_wait_policy']}{', ' if allocators else ''}{allocators})")
    ceiling = result["matmul_ceiling"]
    host = result.get("host")
    host_text = "" if host is None else (
        f" The machine's own speed (`benchmarks/host_probe.py`: a fixed loop pinned to each of {host['cpus_probed']} "
        "CPUs before each implementation's steps in every round): its slowest CPU ran at "
        f"{_speed_text([host['speed_min'], host['speed_max']])} of the run's fastest.")
    return (f"Measured {result['date'][:10]} on {result['cpu']} ({result['cores']} cores), backend "
            f"{result['backend']} ({result['device']}), {result['dtype']}{' (--quick)' if result['quick'] else ''}; "
            f"jax {result['jax']}, flax {result['flax']}, torch {torch}; XLA_FLAGS `{result['xla_flags']}`"
            f"{'; huge pages for the heap' if result.get('huge_pages') else ''}. "
            f"Matmul ceiling {ceiling['gflops_per_second_min']:.0f}-{ceiling['gflops_per_second_max']:.0f} GFLOP/s "
            f"({ceiling['dtype']} [{ceiling['size']}, {ceiling['size']}] matmul, timed beside each workload; its "
            "fractions are of that one)." + host_text)


def markdown(result: dict) -> str:
    lines = [header(result), "",
             "| family | size | implementation | steps/s | spread | ms/step | first step s | items/s | GFLOP/s "
             "| of ceiling | host speed |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for family, entry in result["families"].items():
        unit = entry["item_unit"]
        for size, measured in entry["sizes"].items():
            for name, r in measured["results"].items():
                lines.append(f"| {family} | {size} | {name} | {r['steps_per_second']:.2f} | "
                             f"{_percent(r.get('spread'))} | {1e3 * r['median_seconds']:.1f} | "
                             f"{r['compile_seconds']:.1f} | {r['items_per_second']:.0f} {unit} | {r['gflops_per_second']:.1f} | "
                             f"{_percent(r['fraction_of_matmul_ceiling'])} | {_speed_text(r.get('host_speed'))} |")
    peers = sorted({peer for entry in result["families"].values() for measured in entry["sizes"].values()
                    for peer in measured["ratios"]})
    lines += ["", "spread: (slowest round - fastest round) / median, over the rounds that interleave a workload's "
              "implementations; host speed: the machine's own speed just before its steps in each round, its "
              "slowest CPU against the run's fastest probe.", "",
              "jaxarch's steps/s over each peer's (in brackets: the lowest and highest round's ratio), the matmul "
              "ceiling timed beside them (same run), and the machine's own speed over the workload's rounds:", "",
              "| family | size | shape | " + " | ".join(peers) + " | ceiling GFLOP/s | host speed |",
              "|---|---|---|" + "---:|" * (len(peers) + 2)]
    for family, entry in result["families"].items():
        for size, measured in entry["sizes"].items():
            ratios = [_ratio_text(measured, p) for p in peers]
            host = _speed_text(measured.get("host_speed"))
            lines.append(f"| {family} | {size} | {_shape_text(measured['shape'])} | " + " | ".join(ratios)
                         + f" | {measured['matmul_ceiling_gflops_per_second']:.0f} | {host} |")
    if result.get("unsteady"):
        lines += ["", f"**Unsteady figures** (rounds more than {100 * SPREAD_WARNING:.0f}% apart; the machine was "
                  "busy or its state changed during the run, so rerun before quoting them):", ""]
        lines += [f"- {line}" for line in result["unsteady"]]
    errors = [(family, size, name, text) for family, entry in result["families"].items()
              for size, measured in entry["sizes"].items() for name, text in measured["errors"].items()]
    if errors:
        lines += ["", "Not measured:", ""] + [f"- {family} {size} {name}: {text}" for family, size, name, text
                                             in errors]
    if result["targets"]:
        lines += ["", "| target | measured | met |", "|---|---:|---|"]
        for target in result["targets"]:
            measured = "-" if target["measured"] is None else f"{target['measured']:.2f}"
            met = {True: "yes", False: "no", None: "not measured"}[target["met"]]
            lines.append(f"| {target['family']} {target['size']}: {target['metric']} >= {target['target']} | "
                         f"{measured} | {met} |")
    if "scaling" in result:
        lines += ["", *_scaling_table(result["scaling"]["sequence_length"], "time", "sequence length"),
                  "", *_scaling_table(result["scaling"]["image_size"], "image", "image size")]
    for name, rows in result.get("device_scaling", {}).items():
        lines += ["", f"{name}: train-step throughput against device count (global batch {rows[0]['batch_size']}):",
                  "", "| mesh | devices | examples/s | speed-up | efficiency |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {row['mesh']} | {row['devices']} | {row['examples_per_second']:.0f} | {row['speedup']:.2f} | "
                  f"{row['efficiency']:.2f} |" for row in rows]
    if "sweep_strategies" in result:
        from jaxarch.benchmarks.sweep import markdown_lines

        lines += ["", *markdown_lines(result["sweep_strategies"])]
    return "\n".join(lines) + "\n"


def _ratio_text(measured: dict, peer: str) -> str:
    if peer not in measured["ratios"]:
        return "-"
    text = f"{measured['ratios'][peer]:.2f}"
    low_high = measured.get("ratio_ranges", {}).get(peer)
    return text if low_high is None else f"{text} ({low_high[0]:.2f}-{low_high[1]:.2f})"


def _scaling_table(curve: dict, axis: str, title: str) -> list[str]:
    models = list(dict.fromkeys(point["model"] for point in curve["points"]))
    values = list(dict.fromkeys(point[axis] for point in curve["points"]))
    times = {(point["model"], point[axis]): point["median_seconds"] for point in curve["points"]}
    shape = _shape_text({key: value for key, value in curve.items() if key not in ("points", "item_unit")})
    lines = [f"Train-step ms against {title} ({shape}):", "",
             f"| {title} | " + " | ".join(models) + " |", "|---:|" + "---:|" * len(models)]
    for value in values:
        lines.append(f"| {value} | " + " | ".join(f"{1e3 * times[(m, value)]:.1f}" for m in models) + " |")
    return lines


def plot_ratios(result: dict, path: Path) -> None:
    """Bars of jaxarch's steps/s over each peer's at the reference size (the smallest measured size otherwise)."""
    families, ratios = [], {}
    for family, entry in result["families"].items():
        size = "reference" if "reference" in entry["sizes"] else next(iter(entry["sizes"]))
        families.append(f"{family}\n({size})")
        for peer, value in entry["sizes"][size]["ratios"].items():
            ratios.setdefault(peer, {})[len(families) - 1] = value
    figure = Figure(figsize=(max(6.0, 1.3 * len(families)), 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    width = 0.8 / max(1, len(ratios))
    for index, (peer, values) in enumerate(sorted(ratios.items())):
        positions = [i + (index - (len(ratios) - 1) / 2) * width for i in values]
        axes.bar(positions, list(values.values()), width, label=peer)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(families)), families)
    axes.set_ylabel("steps/s ratio (> 1: jaxarch faster)")
    axes.set_title(f"jaxarch vs peers, {result['backend']} {result['dtype']}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_curve(curve: dict, axis: str, xlabel: str, title: str, path: Path) -> None:
    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for model in dict.fromkeys(point["model"] for point in curve["points"]):
        points = [p for p in curve["points"] if p["model"] == model]
        axes.loglog([p[axis] for p in points], [1e3 * p["median_seconds"] for p in points], "o-", label=model)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("train step (ms)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_report(result: dict, json_path: str) -> list[Path]:
    """Writes the Markdown and the plots beside `json_path`; returns their paths."""
    base = Path(json_path)
    stem = base.with_suffix("")
    paths = [base.with_suffix(".md"), Path(f"{stem}_ratios.png")]
    paths[0].write_text(markdown(result))
    plot_ratios(result, paths[1])
    if "scaling" in result:
        sequence, images = result["scaling"]["sequence_length"], result["scaling"]["image_size"]
        paths += [Path(f"{stem}_sequence.png"), Path(f"{stem}_image.png")]
        plot_curve(sequence, "time", "sequence length", f"LSTM vs Transformer block (batch {sequence['batch']}, "
                   f"width {sequence['features']})", paths[2])
        plot_curve(images, "image", "image size", f"CNN (batch {images['batch']})", paths[3])
    return paths
