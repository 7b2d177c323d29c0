"""Manifest validation and expansion: every problem on its own line with file, line, field and value."""

from __future__ import annotations

import pytest

from flows import cli
from flows.manifest import MAX_MANIFEST_BYTES, BadManifest, load

from . import images as fixtures


@pytest.fixture
def folder(tmp_path):
    for name in ("photos/a.png", "photos/b.png", "styles/s1.jpg", "styles/s2.jpg"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fixtures.rgb_png() if name.endswith(".png") else fixtures.jpeg())
    return tmp_path


def write(folder, text: str):
    path = folder / "job.yaml"
    path.write_text(text)
    return str(path)


def problems(path: str) -> list[str]:
    with pytest.raises(BadManifest) as caught:
        load(path)
    return caught.value.problems


def test_expansion_globs_lists_ids_and_overrides(folder):
    path = write(
        folder,
        "output: out\ndefaults: {size: 64, model: squeezenet1_1}\npairs:\n"
        "  - {id: first, content: photos/a.png, style: styles/s1.jpg, iterations: 7}\n"
        "  - {content: 'photos/*.png', style: [styles/s1.jpg, styles/s2.jpg]}\n",
    )
    loaded = load(path)
    assert loaded.output == str(folder / "out")
    assert [p.id for p in loaded.pairs] == ["first", "a-s1", "a-s2", "b-s1", "b-s2"]
    assert loaded.pairs[0].options.iterations == 7 and loaded.pairs[1].options.iterations == 300
    assert all(p.options.size == 64 and p.options.model == "squeezenet1_1" for p in loaded.pairs)
    assert loaded.pairs[3].content == str(folder / "photos" / "b.png")
    assert loaded.pairs[4].output == str(folder / "out" / "b-s2")
    assert load(path).pairs == loaded.pairs  # deterministic


def test_a_pair_may_blend_styles_with_weights(folder):
    path = write(
        folder,
        "output: out\nbatch_size: 4\nmemory_limit_gb: 8\npairs:\n"
        "  - {content: 'photos/*.png', style: {styles/s1.jpg: 0.7, styles/s2.jpg: 0.3}}\n"
        "  - {id: plain, content: photos/a.png, style: styles/s1.jpg}\n",
    )
    loaded = load(path)
    assert [p.id for p in loaded.pairs] == ["a-s1-s2", "b-s1-s2", "plain"]
    blend = loaded.pairs[0]
    assert blend.styles == ((str(folder / "styles" / "s1.jpg"), 0.7), (str(folder / "styles" / "s2.jpg"), 0.3))
    assert blend.style == str(folder / "styles" / "s1.jpg")  # the first, for tables and contact sheets
    assert loaded.pairs[2].styles == ((str(folder / "styles" / "s1.jpg"), 1.0),) and loaded.pairs[2].blend == ()
    assert loaded.manifest.batch_size == 4 and loaded.manifest.memory_limit_gb == 8


def test_a_sweep_expands_to_the_cross_product_with_ids_naming_the_values(folder):
    path = write(
        folder,
        "output: out\ndefaults: {size: 64}\npairs:\n"
        "  - content: photos/a.png\n    style: styles/s1.jpg\n    sweep: {style_strength: [0.5, 1, 2], tv_weight: [0.01, 0.1]}\n"
        "  - {id: plain, content: photos/a.png, style: styles/s1.jpg}\n"
        "  - {content: 'photos/*.png', style: styles/s2.jpg, sweep: {model: [vgg19, squeezenet1_1]}}\n",
    )
    loaded = load(path)
    swept = loaded.pairs[:6]
    assert [p.id for p in swept] == [
        f"a-s1-style_strength={s}-tv_weight={t}" for s in ("0.5", "1", "2") for t in ("0.01", "0.1")
    ]
    assert [(p.options.style_strength, p.options.tv_weight) for p in swept] == [(s, t) for s in (0.5, 1, 2) for t in (0.01, 0.1)]
    assert swept[0].sweep == (("style_strength", "0.5"), ("tv_weight", "0.01")) and {p.sweep_of for p in swept} == {"a-s1"}
    assert all(p.options.size == 64 for p in swept) and swept[5].output == str(folder / "out" / "a-s1-style_strength=2-tv_weight=0.1")
    plain = loaded.pairs[6]
    assert plain.id == "plain" and plain.sweep == () and plain.sweep_of is None and plain.options.style_strength == 1
    assert [(p.id, p.sweep_of) for p in loaded.pairs[7:]] == [
        ("a-s2-model=vgg19", "a-s2"), ("a-s2-model=squeezenet1_1", "a-s2"), ("b-s2-model=vgg19", "b-s2"), ("b-s2-model=squeezenet1_1", "b-s2")
    ]
    assert load(path).pairs == loaded.pairs  # deterministic, so pair_ids and retry-failed find the same pairs


