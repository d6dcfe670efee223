"""Every knob rule an attention module enforces is enforced by the search-space check too (issue 12).

``eca.kernel_size: [4]`` used to pass every check before the study and fail inside the trial with a traceback:
ECA's constructor wants an odd kernel, its registry entry did not say so. Here the bad values are not listed by
hand: for every knob of every registered type, candidate values are derived from the knob's own declaration
(numbers around and beyond its range, both parities, 0, negatives, non-integral and non-finite floats, each
choice and wrong strings, bools and look-alikes) and classified by the module itself: a value is *bad* when
``build_attention`` raises ``ValueError`` at every insertion site of the quickstart job's backbone (its channels
and feature-map sizes), *good* when it builds at some site. Then

* at every site, ``build_attention`` raises exactly when the registry's ``AttentionSpec.validate`` (what the
  search space runs) raises, and never anything but ``ValueError``;
* ``attnsearch run`` with a search space offering only a bad value exits 2 with one message naming the knob,
  before Ray starts and before the tracking store or the Ray results folder is created;
* a space offering only a good value passes ``check_space``.

All CPU, small channels, no Ray cluster: a few seconds.
"""

from __future__ import annotations

import functools
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ray = pytest.importorskip("ray")

from attnsearch._yaml import parse_yaml  # noqa: E402
from attnsearch.attention import ATTENTION_TYPES, Knob, build_attention, get_spec  # noqa: E402
from attnsearch.cli import main  # noqa: E402
from attnsearch.config import ConfigError, load_job  # noqa: E402
from attnsearch.models import list_sites  # noqa: E402
from attnsearch.models.slots import POSITIONS  # noqa: E402
from attnsearch.space import check_space, load_space  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = yaml.safe_load((ROOT / "jobs" / "quickstart.yaml").read_text())
BACKBONE = QUICKSTART["backbone"]["name"]
IMAGE_SIZE = QUICKSTART["data"]["image_size"]
SITES = list_sites(BACKBONE, IMAGE_SIZE)
# what a module sees at a site: (channels, (H, W)); the distinct ones are what the checks compare
GEOMETRIES = sorted({(s.channels, s.spatial_size) for s in SITES})
STAGES = sorted({s.stage for s in SITES})

# Modules whose constructor rejects values inside the declared type and range (odd kernels, G | C / 2): the
# derivation must find such values, or it is not looking where the bug of issue 12 was.
IN_RANGE_RULES = {("eca", "kernel_size"), ("cbam", "kernel_size"), ("triplet", "kernel_size"), ("sa", "groups")}


# --------------------------------------------------------------------------------------------- derivation


def _unique(values: list[Any]) -> list[Any]:
    """Dedupe by type and repr: 1, 1.0 and True are different YAML values (and NaN != NaN)."""
    out: dict[tuple[str, str], Any] = {}
    for v in values:
        out.setdefault((type(v).__name__, repr(v)), v)
    return list(out.values())


def candidates(knob: Knob) -> list[Any]:
    """Values to try for ``knob``, from its own declaration: legal ones and every kind of illegal one."""
    wrong_type = [None, "bogus", ""]
    if knob.kind == "bool":
        return _unique([True, False, None, 0, 1, 0.0, "true", "false", "yes", "no"])
    if knob.kind == "choice":
        strings = [c for c in knob.choices if isinstance(c, str)]
        return _unique([*knob.choices, *(c.upper() for c in strings), *(f" {c}" for c in strings),
                        *wrong_type, 0, 1, True, False])
    lo, hi = knob.low, knob.high
    assert lo is not None and hi is not None, f"{knob.name}: a number knob without bounds"
    ints = {-2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 16, 32, 64, 128, 2**70}
    for edge in (math.floor(lo), math.ceil(hi)):
        ints |= set(range(edge - 3, edge + 4))
    ints |= {2 * math.ceil(hi), -math.ceil(hi), 2 * math.ceil(hi) + 1}
    if isinstance(knob.default, (int, float)) and not isinstance(knob.default, bool):
        d = math.floor(knob.default)
        ints |= set(range(d - 2, d + 3))
    floats = [float(lo), float(hi), lo / 2, lo - 0.5, hi + 0.5, hi * 2, (lo + hi) / 2, 0.0, -0.0, -1.0,
              2.5, 3.0, 0.5, math.nan, math.inf, -math.inf]
    if knob.kind == "float":
        floats += [lo * 10, hi / 10, lo * 1.5]
    return _unique([knob.default, *sorted(ints), *floats, *wrong_type, True, False, "3", "0.5"])


