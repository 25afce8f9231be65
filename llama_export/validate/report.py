"""DIR/report/: report.json (every number), report.html (self-contained: plots inlined as base64 PNG, no
external assets, readable offline) and the plots as PNG files.

The folder is written to a staging sibling and renamed into place (artifacts.staged_output), so a reader never
sees half a report. Every value the HTML shows is tagged `data-key="dotted.path"` into report.json, which is
how the tests check that the JSON carries everything the page displays.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

REPORT_DIR, REPORT_JSON, REPORT_HTML = "report", "report.json", "report.html"
PLOTS = {"per_step": "Error per decode step (teacher-forced)", "per_position": "Error vs position",
         "per_layer": "Error per decoder layer (bisection)"}


def write_report(data: dict, folder: str | Path, subfolder: str = REPORT_DIR) -> Path:
    """Write DIR/`subfolder`/ (default DIR/report/) and return its path."""
    from ..exporter.artifacts import staged_output

    target = Path(folder).absolute() / subfolder
    plots = render_plots(data)
    # report/ lives inside an output folder the caller already owns: replacing it needs no manifest of its own
    with staged_output(target, force=True, option="the report folder") as staging:
        (staging / REPORT_JSON).write_text(json.dumps(_finite(data), indent=2) + "\n", encoding="utf-8")
        for name, png in plots.items():
            (staging / f"{name}.png").write_bytes(png)
        (staging / REPORT_HTML).write_text(render_html(data, plots), encoding="utf-8")
    return target


def _finite(value):
    """JSON has no NaN/Infinity: write them as strings so report.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg: no display needed)


def render_plots(data: dict) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    plots = {"per_step": _per_step, "per_position": _per_position}
    if (data.get("layers") or {}).get("available"):
        plots["per_layer"] = _per_layer
    rendered = {}
    for name, draw in plots.items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        draw(data, axes)
        fig.suptitle(PLOTS[name])
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        rendered[name] = buffer.getvalue()
    return rendered


def _positive(values):
    return [max(float(v), 1e-18) for v in values]  # log axes cannot show an exact 0 (a bit-exact match)


def _per_step(data, axes):
    noise = data.get("noise_floor")
    for ax, key, label in ((axes[0], "max_abs", "max |logit error|"), (axes[1], "kl", "KL(ref ‖ cand), nats")):
        steps = [s["step"] for s in data["per_step"]]
        ax.semilogy(steps, _positive(s[key] for s in data["per_step"]), "o-", label="candidate")
        if noise:
            ax.semilogy(steps, _positive(s[key] for s in noise["per_step"]), "x--", label=f"noise ({noise['dtype']})")
        ax.set_xlabel("step (0 = prefill)")
        ax.set_ylabel(label)
        ax.legend()


def _per_position(data, axes):
    noise = data.get("noise_floor")
    boundary = data["inputs"]["prompt_tokens"] - 0.5
    for ax, key, label in ((axes[0], "max_abs", "max |logit error|"), (axes[1], "kl", "KL, nats")):
        values = data["per_position"][key]
        ax.semilogy(range(len(values)), _positive(values), "-", label="candidate")
        if noise:
            ax.semilogy(range(len(values)), _positive(noise["per_position"][key]), "--", label="noise")
        ax.axvline(boundary, color="gray", linestyle=":", label="prefill | decode")
        ax.set_xlabel("position")
        ax.set_ylabel(label)
        ax.legend()


def _per_layer(data, axes):
    layers = data["layers"]
    index = list(range(len(layers["errors"])))
    ax = axes[0]
    ax.semilogy(index, _positive(layers["errors"]), "o-", label="candidate")
    ax.semilogy(index, _positive(layers["limits"]), "k:", label="limit")
    if layers.get("noise_errors"):
        ax.semilogy(index, _positive(layers["noise_errors"]), "x--", label="noise")
    if layers.get("first_bad_layer") is not None:
        ax.axvline(layers["first_bad_layer"], color="red", alpha=0.4, label="first bad layer")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("relative RMS error")
    ax.legend()
    growth = [e / max(p, 1e-30) for p, e in zip([0.0, *layers["errors"][:-1]], layers["errors"])][1:]
    axes[1].bar(index[1:], growth)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("decoder layer")
    axes[1].set_ylabel("error growth vs previous layer")


# ---------------------------------------------------------------------------------------------------------------
# HTML


def _get(data: dict, key: str):
    value = data
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "—"}[value]
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell(data: dict, key: str) -> str:
    return f'<td data-key="{html.escape(key)}">{html.escape(_fmt(_get(data, key)))}</td>'