def test_a_sweep_in_defaults_sweeps_every_pair_that_does_not_set_the_option(folder):
    path = write(
        folder,
        "output: out\ndefaults:\n  sweep: {style_strength: [0.5, 2]}\npairs:\n"
        "  - {id: swept, content: photos/a.png, style: styles/s1.jpg, sweep: {seed: [1, 2]}}\n"
        "  - {id: fixed, content: photos/a.png, style: styles/s1.jpg, style_strength: 3}\n",
    )
    assert [(p.id, p.options.style_strength) for p in load(path).pairs] == [
        ("swept-style_strength=0.5-seed=1", 0.5), ("swept-style_strength=0.5-seed=2", 0.5),
        ("swept-style_strength=2-seed=1", 2), ("swept-style_strength=2-seed=2", 2), ("fixed", 3),
    ]


def test_a_long_swept_id_is_cut_and_stays_unique(folder):
    base = "x" * 125
    path = write(folder, f"output: out\npairs:\n  - {{id: {base}, content: photos/a.png, style: styles/s1.jpg, sweep: {{seed: [1, 2]}}}}\n")
    ids = [p.id for p in load(path).pairs]
    assert len(set(ids)) == 2 and all(len(i) == 128 and i.startswith("x" * 119) for i in ids)


def test_the_pair_limit_counts_a_sweep_before_expanding_it(folder):
    sweep = f"{{seed: {list(range(300))}, iterations: {list(range(1, 201))}}}"
    (problem,) = problems(write(folder, f"output: out\npairs:\n  - {{content: photos/a.png, style: styles/s1.jpg, sweep: {sweep}}}\n"))
    assert "job.yaml:3: pairs[0]: 60,000 pairs so far is over the limit of 50,000 pairs per manifest" in problem


def test_colliding_derived_ids_get_a_hash(folder):
    (folder / "other").mkdir()
    (folder / "other" / "a.png").write_bytes(fixtures.rgb_png())
    path = write(folder, "output: out\npairs:\n  - {content: [photos/a.png, other/a.png], style: styles/s1.jpg}\n")
    ids = [p.id for p in load(path).pairs]
    assert len(set(ids)) == 2 and all(i.startswith("a-s1-") for i in ids)


