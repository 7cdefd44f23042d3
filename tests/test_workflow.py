"""The GitHub Actions workflows: every file validates against the published workflow schema
(check-jsonschema's bundled copy, so offline), and the robustness workflow keeps the facts a
schema cannot see: timeouts, the report and its upload, the regression gate, deploys from the
default branch only, a baseline that runs exactly the current evaluation's commands."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IN_CI, REPO, require

WORKFLOWS = REPO / ".github" / "workflows"
ROBUSTNESS = WORKFLOWS / "robustness.yml"
FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def check_jsonschema() -> str:
    """The check-jsonschema executable of this interpreter's environment (else on PATH);
    skipped when missing on a developer's machine, a failure under CI."""
    exe = Path(sys.executable).parent / "check-jsonschema"
    found = str(exe) if exe.exists() else shutil.which("check-jsonschema")
    if found:
        return found
    if IN_CI:
        pytest.fail("check-jsonschema is not installed (pip install -e '.[dev]')")
    pytest.skip("check-jsonschema is not installed")


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True, text=True, timeout=120,
    )


def load(path: Path = ROBUSTNESS, typ: str = "safe"):
    yaml = require("ruamel.yaml").YAML(typ=typ)
    with open(path, encoding="utf-8") as f:
        return yaml.load(f)


@pytest.fixture(scope="module")
def workflow() -> dict:
    return load()


@pytest.fixture(scope="module")
def jobs(workflow) -> dict:
    return workflow["jobs"]


def step(job: dict, *, uses: str | None = None, run: str | None = None, key: str | None = None) -> dict:
    """The one step of ``job`` that uses the action ``uses``, whose script contains ``run`` or
    whose id or name is ``key``."""
    found = [
        s for s in job["steps"]
        if (uses is not None and s.get("uses", "").split("@")[0] == uses)
        or (run is not None and run in s.get("run", ""))
        or (key is not None and key in (s.get("id"), s.get("name")))
    ]
    assert len(found) == 1, (uses, run, key, found)
    return found[0]


def index(job: dict, s: dict) -> int:
    return next(i for i, x in enumerate(job["steps"]) if x is s)


def test_there_are_workflows():
    assert ROBUSTNESS in FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_workflow_matches_the_schema(path):
    result = validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("breakage", ["none", "runs-on removed", "timeout-minutes not a number"])
def test_the_validator_rejects_a_broken_workflow(tmp_path, breakage):
    # Round-trip load and dump, so the unbroken copy shows the dump itself is valid.
    data = load(typ="rt")
    job = data["jobs"]["evaluate"]
    if breakage == "runs-on removed":
        del job["runs-on"]
    elif breakage == "timeout-minutes not a number":
        job["timeout-minutes"] = "abc"
    broken = tmp_path / "robustness.yml"
    with open(broken, "w", encoding="utf-8") as f:
        require("ruamel.yaml").YAML(typ="rt").dump(data, f)
    result = validate(broken)
    if breakage == "none":
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        assert result.returncode != 0, result.stdout + result.stderr


def test_triggers_on_push_and_pull_request(workflow):
    # YAML 1.1 readers (PyYAML) turn the key `on` into True; ruamel (YAML 1.2) keeps it.
    on = workflow.get("on", workflow.get(True))
    assert {"push", "pull_request"} <= set(on)


def test_every_job_has_a_timeout(jobs):
    for name, job in jobs.items():
        assert isinstance(job.get("timeout-minutes"), int) and job["timeout-minutes"] > 0, name


def test_the_test_job_runs_the_ci_entry_point(jobs):
    s = step(jobs["test"], run=".ci/run")
    assert s["run"].strip() == "bash .ci/run"
    assert str(s["env"]["CI"]).lower() == "true"


def test_the_current_commit_runs_every_suite_on_the_selected_models(jobs):
    s = step(jobs["evaluate"], key="Run the suites")
    for suite in ("cifar10c", "sparsity", "pgd", "lipschitz"):
        assert re.search(rf"-m harness run --suite {suite} --store \"\$STORE\" --quiet", s["run"]), suite
    assert s["env"]["STORE"].endswith("/current.sqlite")
    assert "needs.select.outputs.models" in s["env"]["MODELS"]
    assert "pip install -c constraints/ci.txt -e \".[dev]\"" in step(jobs["evaluate"], key="Install")["run"]