def _table(headers: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render_html(data: dict, plots: dict[str, bytes]) -> str:
    verdict = "PASS" if data["passed"] else "FAIL"
    parts = [f'<h1>Validation: <span class="{verdict.lower()}" data-key="passed">{verdict}</span></h1>',
             _table(["folder", "precision", "reference", "candidate"],
                    ["<tr>" + "".join(_cell(data, k) for k in ("folder", "precision", "reference.checkpoint",
                                                                 "candidate.runner")) + "</tr>"])]
    rows = [f"<tr><td>{html.escape(c['name'])}</td>{_cell(data, f'gate.checks.{i}.value')}"
            f"{_cell(data, f'gate.checks.{i}.limit')}{_cell(data, f'gate.checks.{i}.rule')}"
            f"{_cell(data, f'gate.checks.{i}.passed')}</tr>" for i, c in enumerate(data["gate"]["checks"])]
    parts += ["<h2>Gate</h2>", _table(["check", "value", "limit", "rule", "passed"], rows)]
    noise = data.get("noise_floor")
    rows = [f"<tr><td>{html.escape(m)}</td>{_cell(data, f'overall.{m}')}"
            + (_cell(data, f"noise_floor.overall.{m}") if noise else "<td>—</td>") + "</tr>" for m in data["overall"]]
    parts += ["<h2>Logits, all steps</h2>", _table(["metric", "candidate", "noise floor"], rows)]
    ppl = ["reference", "candidate", "delta"]
    rows = [f"<tr><td>{k}</td>{_cell(data, f'perplexity.{k}')}"
            + (_cell(data, f"noise_floor.perplexity.{k}") if noise else "<td>—</td>") + "</tr>" for k in ppl]
    parts += ["<h2>Perplexity on the prompt text</h2>", _table(["", "candidate", "noise floor"], rows)]
    free = f"<tr>{_cell(data, 'free_running.steps')}{_cell(data, 'free_running.first_divergence')}"
    free += (_cell(data, "noise_floor.free_running_first_divergence") if noise else "<td>—</td>") + "</tr>"
    parts += ["<h2>Free-running greedy generation</h2>",
              _table(["steps", "first divergent step (candidate)", "first divergent step (noise floor)"], [free])]
    parts += _layers_html(data)
    for name, png in plots.items():
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(f'<h2>{html.escape(PLOTS[name])}</h2><img id="plot-{name}" alt="{html.escape(PLOTS[name])}" '
                     f'src="data:image/png;base64,{encoded}">')
    step_rows = [f"<tr>{_cell(data, f'per_step.{i}.step')}{_cell(data, f'per_step.{i}.kind')}"
                 f"{_cell(data, f'per_step.{i}.max_abs')}{_cell(data, f'per_step.{i}.kl')}"
                 f"{_cell(data, f'per_step.{i}.top1')}</tr>" for i in range(len(data["per_step"]))]
    parts += ["<h2>Per step</h2>", _table(["step", "kind", "max abs", "KL", "top-1"], step_rows)]
    inputs = ["source", "prompt_tokens", "steps", "batch"]
    parts += ["<h2>Inputs</h2>", _table(inputs, ["<tr>" + "".join(_cell(data, f"inputs.{k}") for k in inputs)
                                                 + "</tr>"])]
    libs = data["versions"]["libraries"]
    parts += ["<h2>Versions</h2>", _table(["library", "version"], [
        f"<tr><td>{html.escape(k)}</td>{_cell(data, f'versions.libraries.{k}')}</tr>" for k in libs])]
    return _PAGE.format(title=f"llama-export validation: {verdict}", body="\n".join(parts))


def _layers_html(data: dict) -> list[str]:
    layers = data.get("layers")
    if not layers:
        return ["<h2>Layer bisection</h2><p>Not run (the gate passed; run with bisect=always to see it).</p>"]
    if not layers["available"]:
        return [f'<h2>Layer bisection</h2><p data-key="layers.reason">{html.escape(layers["reason"])}</p>']
    rows = [f"<tr><td>{i}</td>{_cell(data, f'layers.errors.{i}')}{_cell(data, f'layers.limits.{i}')}</tr>"
            for i in range(len(layers["errors"]))]
    return ["<h2>Layer bisection</h2>",
            ('<p>First layer whose error jumps: <b data-key="layers.first_bad_layer">'
             f'{html.escape(_fmt(layers["first_bad_layer"]))}</b></p>'),
            _table(["layer", "relative error", "limit"], rows)]


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 14px; }}
.pass {{ color: #17803d; }} .fail {{ color: #c0271d; }}
img {{ max-width: 100%; }}
</style></head>
<body>
{body}
</body></html>
"""

__all__ = ["REPORT_DIR", "REPORT_HTML", "REPORT_JSON", "render_html", "render_plots", "write_report"]