SWEEP = "output: out\npairs:\n  - content: photos/a.png\n    style: styles/s1.jpg\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("output: out\npairs: [\n", ["job.yaml:3: not valid YAML"]),
        ("- just\n- a list\n", ["job.yaml:1: manifest: expected a mapping"]),
        ("output: out\npairs: []\n", ["job.yaml:2: pairs: must be a non-empty list"]),
        ("output: out\ncolour: blue\npairs: [{content: photos/a.png, style: styles/s1.jpg}]\n", ["job.yaml:2: colour: unknown key; allowed: output, name, defaults"]),
        ("output: out\ndefaults: {size: big}\npairs: [{content: photos/a.png, style: styles/s1.jpg}]\n", ["job.yaml:2: defaults.size: Input should be a valid integer", "(got 'big')"]),
        ("output: out\ndefaults: {tv_weight: .nan}\npairs: [{content: photos/a.png, style: styles/s1.jpg}]\n", ["defaults.tv_weight", "finite"]),
        ("output: out\npairs:\n  - {content: photos/a.png, style: styles/s1.jpg, stlye: x}\n", ["job.yaml:3: pairs[0].stlye: unknown key; allowed: id, content, style, sweep, model"]),
        ("output: out\npairs:\n  - {content: photos/nope.png, style: styles/s1.jpg}\n", ["job.yaml:3: pairs[0].content: missing input 'photos/nope.png'"]),
        ("output: out\npairs:\n  - {content: 'photos/*.gif', style: styles/s1.jpg}\n", ["pairs[0].content: glob 'photos/*.gif' matches nothing"]),
        ("output: out\npairs:\n  - {content: photos/a.png, style: [styles/s1.jpg, styles/gone.jpg]}\n", ["pairs[0].style[1]: missing input 'styles/gone.jpg'"]),
        ("output: out\npairs:\n  - {id: x, content: photos/a.png, style: styles/s1.jpg}\n  - {id: x, content: photos/b.png, style: styles/s1.jpg}\n", ["job.yaml:4: pairs[1].id: duplicate id 'x' (first at pairs[0])"]),
        ("output: out\npairs:\n  - {id: ../up, content: photos/a.png, style: styles/s1.jpg}\n", ["pairs[0].id: must be 1-128 of [a-z0-9._-]", "(got '../up')"]),
        ("output: out\npairs:\n  - {id: a/b, content: photos/a.png, style: styles/s1.jpg}\n", ["pairs[0].id"]),
        ("output: out\npairs:\n  - {id: _hidden, content: photos/a.png, style: styles/s1.jpg}\n", ["pairs[0].id"]),
        ("output: out\npairs:\n  - {content: photos/a.png}\n", ["pairs[0].style: Field required"]),
        ("output: out\npairs:\n  - {content: photos/a.png, style: {styles/s1.jpg: -1}}\n", ["job.yaml:3: pairs[0].style: blend weight of 'styles/s1.jpg' must be a positive number (got -1"]),
        ("output: out\npairs:\n  - {content: photos/a.png, style: {'styles/*.jpg': 1}}\n", ["pairs[0].style: a blend names images, not globs"]),
        ("output: out\npairs:\n  - content: photos/a.png\n    style: {styles/s1.jpg: 1, styles/gone.jpg: 2}\n", ["job.yaml:4: pairs[0].style.styles/gone.jpg: missing input 'styles/gone.jpg'"]),
        ("output: out\nbatch_size: 0\npairs: [{content: photos/a.png, style: styles/s1.jpg}]\n", ["job.yaml:2: batch_size: must be auto or a whole number from 1 to 16 (got 0)"]),
        ("output: out\nbatch_size: many\npairs: [{content: photos/a.png, style: styles/s1.jpg}]\n", ["job.yaml:2: batch_size: must be auto"]),
        ("output: out\nmemory_limit_gb: -2\npairs: [{content: photos/a.png, style: styles/s1.jpg}]\n", ["job.yaml:2: memory_limit_gb: Input should be greater than 0"]),
        ("output: out\ndefaults: {style_size: 300, style_scale: 0.5}\npairs: [{content: photos/a.png, style: styles/s1.jpg}]\n", ["job.yaml:2: defaults: style_size and style_scale both set"]),
        ("output: out\ndefaults: {colour: sepia}\npairs: [{content: photos/a.png, style: styles/s1.jpg}]\n", ["job.yaml:2: defaults.colour: Input should be 'style', 'luminance' or 'histogram'"]),
        (SWEEP + "    sweep: {style_strength: [0.5, -1]}\n", ["job.yaml:5: pairs[0].sweep.style_strength[1]: Input should be greater than 0 (got -1)"]),
        (SWEEP + "    sweep: {style_strength: [0.5, 1000]}\n", ["pairs[0].sweep.style_strength[1]: Input should be less than or equal to 100 (got 1000)"]),
        (SWEEP + "    sweep: {stlye_strength: [1, 2]}\n", ["job.yaml:5: pairs[0].sweep.stlye_strength: unknown option; options: model,", "style_strength"]),
        (SWEEP + "    sweep: {tv_weight: 0.1}\n", ["job.yaml:5: pairs[0].sweep.tv_weight: must be a non-empty list of values (got 0.1)"]),
        (SWEEP + "    sweep: {tv_weight: []}\n", ["pairs[0].sweep.tv_weight: must be a non-empty list of values (got [])"]),
        (SWEEP + "    sweep: {tv_weight: [0.1, 0.2, 0.1]}\n", ["pairs[0].sweep.tv_weight[2]: repeats 0.1"]),
        (SWEEP + "    sweep: [0.5, 1]\n", ["job.yaml:5: pairs[0].sweep: Input should be a valid dictionary"]),
        (SWEEP + "    sweep: {}\n", ["pairs[0].sweep: must map options to lists of values"]),
        (SWEEP + "    tv_weight: 0.1\n    sweep: {tv_weight: [0.1, 1]}\n", ["job.yaml:6: pairs[0].sweep.tv_weight: tv_weight is also set beside the sweep; give one"]),
        (SWEEP + "    style_scale: 0.5\n    sweep: {style_size: [64]}\n", ["pairs[0].sweep.style_size[0]: style_size and style_scale both set", "(got 64)"]),
        (SWEEP + "    sweep: {style_size: [64], style_scale: [0.5]}\n", ["job.yaml:5: pairs[0].sweep: style_size=64, style_scale=0.5: style_size and style_scale both set"]),
        ("output: out\ndefaults: {sweep: {seed: [1, -2]}}\npairs: [{content: photos/a.png, style: styles/s1.jpg}]\n", ["job.yaml:2: defaults.sweep.seed[1]: Input should be greater than or equal to 0 (got -2)"]),
        ("output: out\ndefaults: {sweep: {style_size: [64]}}\npairs: [{content: photos/a.png, style: styles/s1.jpg, style_scale: 0.5}]\n", ["job.yaml:3: pairs[0]: defaults.sweep.style_size[0]: style_size and style_scale both set"]),
    ],
)
def test_each_problem_is_one_line_naming_where_and_what(folder, text, expected):
    found = problems(write(folder, text))
    assert any(all(part in p for part in expected) for p in found), found
    assert all("\n" not in p and p.startswith(str(folder / "job.yaml")) for p in found)