def _outcome(type_name: str, channels: int, hw: tuple[int, int], knobs: dict[str, Any]) -> tuple[str, str]:
    """(build, registry) at one site: each "ok" or the ValueError message; anything else fails the test."""
    try:
        build_attention(type_name, channels, spatial_size=hw, **knobs)
        built = "ok"
    except ValueError as exc:
        built = str(exc)
    try:
        get_spec(type_name).validate(channels, hw, **knobs)
        checked = "ok"
    except ValueError as exc:
        checked = str(exc)
    return built, checked


@functools.cache
def classify() -> dict[tuple[str, str], dict[str, Any]]:
    """Per (type, knob): bad and good candidate values, and every site where build and registry disagree."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for type_name, spec in ATTENTION_TYPES.items():
        for knob_name, knob in spec.knobs.items():
            entry: dict[str, Any] = {"bad": [], "good": [], "disagree": []}
            for v in candidates(knob):
                outcomes = [_outcome(type_name, c, hw, {knob_name: v}) for c, hw in GEOMETRIES]
                for (c, hw), (built, checked) in zip(GEOMETRIES, outcomes, strict=False):
                    if (built == "ok") != (checked == "ok"):
                        entry["disagree"].append(f"{type_name}.{knob_name}={v!r} at {c} channels {hw}: "
                                                 f"build_attention -> {built}; registry -> {checked}")
                (entry["good"] if any(b == "ok" for b, _ in outcomes) else entry["bad"]).append(v)
            out[(type_name, knob_name)] = entry
    return out


def _in_range(knob: Knob, v: Any) -> bool:
    """A number of the knob's kind inside its declared [low, high]: only a module rule can make it bad."""
    if knob.kind not in ("int", "float") or isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if not math.isfinite(v) or (knob.kind == "int" and v != int(v)):
        return False
    return knob.low <= v <= knob.high


# --------------------------------------------------------------------------------------------- jobs


def write_job(folder: Path, type_name: str, knob: str, value: Any) -> Path:
    """The quickstart job's backbone and data, one inline space offering only ``type_name.knob = value`` at
    every single stage and every position (first or last block), with every output path inside ``folder``."""
    space = {"attention": {
        "type": [type_name],
        "stages": [[s] for s in STAGES],
        "blocks": ["first", "last"],
        "position": list(POSITIONS),
        "knobs": {type_name: {knob: [value]}},
    }}
    job = {
        "name": "knobs",
        "backbone": dict(QUICKSTART["backbone"]),
        "data": dict(QUICKSTART["data"]),
        "train": {"epochs": 1, "lr": 0.1, "threads": 1},
        "search": {"space": space, "sampler": "random", "num_samples": 1, "max_concurrent": 1},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 1},
        "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}"},
        "ray": {"storage_path": str(folder / "ray_results"), "num_cpus": 1},
    }
    text = yaml.safe_dump(job, sort_keys=False)
    loaded = parse_yaml(text, "job.yaml")["search"]["space"]["attention"]["knobs"][type_name][knob][0]
    same = loaded == value or (isinstance(loaded, float) and math.isnan(loaded) and math.isnan(value))
    assert type(loaded) is type(value) and same, f"{value!r} does not survive YAML: {loaded!r}"
    path = folder / "job.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The job's folder and cwd (a write to a relative path lands here and is caught); Ray, were a regression to
    start it, kept out of /tmp/ray and shut down (conftest then fails the test: it is not marked slow)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))  # short: Ray's socket paths have a length limit
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    assert not ray.is_initialized()
    try:
        yield tmp_path
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def space_accepts(job_path: Path) -> str | None:
    """What `attnsearch run` checks before Ray: None if the job and its space pass, else the error."""
    try:
        job = load_job(job_path)
        check_space(job, load_space(job))
    except (ConfigError, ValueError) as exc:
        return str(exc)
    return None


def refuse_all(folder: Path, capsys, cases: list[tuple[str, str, Any]]) -> list[str]:
    """Run `attnsearch run JOB --no-pareto` for each (type, knob, bad value); return what went wrong.

    A value the checks accept is reported without running the CLI, which would start Ray and a trial."""
    failures = []
    for type_name, knob_name, value in cases:
        what = f"{type_name}.{knob_name}={value!r}"
        job = write_job(folder, type_name, knob_name, value)
        if space_accepts(job) is None:
            failures.append(f"{what}: accepted by load_space + check_space (the trial would fail)")
            continue
        capsys.readouterr()
        rc = main(["run", str(job), "--no-pareto"])
        _, err = capsys.readouterr()
        knob = get_spec(type_name).knobs[knob_name]
        if rc != 2:
            failures.append(f"{what}: exit {rc}, stderr: {err[-400:]}")
        elif not err.startswith("attnsearch run: error: ") or "Traceback" in err:
            failures.append(f"{what}: not one error line: {err[-400:]}")
        elif f"{type_name}.{knob_name}" not in err:
            failures.append(f"{what}: the message does not name the knob: {err}")
        elif not any(r in err for r in _reprs(knob, value)):
            failures.append(f"{what}: the message does not name the value given: {err}")
        elif not any(hint in err for hint in _valid_hints(type_name, knob)):
            failures.append(f"{what}: the message does not name the valid values: {err}")
        assert not ray.is_initialized(), f"{what}: Ray was started"
        created = sorted(p.name for p in folder.iterdir() if p.name != "job.yaml")
        assert not created, f"{what}: created {created} (the tracking store or Ray's results)"
    return failures


