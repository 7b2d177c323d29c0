"""Quality figures and flags: each flag raised and not raised on made-up results, then on the real engine."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image

from stylecore import StyleOptions, images, stylize
from stylecore.engine import Result
from stylecore.planning import make_plan
from stylecore.quality import CLIPPED_MAX, CONTENT_DRIFT_MAX, SATURATED_MAX, SPREAD_MIN, STYLE_RATIO_MAX, Quality, assess
from stylecore.tracking import IterationRecord

from . import images as fixtures

PLAN = make_plan(StyleOptions(model="squeezenet1_1", device="cpu"), "caffe", 64 * 48, torch.device("cpu"))
ENERGY = 1e6  # Σ P² of the made-up content targets


def photo() -> torch.Tensor:
    return images.load(fixtures.sample_png("tubingen.jpg"), 64)


def result(style_ratio=0.1, content_drift=0.3, image=None) -> Result:
    """A result whose start and end losses give these figures, around `image` (default: a photo)."""
    content = content_drift * PLAN.content_weight * ENERGY
    history = [IterationRecord(1, 0.0, 100.0, 1.0, 101.0, 0.1), IterationRecord(2, content, 100.0 * style_ratio, 1.0, 0.0, 0.2)]
    return Result(
        image=photo() if image is None else image, history=history, best_iteration=2, plan=PLAN, weights_sha256="0" * 64,
        weights_source="test", seconds=0.2, scales=[], memory_budget=0, fallbacks=[], early_stops=[], batch_size=1,
        content_energy=ENERGY, snapshots=[],
    )


def test_a_good_result_raises_no_flag():
    quality = assess(result())
    assert quality.style_ratio == pytest.approx(0.1) and quality.content_drift == pytest.approx(0.3)
    assert quality.degenerate is None and quality.flags == ()


def test_weak_style_is_flagged_above_its_threshold_only():
    assert assess(result(style_ratio=STYLE_RATIO_MAX * 0.9)).flags == ()
    assert assess(result(style_ratio=STYLE_RATIO_MAX * 1.1)).flags == ("weak-style",)
    assert assess(result(style_ratio=1.0)).flags == ("weak-style",)  # one iteration: the start image itself


def test_content_drift_is_flagged_above_its_threshold_and_not_measured_without_a_content_weight():
    assert assess(result(content_drift=CONTENT_DRIFT_MAX * 0.9)).flags == ()
    assert assess(result(content_drift=CONTENT_DRIFT_MAX * 1.5)).flags == ("content-lost",)
    unweighted = replace(result(), plan=replace(PLAN, content_weight=0.0))
    assert assess(unweighted).content_drift is None and assess(unweighted).flags == ()


def test_a_near_constant_image_is_degenerate():
    flat = torch.full((1, 3, 48, 64), 0.5) + 0.004 * torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    quality = assess(result(image=flat))
    assert quality.spread < SPREAD_MIN and quality.flags == ("degenerate",)
    assert quality.degenerate.startswith("near-constant")


def test_a_clipped_image_is_degenerate_but_a_photo_with_some_clipping_is_not():
    generator = torch.Generator().manual_seed(0)
    black_and_white = (torch.rand(1, 1, 48, 64, generator=generator) > 0.5).float().expand(1, 3, 48, 64)
    quality = assess(result(image=black_and_white))
    assert quality.clipped > CLIPPED_MAX and quality.saturated == 0.0  # grey pixels are not pure colours
    assert quality.degenerate.startswith("clipped") and quality.flags == ("degenerate",)
    some = photo().clone()
    some[..., :12, :] = 1.0  # a blown-out sky over a quarter of the picture
    assert assess(result(image=some)).degenerate is None


def test_vivid_colours_are_saturated():
    generator = torch.Generator().manual_seed(0)
    image = torch.full((1, 3, 48, 64), 0.5)
    pure = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])[torch.randint(0, 3, (48, 64), generator=generator)]
    mask = torch.rand(48, 64, generator=generator) < 0.4
    image[0][:, mask] = pure[mask].T
    quality = assess(result(image=image))
    assert quality.clipped <= CLIPPED_MAX and quality.saturated > SATURATED_MAX
    assert quality.degenerate.startswith("saturated") and quality.flags == ("degenerate",)


def test_flags_come_in_a_fixed_order_and_the_record_reads_back():
    flat = torch.full((1, 3, 48, 64), 0.3)
    quality = assess(result(style_ratio=0.9, content_drift=3.0, image=flat))
    assert quality.flags == ("weak-style", "content-lost", "degenerate")
    record = quality.as_record()
    assert record["flags"] == ["weak-style", "content-lost", "degenerate"] and record["degenerate"].startswith("near-constant")
    assert Quality.from_record(record) == Quality(**{**record, "flags": tuple(record["flags"])})


# --- on the real engine -----------------------------------------------------------------------------------


def test_the_suggested_retry_option_suits_the_flag_most_flagged_pairs_have():
    from flows.report import REMEDIES, remedy
    from stylecore.quality import FLAGS

    def pair(*flags):
        return {"id": "-".join(flags) or "fine", "quality": {"flags": list(flags)}}

    assert set(REMEDIES) == set(FLAGS)
    assert remedy([pair("weak-style"), pair()]) == "--style-strength 2"
    assert remedy([pair("content-lost"), pair("content-lost", "degenerate"), pair("weak-style")]) == "--style-strength 0.5"
    assert remedy([pair("degenerate"), pair()]) == "--lr 0.5"


def test_the_engine_reports_the_content_targets_energy_and_one_iteration_is_weak(squeezenet_weights):
    from stylecore.engine import load_encoder, load_weights
    from stylecore.targets import content_features

    content, style = photo(), images.load(fixtures.sample_png("starry_night.jpg"), 64)
    options = StyleOptions(model="squeezenet1_1", weights=str(squeezenet_weights), size=64, device="cpu", iterations=1)
    one = stylize(content, style, options)
    plan = one.plan
    encoder = load_encoder(plan.spec, load_weights(options), (plan.content_layer, *plan.style_layers), torch.device("cpu"))
    assert one.content_energy == pytest.approx(content_features(encoder, plan.content_layer, content).square().sum().item(), rel=1e-5)
    weak = assess(one)
    assert weak.style_ratio == 1.0 and weak.content_drift == 0.0 and weak.flags == ("weak-style",)
    done = assess(stylize(content, style, options.merged({"iterations": 40})))
    assert done.style_ratio < STYLE_RATIO_MAX and done.content_drift < CONTENT_DRIFT_MAX and done.flags == ()


# --- a run, its report, and retry-failed --flagged ------------------------------------------------------

JOB = """output: out
retry_delay_seconds: 0
defaults:
  model: squeezenet1_1
  weights: {weights}
  size: 48
  iterations: 20