def test_every_problem_is_reported_at_once(folder):
    text = (
        "output: out\ncolour: blue\ndefaults: {model: vgg99}\npairs:\n"
        "  - {id: x, content: photos/a.png, style: styles/s1.jpg, iterations: -1}\n"
        "  - {id: x, content: photos/none.png, style: styles/s1.jpg}\n"
    )
    found = problems(write(folder, text))
    assert len(found) == 5, found
    assert [int(p.split(":")[1]) for p in found] == sorted(int(p.split(":")[1]) for p in found)


def test_alias_bomb_is_refused(folder):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [*{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}]")
    (found,) = problems(write(folder, "\n".join(lines) + "\noutput: out\npairs: []\n"))
    assert "alias bomb" in found


def test_oversized_manifest_is_refused(folder):
    (found,) = problems(write(folder, "# " + "x" * MAX_MANIFEST_BYTES + "\n"))
    assert "over the manifest limit" in found


def test_yaml_is_loaded_safely(folder):
    found = problems(write(folder, "output: !!python/object/apply:os.system ['echo owned']\npairs: []\n"))
    assert any("not valid YAML" in p for p in found)


def test_validate_command_prints_the_table_or_the_problems(folder, capsys):
    good = write(folder, "output: out\npairs:\n  - {content: 'photos/*.png', style: styles/s1.jpg}\n")
    assert cli.main(["validate", good]) == 0
    out = capsys.readouterr().out
    assert "a-s1" in out and "b-s1" in out and "2 pairs →" in out

    bad = write(folder, "output: out\npairs:\n  - {content: photos/zzz.png, style: styles/s1.jpg, size: 0}\n")
    assert cli.main(["validate", bad]) == 2
    captured = capsys.readouterr()
    assert "pairs[0].size: Input should be greater than or equal to 16 (got 0)" in captured.err
    assert "Traceback" not in captured.err


def test_missing_manifest_is_one_line(capsys, tmp_path):
    assert cli.main(["validate", str(tmp_path / "absent.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.yaml: not found" in err[0]


def test_the_shipped_manifests_are_valid():
    from pathlib import Path

    from flows.manifest import parse_yaml

    root = Path(__file__).resolve().parents[1] / "manifests"
    for name in ("demo.yaml", "s3-example.yaml"):
        data, _ = parse_yaml((root / name).read_text(), name)
        from flows.manifest import Manifest

        Manifest.model_validate(data)


def test_schema_file_is_current():
    import json
    from pathlib import Path

    from flows.manifest import json_schema

    shipped = json.loads((Path(__file__).resolve().parents[1] / "manifests" / "manifest.schema.json").read_text())
    assert shipped == json_schema(), "run `make schema` to regenerate manifests/manifest.schema.json"