def _reprs(knob: Knob, value: Any) -> list[str]:
    """How a message may show ``value``: as given, or coerced to the knob's kind (8.0 -> 8 for an int knob)."""
    out = [repr(value)]
    if knob.kind == "int" and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        out.append(repr(int(value)))
    return out


def _valid_hints(type_name: str, knob: Knob) -> list[str]:
    """Text one of which a message about ``knob`` must contain: its range, its choices, or the valid set."""
    if knob.kind == "bool":
        return ["true or false"]
    if knob.kind == "choice":
        return [str(list(knob.choices))]
    return [f"[{knob.low:g}, {knob.high:g}]", f"valid {type_name}.{knob.name}", "one of ["]


def _finite(v: Any) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


# --------------------------------------------------------------------------------------------- tests


def test_geometry_one_site_per_stage_and_position() -> None:
    # stages x {first, last} x positions picks single sites; every block of a stage at one position has the same
    # geometry, so "no placement is valid" is exactly "the module rejects the value at every site"
    by_slot: dict[tuple[int, str], set] = {}
    for s in SITES:
        by_slot.setdefault((s.stage, s.position), set()).add((s.channels, s.spatial_size))
    assert all(len(g) == 1 for g in by_slot.values()), by_slot
    assert len(GEOMETRIES) >= 2  # more than one channel count: site-dependent rules are exercised


def test_build_and_registry_agree_at_every_site() -> None:
    """The registry (what the search space runs before a study) rejects exactly what the module rejects."""
    disagree = [d for entry in classify().values() for d in entry["disagree"]]
    assert not disagree, "\n".join(disagree)


def test_derivation_is_not_vacuous() -> None:
    found = classify()
    for type_name, spec in ATTENTION_TYPES.items():
        if spec.knobs:
            assert any(found[(type_name, k)]["bad"] for k in spec.knobs), f"{type_name}: no bad value found"
        for k in spec.knobs:
            assert found[(type_name, k)]["good"], f"{type_name}.{k}: no good value found"
            if (type_name, k) != ("sa", "groups"):  # G = 64 needs 128 channels; the quickstart has 16..64
                assert spec.knobs[k].default in found[(type_name, k)]["good"], f"{type_name}.{k}: default rejected"
    in_range = {key for key, entry in found.items()
                if any(_in_range(get_spec(key[0]).knobs[key[1]], v) for v in entry["bad"])}
    assert in_range >= IN_RANGE_RULES, sorted(in_range)
    assert 4 in found[("eca", "kernel_size")]["bad"] and 3 in found[("eca", "kernel_size")]["good"]


KNOB_TYPES = [t for t, spec in ATTENTION_TYPES.items() if spec.knobs]


@pytest.mark.parametrize("type_name", KNOB_TYPES)
def test_bad_values_refused_before_ray(type_name: str, folder: Path, capsys) -> None:
    """`attnsearch run` on a space offering one bad value: exit 2, knob and value named, nothing started."""
    cases = [(type_name, k, v) for k in get_spec(type_name).knobs for v in classify()[(type_name, k)]["bad"]
             if _finite(v)]
    failures = refuse_all(folder, capsys, cases)
    assert not failures, "\n".join(failures)


def test_non_finite_values_refused_before_ray(folder: Path, capsys) -> None:
    """NaN and +-inf (YAML .nan, .inf) for every number knob: refused and named as given, not read as null."""
    cases = [(t, k, v) for (t, k), entry in classify().items() for v in entry["bad"] if not _finite(v)]
    assert len(cases) == 3 * sum(kn.kind in ("int", "float") for spec in ATTENTION_TYPES.values()
                                 for kn in spec.knobs.values())
    failures = refuse_all(folder, capsys, cases)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("type_name", KNOB_TYPES)
def test_good_values_pass_check_space(type_name: str, folder: Path) -> None:
    failures = []
    for knob_name in get_spec(type_name).knobs:
        for value in classify()[(type_name, knob_name)]["good"]:
            error = space_accepts(write_job(folder, type_name, knob_name, value))
            if error is not None:
                failures.append(f"{type_name}.{knob_name}={value!r}: {error}")
    assert not failures, "\n".join(failures)
    assert not ray.is_initialized()
