"""Run report: report.md and a self-contained report.html (PNG plots embedded), per task."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from selfguide.stages.context import Context
from selfguide.stages.train import training_data_words
from selfguide.store import atomic_write_text, read_records

METRIC_NAMES = {
    "exact_match": "exact match (NIv2)", "rougeL": "ROUGE-L (NIv2)",
    "paper_exact_match": "exact match (paper-compatible)", "paper_rougeL": "ROUGE-L char-LCS (paper-compatible)",
}


def evaluated_systems(manifests: dict[str, Any]) -> dict[str, Any]:
    """Results per evaluated system (none for a task without labelled items)."""
    found = {k: m["results"] for k, m in manifests.get("baselines", {}).items()}
    if "selfguide" in manifests:
        found["selfguide"] = manifests["selfguide"]["results"]
    return found


def _plots(ctx: Context, manifests: dict[str, Any], verdict: dict[str, Any]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = ctx.task_dir / "report_files"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    losses = read_records(ctx.stage_dir("train") / "metrics.jsonl")
    if losses:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot([r["step"] for r in losses], [r["loss"] for r in losses], lw=1.2)
        ax.set(xlabel="step", ylabel="training loss (answer tokens)", title="Training loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths["loss"] = out_dir / "loss.png"
        fig.savefig(paths["loss"], dpi=110)
        plt.close(fig)

    rows = manifests["generate"]["funnel"] + manifests["annotate"]["funnel"][1:]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(rows) + 1))
    labels = [r[0] for r in rows][::-1]
    values = [abs(r[1]) for r in rows][::-1]
    colors = ["#c0504d" if r[1] < 0 else "#4f81bd" for r in rows][::-1]
    ax.barh(labels, values, color=colors)
    ax.set(title="Synthesis funnel (red = dropped)", xlabel="items")
    fig.tight_layout()
    paths["funnel"] = out_dir / "funnel.png"
    fig.savefig(paths["funnel"], dpi=110)
    plt.close(fig)

    systems = evaluated_systems(manifests)
    if ctx.task.labels and systems:
        labs = list(ctx.task.labels)
        fig, ax = plt.subplots(figsize=(6, 3.2))
        width = 0.8 / len(systems)
        for i, (name, res) in enumerate(systems.items()):
            ax.bar([j + i * width for j in range(len(labs))], [res.get("per_label", {}).get(lab, {}).get("accuracy", 0) for lab in labs], width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labs))], labs)
        ax.set(ylabel="accuracy (%)", title="Accuracy per gold label", ylim=(0, 100))
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths["per_label"] = out_dir / "per_label.png"
        fig.savefig(paths["per_label"], dpi=110)
        plt.close(fig)
    return paths


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def build_sections(ctx: Context, manifests: dict[str, Any], verdict: dict[str, Any]) -> dict[str, Any]:
    """Everything both formats show, as plain data."""
    systems = evaluated_systems(manifests)
    names = list(systems)
    score_rows = []
    for metric in sorted(verdict["deltas"]):
        d = verdict["deltas"][metric]
        score_rows.append([METRIC_NAMES.get(metric, metric), *[f"{systems[n]['scores'].get(metric, 0):.1f}" for n in names],
                           f"{d['delta']:+.1f}", f"[{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]"])
    if ctx.task.labels and systems:
        score_rows.append(["valid-label outputs (%)", *[f"{systems[n].get('valid_label_share', 0):.1f}" for n in names], "", ""])
    funnel = manifests["generate"]["funnel"] + manifests["annotate"]["funnel"]
    base_preds = read_records(ctx.stage_dir("evaluate") / "prompt-fewshot" / "predictions.jsonl")
    ft_preds = {r["id"]: r for r in read_records(ctx.stage_dir("evaluate") / "selfguide" / "predictions.jsonl")}
    inputs = {it.id: it.input for it in ctx.task.instances}
    samples = []
    for b in base_preds[:10]:
        f = ft_preds.get(b["id"], {})
        inp = inputs.get(b["id"], "")[:200]
        samples.append([inp, b["references"][0][:120], b["prediction"][:120], f.get("prediction", "")[:120]])
    pairs = read_records(ctx.stage_dir("annotate") / "pairs.jsonl")[:5]
    return {"systems": names, "score_header": ["metric", *names, "delta (selfguide - prompt-fewshot)", "95% CI"],
            "score_rows": score_rows, "funnel": funnel, "samples": samples, "systems_results": systems,
            "synthetic": [[p["input"][:200], p["output"][:120]] for p in pairs]}


def write_report(ctx: Context, manifests: dict[str, Any], verdict: dict[str, Any]) -> Path:
    s = build_sections(ctx, manifests, verdict)
    plots = _plots(ctx, manifests, verdict)
    model = verdict.get("model", {})
    t = ctx.cfg.train
    header = [
        f"- task: `{ctx.task.id}` ({ctx.task.kind}, {len(ctx.task.examples)} examples; source `{ctx.task.source}`)",
        f"- model: {model.get('name')} (sha256 `{str(model.get('sha256'))[:16]}`), generation backend {ctx.engine()}, dtype {ctx.cfg.model.dtype}",
        (f"- evaluation: split `{verdict['split']}`, {verdict['n_items']} items, greedy decoding; primary metric "
         f"{METRIC_NAMES.get(verdict['metric'], verdict['metric'])}" if verdict["n_items"] else
         f"- evaluation: none (no labelled items in split `{verdict['split']}`)"),
        f"- {verdict['handed_over']}",
        *([f"- {verdict['gate_skipped']}"] if verdict.get("gate_skipped") else []),
        f"- training: {t.method}, {t.epochs} epochs, seed {ctx.cfg.seed}; "
        f"{training_data_words(manifests['train']['counts'])}",
        f"- config: `{ctx.task_dir / 'config.yaml'}`",
    ]
    counts = manifests["annotate"]["counts"]
    diagnosis = (verdict.get("diagnosis") or {}).get("line")
    md = [f"# selfguide report: {ctx.task.id}", "", f"**{verdict['sentence']}**", "", *([diagnosis, ""] if diagnosis else []),
          *header, "", "## Verdict", ""]
    if s["score_rows"]:
        md += _md_table(s["score_header"], s["score_rows"])
        md += ["", "Scores in points (0-100). Deltas with a paired bootstrap 95% CI over items."]
    else:
        md += ["Nothing was evaluated: " + verdict["sentence"]]
    md += ["", "## Synthesis funnel", ""]
    md += _md_table(["step", "count"], s["funnel"])
    if "label_mix_before" in counts:
        md += ["", f"Label mix before balancing: {counts['label_mix_before']}; after: {counts['label_mix_after']}. "
               f"Label source: {counts['label_source']}. Agreement of votes with target labels: {counts.get('agreement_with_target')}."]
    md += ["", "![funnel](report_files/funnel.png)", ""]
    if "loss" in plots:
        md += ["## Training loss", "", "![loss](report_files/loss.png)", ""]
    if "per_label" in plots:
        md += ["## Per-label accuracy", "", "![per label](report_files/per_label.png)", ""]
        rows = []
        for name, res in s["systems_results"].items():
            rows.append([name, *[res.get("per_label", {}).get(lab, {}).get("accuracy", "-") for lab in ctx.task.labels],
                         json.dumps(res.get("predicted_mix", {}))])
        md += _md_table(["system", *ctx.task.labels, "predicted mix"], rows)
    md += ["", "## Synthetic training pairs (first 5)", ""]
    md += _md_table(["input", "output"], [[_cell(a), _cell(b)] for a, b in s["synthetic"]])
    if s["samples"]:
        md += ["", "## Sample predictions (first 10 items)", ""]
        md += _md_table(["input", "reference", "prompt-fewshot", "selfguide"], [[_cell(c) for c in row] for row in s["samples"]])
    atomic_write_text(ctx.task_dir / "report.md", "\n".join(md) + "\n")
    atomic_write_text(ctx.task_dir / "report.html", _html(ctx, verdict, header, s, plots))
    return ctx.task_dir / "report.html"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _html(ctx: Context, verdict: dict[str, Any], header: list[str], s: dict[str, Any], plots: dict[str, Path]) -> str:
    diagnosis = (verdict.get("diagnosis") or {}).get("line")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>selfguide report: {html.escape(ctx.task.id)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px;vertical-align:top}"
        "th{background:#f2f2f2}.verdict{font-size:1.2em;font-weight:600;background:#eef5ff;padding:.6em;border-radius:6px}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>selfguide report: {html.escape(ctx.task.id)}</h1>",
        f"<p class='verdict' id='verdict'>{html.escape(verdict['sentence'])}</p>",
        f"<p id='diagnosis'>{html.escape(diagnosis)}</p>" if diagnosis else "",
        "<ul>" + "".join(f"<li>{html.escape(h[2:].replace('`', ''))}</li>" for h in header) + "</ul>",
        "<h2>Verdict</h2>", _html_table(s["score_header"], s["score_rows"]) if s["score_rows"] else "<p>Nothing was evaluated.</p>",
        "<h2>Synthesis funnel</h2>", _html_table(["step", "count"], s["funnel"]), _img(plots["funnel"], "funnel"),
    ]
    if "loss" in plots:
        parts += ["<h2>Training loss</h2>", _img(plots["loss"], "training loss")]
    if "per_label" in plots:
        parts += ["<h2>Per-label accuracy</h2>", _img(plots["per_label"], "per-label accuracy")]
    parts += ["<h2>Synthetic training pairs (first 5)</h2>", _html_table(["input", "output"], s["synthetic"])]
    if s["samples"]:
        parts += ["<h2>Sample predictions</h2>", _html_table(["input", "reference", "prompt-fewshot", "selfguide"], s["samples"])]
    parts += ["</body></html>"]
    return "\n".join(parts)
