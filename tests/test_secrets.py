"""Secrets are read, never written: the serving API key (``DUET_API_KEY``, or the
file named by ``DUET_API_KEY_FILE``, the one secret duet reads today) appears in
no file duet writes (run folder, export, decode cache), in no server output or
log line and in no HTTP answer. Each test sets a fresh random key, exercises
the real processes, then greps every byte they left behind for it
(docs/serving.md, "Secrets")."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import httpx
import pytest

from helpers import TINY, run_cli, write_digit_folder
from serve_support import running_server, val_files


def _fresh_key() -> str:
    return f"duet-test-secret-{secrets.token_hex(16)}"


def _files_holding(key: str, *roots: Path) -> list[str]:
    """Every file under ``roots`` whose bytes contain ``key`` (plain or UTF-16, as Windows tools write it)."""
    needles = (key.encode(), key.encode("utf-16-le"))
    found = []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            if any(n in data for n in needles):
                found.append(str(path))
    return found


def _cache_dir() -> Path:
    return Path(os.environ["DUET_CACHE_DIR"])  # tests/conftest.py: a session temp folder


@pytest.mark.e2e
@pytest.mark.parametrize("delivery", ["env", "file"])
def test_the_api_key_appears_in_no_file_log_or_answer_of_a_server(
    tmp_path: Path, small_run: Path, small_export: Path, delivery: str
) -> None:
    key = _fresh_key()
    run = tmp_path / "digits"  # the model name in the URLs
    shutil.copytree(small_run, run)  # with its export; a copy: anything the server might write lands in tmp_path
    logs = tmp_path / "logs"
    logs.mkdir()
    if delivery == "file":  # how Docker/Kubernetes secrets and Vault Agent deliver it
        secret_file = tmp_path / "secrets" / "duet_api_key"
        secret_file.parent.mkdir()
        secret_file.write_text(key + "\n")
        env = {"DUET_API_KEY_FILE": str(secret_file)}
    else:
        env = {"DUET_API_KEY": key}

    answers: list[str] = []
    image = val_files(run)[0][0]
    with running_server(run, logs, "--access-log", env=env) as server:
        ask = server.url
        for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key-0123"}, {"X-API-Key": key[:-1]}):
            r = httpx.post(f"{ask}/v1/predict", files=[("file", (image.name, image.read_bytes()))], headers=headers)
            assert r.status_code == 401, r.text
            answers.append(r.text + str(r.headers))
        good = [{"Authorization": f"Bearer {key}"}, {"X-API-Key": key}]
        for headers in good:
            r = httpx.post(f"{ask}/v1/predict", files=[("file", (image.name, image.read_bytes()))], headers=headers)
            assert r.status_code == 200, r.text
            answers.append(r.text + str(r.headers))
        for path in ("/metrics", "/v2/models/digits", "/v1/models/digits", "/openapi.json", "/docs"):
            r = httpx.get(f"{ask}{path}", headers=good[0])
            assert r.status_code == 200, (path, r.status_code)
            answers.append(r.text + str(r.headers))
        assert httpx.get(f"{ask}/v2/health/ready").status_code == 200  # open without the key
    checked = run_cli("serve", str(run), "--check", env=env)  # the summary printed without a server
    assert checked.returncode == 0, checked.stderr

    assert not [a for a in answers if key in a]
    assert key not in server.log_text() and key not in checked.stdout + checked.stderr
    assert "POST /v1/predict" in server.log_text()  # the access log was on, and holds no key
    assert _files_holding(key, run, logs, _cache_dir()) == []
    if delivery == "file":  # the grep's control: it finds the key where it is
        assert _files_holding(key, tmp_path) == [str(secret_file)]


@pytest.mark.e2e
def test_a_run_trained_and_exported_with_the_key_in_the_environment_holds_no_trace_of_it(tmp_path: Path) -> None:
    key = _fresh_key()
    env = {"DUET_API_KEY": key, "DUET_API_KEY_FILE_UNUSED": key}  # even a look-alike variable stays out
    data = write_digit_folder(tmp_path / "data", classes=(0, 1), per_class=25, size=16)
    tiny = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    trained = run_cli("train", str(data), *tiny, "--out", str(tmp_path / "runs"), "--name", "r", "--json", env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = tmp_path / "runs" / "r"
    exported = run_cli("export", str(run), "--json", env=env)
    assert exported.returncode == 0, exported.stderr[-3000:]
    evaluated = run_cli("evaluate", str(run), "--json", env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]

    for name in ("config.yaml", "run.json", "metrics.jsonl", "export/model.json", "export/MODEL_CARD.md"):
        assert (run / name).is_file(), name  # the files the grep must cover exist
    assert _files_holding(key, run, _cache_dir()) == []
    for proc in (trained, exported, evaluated):
        assert key not in proc.stdout + proc.stderr


def test_a_rejected_api_key_is_not_echoed_in_the_error(tmp_path: Path) -> None:
    from duet.errors import ConfigError
    from duet.serve.settings import api_key_from_env

    short = secrets.token_hex(5)  # 10 characters: too short, refused
    with pytest.raises(ConfigError) as refused:
        api_key_from_env({"DUET_API_KEY": short})
    assert short not in str(refused.value)
    key = _fresh_key()
    with pytest.raises(ConfigError) as both:
        api_key_from_env({"DUET_API_KEY": key, "DUET_API_KEY_FILE": str(tmp_path / "k")})
    assert key not in str(both.value)
    secret_file = tmp_path / "k"
    secret_file.write_text(f"  {key}\n")
    assert api_key_from_env({"DUET_API_KEY_FILE": str(secret_file)}) == key  # whitespace stripped
    assert api_key_from_env({}) is None
    # an empty variable is unset (so `docker run -e DUET_API_KEY_FILE=` clears the image's default) ...
    assert api_key_from_env({"DUET_API_KEY_FILE": "", "DUET_API_KEY": ""}) is None
    assert api_key_from_env({"DUET_API_KEY_FILE": "", "DUET_API_KEY": key}) == key
    # ... but an empty key file is an error, not "no key"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        api_key_from_env({"DUET_API_KEY_FILE": str(tmp_path / "empty")})
