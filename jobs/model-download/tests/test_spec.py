"""Spec files, flags and settings are checked before any network call, with the path of what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omnirag_harness.model_download import run_job

from omnirag.model_download.cli import _requests, parser
from omnirag.model_download.config import ModelDownloadSettings, read_token_file
from omnirag.model_download.errors import EXIT_INVALID, InvalidRequest
from omnirag.model_download.spec import MAX_SPEC_BYTES, ModelSpec, SpecFile, load, parse, resolve


@pytest.fixture
def settings(tmp_path, monkeypatch) -> ModelDownloadSettings:
    for name in ("HF_ENDPOINT", "HF_TOKEN", "HF_TOKEN_PATH", "MODELSCOPE_ENDPOINT", "MODELSCOPE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return ModelDownloadSettings(_env_file=None, root=tmp_path / "models")


def test_defaults_per_source(settings, tmp_path):
    reqs = resolve(
        parse(
            {
                "models": [
                    {"repo": "Qwen/Qwen2.5-7B-Instruct"},
                    {"source": "ms", "repo": "BAAI/bge-m3", "dir": "bge", "allowPatterns": ["*.json"]},
                ]
            }
        ),
        settings,
    )
    hf, ms = reqs
    assert (hf.name, hf.source, hf.revision, hf.endpoint) == (
        "Qwen/Qwen2.5-7B-Instruct",
        "huggingface",
        "main",
        "https://huggingface.co",
    )
    assert hf.dest == (tmp_path / "models" / "Qwen" / "Qwen2.5-7B-Instruct").resolve()
    assert (ms.source, ms.revision, ms.endpoint) == ("modelscope", "master", "https://www.modelscope.cn")
    assert ms.dest == (tmp_path / "models" / "bge").resolve() and ms.allow_patterns == ("*.json",)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"repo": "a/b", "revison": "main"},
            "models[0].revison: unknown field (a model takes: name, source, repo",
        ),
        ({"repo": "not a repo"}, "models[0].repo: 'not a repo' is not a repo id"),
        ({"repo": "a/b", "source": "github"}, "models[0].source: 'github' is not a source"),
        ({"repo": "a/b", "dir": "../../etc"}, "models[0].dir: '../../etc': no '.' or '..' parts"),
        (
            {"repo": "a/b", "revision": "main; rm -rf /"},
            "models[0].revision: 'main; rm -rf /' is not a branch",
        ),
        ({"repo": "a/b", "allowPatterns": ["*"] * 65}, "models[0].allowPatterns: at most 64 patterns"),
        (
            {"repo": "a/b", "endpoint": "https://user:pw@mirror"},
            "models[0].endpoint: an endpoint URL must not carry",
        ),
        ({"repo": "gpt2", "source": "modelscope"}, "models[0]: repo: ModelScope ids are owner/name"),
        ({}, "models[0].repo: Field required"),
    ],
)
def test_bad_models_name_the_field(model, message):
    with pytest.raises(InvalidRequest) as err:
        parse({"models": [model]})
    assert err.value.message.startswith(message), err.value.message


def test_bad_shapes():
    for data, message in [
        ([], "the spec must be a mapping with a `models:` list"),
        ({"models": []}, "models: List should have at least 1 item"),
        ({"model": [{"repo": "a/b"}]}, "models: Field required"),
    ]:
        with pytest.raises(InvalidRequest) as err:
            parse(data)
        assert err.value.message.startswith(message), err.value.message


def test_names_and_directories_must_not_collide(settings, tmp_path):
    with pytest.raises(InvalidRequest, match=r"models\[1\].name: 'x' is also models\[0\]'s name"):
        resolve(parse({"models": [{"name": "x", "repo": "a/b"}, {"name": "x", "repo": "a/c"}]}), settings)
    with pytest.raises(InvalidRequest, match=r"models\[1\].dir: .* overlaps models\[0\]"):
        resolve(parse({"models": [{"repo": "a/b", "dir": "m"}, {"repo": "a/c", "dir": "m/inner"}]}), settings)


def test_files_yaml_json_and_limits(tmp_path):
    yml = tmp_path / "m.yaml"
    yml.write_text("models:\n  - repo: a/b\n    revision: v1\n")
    assert load(yml) == [ModelSpec(repo="a/b", revision="v1")]
    js = tmp_path / "m.json"
    js.write_text(json.dumps({"models": [{"repo": "a/b"}]}))
    assert load(js)[0].repo == "a/b"
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [\n")
    with pytest.raises(InvalidRequest, match=r"broken.yaml: not valid YAML"):
        load(broken)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_SPEC_BYTES + 1))
    with pytest.raises(InvalidRequest, match="larger than"):
        load(big)
    with pytest.raises(InvalidRequest, match="cannot read the spec"):
        load(tmp_path / "missing.yaml")
    with pytest.raises(InvalidRequest, match=r"m2.yaml: models\[0\].repo"):
        (tmp_path / "m2.yaml").write_text("models:\n  - repo: 'a b'\n")
        load(tmp_path / "m2.yaml")


def test_hub_variable_names_and_precedence(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.com/")
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "https://www.modelscope.ai")
    s = ModelDownloadSettings(_env_file=None)
    assert (s.hf_endpoint, s.modelscope_endpoint) == ("https://hf-mirror.com", "https://www.modelscope.ai")
    monkeypatch.setenv("MODEL_DOWNLOAD_HF_ENDPOINT", "http://mirror.internal:8080")
    assert ModelDownloadSettings(_env_file=None).hf_endpoint == "http://mirror.internal:8080"


def test_tokens_file_first_then_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_fromenv")
    s = ModelDownloadSettings(_env_file=None)
    assert s.token_for("huggingface") == "hf_fromenv"
    assert "hf_fromenv" not in repr(s) and "hf_fromenv" not in str(s.model_dump())
    f = tmp_path / "tok"
    f.write_text("hf_fromfile\n")
    monkeypatch.setenv("MODEL_DOWNLOAD_HF_TOKEN_FILE", str(f))
    assert ModelDownloadSettings(_env_file=None).token_for("huggingface") == "hf_fromfile"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty or holds more than one word"),
        (b"a" * 5000, "larger than 4096 bytes"),
        (b"\xff\xfe", "not ASCII"),
    ],
)
def test_bad_token_files(tmp_path, content, message):
    f = tmp_path / "tok"
    f.write_bytes(content)
    with pytest.raises(InvalidRequest, match=message):
        read_token_file(f)
    with pytest.raises(InvalidRequest, match=r"cannot read it \(No such file or directory\)"):
        read_token_file(Path(tmp_path / "nope"))


def test_flags_and_spec_do_not_mix(tmp_path, settings):
    spec = tmp_path / "m.yaml"
    spec.write_text("models:\n  - repo: a/b\n")
    cases = [
        ((), "nothing to download: give --repo (one model) or --spec / MODEL_DOWNLOAD_SPEC (a spec file)"),
        (
            ("--spec", str(spec), "--repo", "a/b"),
            "give --spec (a file of models) or --repo (one model), not both",
        ),
        (("--revision", "v1"), "--revision: flags for one model; give --repo as well"),
        (("--spec", str(spec), "--only", "zzz"), "--only zzz: not in the spec (it has: a/b)"),
    ]
    for args, reason in cases:
        with pytest.raises(InvalidRequest) as err:
            _requests(parser().parse_args(["run", *args]), settings)
        assert err.value.message == reason
    (req,) = _requests(
        parser().parse_args(["run", "--repo", "a/b", "--allow", "*.json", "--source", "ms"]), settings
    )
    assert (req.source, req.revision, req.allow_patterns) == ("modelscope", "master", ("*.json",))


def test_cli_one_line_errors_and_validate(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text("models:\n  - repo: a/b\n")
    ok = run_job(tmp_path, None, "validate", "--spec", str(spec))
    assert ok.code == 0 and ok.stdout.startswith("a/b: huggingface a/b@main -> "), ok
    bad_env = run_job(tmp_path, None, "--spec", str(spec), HF_ENDPOINT="ftp://mirror")
    assert bad_env.code == EXIT_INVALID, bad_env
    assert bad_env.reason.startswith(
        "error: setting MODEL_DOWNLOAD_HF_ENDPOINT: 'ftp://mirror' is not an http(s)"
    )
    bad_spec = run_job(tmp_path, None, "--repo", "a/b", "--dir", "../up")
    assert (bad_spec.code, bad_spec.reason) == (
        EXIT_INVALID,
        "error: --dir: '../up': no '.' or '..' parts (it must stay where it says)",
    ), bad_spec


def test_schema_names_the_spec_keys():
    props = SpecFile.model_json_schema(by_alias=True)["$defs"]["ModelSpec"]["properties"]
    assert {
        "name",
        "source",
        "repo",
        "revision",
        "dir",
        "allowPatterns",
        "ignorePatterns",
        "endpoint",
    } == set(props)