pairs:
  - id: good
    content: photos/tubingen.png
    style: styles/starry_night.png
    snapshot_every: 5
  - id: weak
    content: photos/tubingen.png
    style: styles/the_scream.png
    iterations: 1
"""


def _server_view(flow_run_id: str):
    """The run's final state message and its summary table and report markdown, as the dashboard shows them."""
    import asyncio
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read():
        async with get_client() as client:
            flow_run = await client.read_flow_run(flow_run_id)
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
            return flow_run, artifacts

    flow_run, artifacts = asyncio.run(read())
    (table,) = [a for a in artifacts if a.type == "table"]
    (markdown,) = [a for a in artifacts if a.type == "markdown"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    return flow_run.state.message, {r["pair"]: r for r in rows}, markdown.data


@pytest.mark.slow
def test_a_weak_pair_is_flagged_and_retry_flagged_reruns_exactly_it_stronger(tmp_path, squeezenet_weights, prefect_api):
    """One run: the weak pair (1 iteration) flagged in meta.json, report.json, the summary table, the report and
    the flow's final message; the good one writes its snapshots. Then retry-failed --flagged with a stronger setting."""
    import json

    from .test_pipeline import lay_out_job, run_cli

    lay_out_job(tmp_path, squeezenet_weights)
    (tmp_path / "job.yaml").write_text(JOB.format(weights=squeezenet_weights))
    code, out, err = run_cli("run", str(tmp_path / "job.yaml"))
    assert code == 0, err
    assert "1 flagged: weak (weak-style); re-run them with the setting they need, e.g.: stylize retry-failed" in out
    assert out.rstrip().endswith("--flagged --style-strength 2")
    out_dir = tmp_path / "out"
    (run_dir,) = (out_dir / "_runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    quality = {p["id"]: p["quality"] for p in report["pairs"]}
    assert report["flagged"] == ["weak"] and report["counts"]["completed"] == 2
    assert quality["weak"]["flags"] == ["weak-style"] and quality["weak"]["style_ratio"] == 1.0
    assert quality["good"]["flags"] == [] and quality["good"]["style_ratio"] < STYLE_RATIO_MAX
    assert json.loads((out_dir / "weak" / "meta.json").read_text())["quality"] == quality["weak"]

    good_meta = json.loads((out_dir / "good" / "meta.json").read_text())
    names = [f"snapshots/iter-{i:04d}.png" for i in (5, 10, 15, 20)]
    assert good_meta["outputs"]["snapshots"] == names and good_meta["options"]["snapshot_every"] == 5
    assert sorted(str(p.relative_to(out_dir / "good")) for p in (out_dir / "good" / "snapshots").iterdir()) == names
    assert all(Image.open(out_dir / "good" / name).size == (48, 36) for name in names)
    assert not (out_dir / "weak" / "snapshots").exists() and "snapshots" not in json.loads((out_dir / "weak" / "meta.json").read_text())["outputs"]

    message, rows, markdown = _server_view(report["flow_run_id"])
    assert message == "2 pairs done; 1 flagged: weak (weak-style)"
    assert rows["weak"]["flags"] == "weak-style" and rows["weak"]["style ratio"] == "1" and rows["good"]["flags"] == ""
    assert "## Flagged pairs" in markdown and "| weak | weak-style | 1 |" in markdown

    code, out, err = run_cli("retry-failed", report["report"], "--flagged")
    assert code == 2 and err.count("\n") == 1 and "need a stronger setting" in err
    code, out, err = run_cli("retry-failed", report["report"], "--flagged", "--iterations", "0")
    assert code == 2 and err.strip() == "stylize: error: --iterations: Input should be greater than or equal to 1 (got '0')"

    good_before = (out_dir / "good" / "meta.json").read_bytes()
    code, out, err = run_cli("retry-failed", report["report"], "--flagged", "--iterations", "20")
    assert code == 0, err
    assert "1 completed, 0 skipped, 0 failed" in out and " flagged: " not in out
    retry = json.loads(next(p for p in (out_dir / "_runs").glob("*retry*/report.json")).read_text())
    assert [p["id"] for p in retry["pairs"]] == ["weak"] and retry["flagged"] == []
    weak_meta = json.loads((out_dir / "weak" / "meta.json").read_text())
    assert weak_meta["options"]["iterations"] == 20 and weak_meta["iterations"] == 20 and weak_meta["quality"]["flags"] == []
    assert (out_dir / "good" / "meta.json").read_bytes() == good_before  # untouched