def test_models_come_from_the_checkpoints_a_pull_request_changes(jobs):
    job = jobs["select"]
    assert step(job, uses="actions/checkout")["with"]["fetch-depth"] == 0
    s = step(job, key="select")
    assert "git diff --name-only" in s["run"] and "'models/weights/*.json'" in s["run"]
    assert "pull_request.base.sha" in s["env"]["BASE"]


def selected(script: str, *changed: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", script, *changed], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return out.split()


def test_a_changed_checkpoint_selects_its_registry_model(jobs):
    run = step(jobs["select"], key="select")["run"]
    script = re.search(r"<<'EOF'\n(.*?)\nEOF\n", run, re.S).group(1)
    assert selected(script) == []
    assert selected(script, "models/weights/resnet8-gelu.json") == ["resnet8-gelu"]
    # The LCA dictionary is no model: every model built on it is re-evaluated.
    assert selected(script, "models/weights/lca-dictionary.json") == ["lca-resnet8", "warp-lca-resnet8"]


def test_the_baseline_runs_the_same_commands_on_the_base_commit(jobs):
    job = jobs["baseline"]
    assert "pull_request" in job["if"]
    assert "pull_request.base.sha" in step(job, uses="actions/checkout")["with"]["ref"]
    run = step(job, key="Run the suites")
    assert run["run"] == step(jobs["evaluate"], key="Run the suites")["run"]
    assert run["env"]["STORE"].endswith("/baseline.sqlite")
    assert run["working-directory"] == "base"
    assert run["env"]["PYTHON"].endswith("base-venv/bin/python")
    cache = step(job, uses="actions/cache")
    assert cache["with"]["path"] == "baseline.sqlite"
    for part in ("pull_request.base.sha", "needs.select.outputs.key"):
        assert part in cache["with"]["key"], part


def test_the_report_is_built_and_uploaded_before_a_regression_fails_the_job(jobs):
    job = jobs["report"]
    build = step(job, run="harness report")
    assert "--store current.sqlite" in build["run"] and "--out site" in build["run"]
    compare = step(job, run="-m harness compare")
    for flag in ("--fail-on-drop", "--baseline-store baseline.sqlite", "--store current.sqlite",
                 "--format markdown"):
        assert flag in compare["run"], flag
    assert "GITHUB_STEP_SUMMARY" in compare["run"]
    upload = step(job, uses="actions/upload-pages-artifact")
    assert upload["with"]["path"].rstrip("/") == "site"
    assert "!cancelled()" in upload["if"]  # uploaded whatever the comparison found
    assert "!cancelled()" in compare["if"]  # the gate runs even when the site build failed
    assert "steps.site.outcome" in str(step(job, key="Fail on a significant drop")["env"])
    fail = step(job, key="Fail on a significant drop")
    assert index(job, build) < index(job, compare) < index(job, upload) < index(job, fail)
    assert "!cancelled()" in fail["if"] and "exit 1" in fail["run"]


def test_deploys_only_from_a_push_to_the_default_branch(jobs):
    job = jobs["deploy"]
    assert "github.event_name == 'push'" in job["if"] and "default_branch" in job["if"]
    assert "report" in job["needs"]
    assert job["permissions"] == {"pages": "write", "id-token": "write"}
    assert job["environment"]["name"] == "github-pages"
    step(job, uses="actions/deploy-pages")
    # No other job may deploy, or a pull request could publish its site.
    assert [n for n, j in jobs.items() if any("deploy-pages" in s.get("uses", "") for s in j["steps"])] == [
        "deploy"]


def test_the_test_job_keeps_the_report_screenshots(jobs):
    up = step(jobs["test"], uses="actions/upload-artifact")
    assert up["with"]["path"].rstrip("/") == "test-artifacts" and "!cancelled()" in up["if"]
